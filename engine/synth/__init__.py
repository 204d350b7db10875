"""Deterministic synthetic phantoms, one generator per task, written in the nnU-Net raw layout.

They exist so the whole pipeline (planning, training, staging, explanation) can be tested and
demonstrated without patient data, and so learning can be checked: anatomy sits in plausible
places with plausible intensities and noise, tumours are small and low-contrast, and the
targets follow the clinical rules (T-stage by invasion depth, PET outcome by uptake pattern).

- ``esophagus``: thoracic CT, labels EC/aorta/esophagus/lymph node/pericardium, T1–T4 by invasion;
- ``npc``: contrast-enhanced T1 MRI of the nasopharynx, GTV label, T1–T4 by extension;
- ``gtv``: chest CT with small nodules (GTV) on a minority of slices;
- ``pet``: FDG PET (SUV) with tumour label, binary outcome and pathology.

The same (task, seed, preset) always gives the same voxels and files; case ``i`` of a dataset
is :func:`generate_case` with ``case_seed(seed, i)``, whatever the number of cases. A task names its
generator module in its declaration (:attr:`engine.tasks.Task.phantom`), so a plug-in task brings
its own phantoms.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.data.dataset import DatasetWriter, RawDataset
from engine.synth.common import PhantomCase, SynthError, case_seed

log = logging.getLogger(__name__)

PRESETS = ("small", "realistic")

__all__ = ["PRESETS", "PhantomCase", "SynthError", "case_seed", "generate_case", "generate_dataset",
           "phantom_tasks"]


def phantom_tasks() -> list[str]:
    """The tasks that have a phantom generator."""
    from engine.tasks import phantom_task_names

    return phantom_task_names()


def _module(task: str, preset: str) -> ModuleType:
    from engine.tasks import UnknownTaskError, get_task

    try:
        declared = get_task(task)
    except UnknownTaskError:
        declared = None
    if declared is None or declared.phantom is None:
        raise SynthError(f"Unknown synthetic task '{task}'. Choose one of: {', '.join(phantom_tasks())}.")
    if preset not in PRESETS:
        raise SynthError(f"Unknown preset '{preset}'. Choose 'small' (fast, for tests and CPU training) "
                         "or 'realistic' (the papers' resolution).")
    return declared.phantom_module()


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SynthError(f"Seed must be a non-negative integer, got {seed!r}.")
    return seed


def generate_case(task: str, seed: int, preset: str = "small") -> PhantomCase:
    """One phantom case; identical for identical arguments."""
    module = _module(task, preset)
    return module.generate(_check_seed(seed), preset)


def generate_dataset(task: str, out: str | Path, cases: int, seed: int = 0, preset: str = "small",
                     overwrite: bool = False, test_cases: int = 0,
                     progress: Callable[[int, int], None] | None = None,
                     generator_options: dict[str, Any] | None = None) -> RawDataset:
    """Write ``cases`` training cases (and ``test_cases`` unlabelled test cases) to ``out``.

    Layout: ``dataset.json``, ``imagesTr``/``labelsTr``/``imagesTs`` and, for tasks with
    targets, ``stages.csv``. Case ids are ``<task>_000``, ... (test cases ``<task>_test_000``);
    test cases get neither a label file nor a row in ``stages.csv``, like a real hold-out set.
    ``progress(done, total)`` is called after each case. ``generator_options`` go to the task's
    ``generate`` as keywords (e.g. the esophagus phantom's ``enhancement_scale``).
    """
    module = _module(task, preset)
    options = dict(generator_options or {})
    unknown = sorted(set(options) - (set(inspect.signature(module.generate).parameters) - {"seed", "preset"}))
    if unknown:
        raise SynthError(f"The {task} phantom has no option(s) {', '.join(unknown)}.")
    _check_seed(seed)
    for name, value, minimum in (("cases", cases, 1), ("test_cases", test_cases, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SynthError(f"'{name}' must be an integer ≥ {minimum}, got {value!r}.")
    width = max(3, len(str(max(cases, test_cases) - 1)))
    total = cases + test_cases
    jobs = [(f"{task}_{i:0{width}d}", case_seed(seed, i), False) for i in range(cases)]
    jobs += [(f"{task}_test_{i:0{width}d}", case_seed(seed, i, test=True), True) for i in range(test_cases)]
    made = ((case_id, module.generate(s, preset, **options), test) for case_id, s, test in jobs)
    first = next(made)  # a bad generator option fails here, before the writer touches ``out``
    writer = DatasetWriter(out, module.description(), overwrite=overwrite)
    for done, (case_id, case, test) in enumerate(itertools.chain([first], made), start=1):
        targets = None if test or not module.HAS_TARGETS else case.targets
        writer.add_case(case_id, case.channels, None if test else case.label, targets, test=test)
        log.debug("wrote %s (%s)", case_id, case.targets)
        if progress is not None:
            progress(done, total)
    dataset = writer.finalize()
    log.info("wrote %d %s phantom case(s) (%s preset, seed %d) to %s", total, task, preset, seed, out)
    return dataset
