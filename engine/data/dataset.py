"""The nnU-Net raw dataset layout plus ``stages.csv``: the one data format of the engine.

::

    DATASET/
      dataset.json               channel_names, labels, numTraining, file_ending (+ optional "stages")
      imagesTr/<case>_0000.nii.gz
      labelsTr/<case>.nii.gz
      imagesTs/<case>_0000.nii.gz
      stages.csv                 case,t_stage[,outcome,pathology]

Users already keep data like this for nnU-Net; the only addition is ``stages.csv`` for the
classification targets (and the optional ``stages`` list in ``dataset.json`` naming their order).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import DatasetError
from engine.io.image import Image, read_image, read_label, write_image

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
STAGES_CSV = "stages.csv"
DEFAULT_FILE_ENDING = ".nii.gz"
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DatasetDescription:
    """What ``dataset.json`` says (nnU-Net v2 keys, plus ``stages``)."""

    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    num_training: int = 0
    file_ending: str = DEFAULT_FILE_ENDING
    description: str = ""
    stages: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if v != 0}

    @property
    def modality(self) -> str:
        return next(iter(self.channel_names.values()), "unknown")

    def to_json(self) -> dict:
        data = dict(self.extra)
        data.update({
            "name": self.name,
            "description": self.description,
            "channel_names": self.channel_names,
            "labels": self.labels,
            "numTraining": self.num_training,
            "file_ending": self.file_ending,
        })
        if self.stages:
            data["stages"] = list(self.stages)
        return data

    @classmethod
    def from_json(cls, data: dict, source: str = DATASET_JSON) -> "DatasetDescription":
        missing = [k for k in ("channel_names", "labels") if k not in data]
        if missing:
            raise DatasetError(f"{source} lacks the required key(s) {missing}; see the nnU-Net v2 "
                               "dataset.json format.")
        labels = data["labels"]
        if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
            raise DatasetError(f"{source}: 'labels' must map names to integer values, e.g. "
                               '{"background": 0, "tumour": 1} (region-based labels are not supported).')
        if 0 not in labels.values():
            raise DatasetError(f"{source}: 'labels' must include background with value 0.")
        known = {"name", "description", "channel_names", "labels", "numTraining", "file_ending", "stages"}
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            channel_names={str(k): str(v) for k, v in data["channel_names"].items()},
            labels={str(k): int(v) for k, v in labels.items()},
            num_training=int(data.get("numTraining", 0)),
            file_ending=str(data.get("file_ending", DEFAULT_FILE_ENDING)),
            stages=list(data["stages"]) if data.get("stages") else None,
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass
class CaseTargets:
    """One row of ``stages.csv``."""

    t_stage: str | None = None
    outcome: int | None = None
    pathology: str | None = None


@dataclass
class Case:
    """One case: its image channel files, label file and classification targets."""

    case_id: str
    image_files: list[Path]
    label_file: Path | None = None
    targets: CaseTargets = field(default_factory=CaseTargets)

    @property
    def stage(self) -> str | None:
        return self.targets.t_stage

    def load_image(self, channel: int = 0, validate: bool = True) -> Image:
        return read_image(self.image_files[channel], validate=validate)

    def load_label(self, reference: Image | None = None) -> Image:
        if self.label_file is None:
            raise DatasetError(f"Case '{self.case_id}' has no label file.")
        return read_label(self.label_file, reference=reference)


@dataclass
class RawDataset:
    """A dataset folder in the nnU-Net raw layout, as listed on disk."""

    root: Path
    description: DatasetDescription
    training: list[Case]
    test: list[Case]

    @property
    def num_channels(self) -> int:
        return len(self.description.channel_names)

    def case(self, case_id: str) -> Case:
        for c in self.training + self.test:
            if c.case_id == case_id:
                return c
        raise DatasetError(f"No case '{case_id}' in {self.root}.")

    @property
    def stages(self) -> list[str] | None:
        """Stage names in their order: from dataset.json, else sorted from stages.csv."""
        if self.description.stages:
            return list(self.description.stages)
        found = sorted({c.stage for c in self.training if c.stage})
        return found or None

    @classmethod
    def load(cls, root: str | os.PathLike) -> "RawDataset":
        """List the dataset. Only the layout is checked here; :mod:`engine.data.validate` checks contents."""
        root = Path(root)
        js = root / DATASET_JSON
        if not root.is_dir():
            raise DatasetError(f"Dataset folder '{root}' does not exist.")
        if not js.is_file():
            raise DatasetError(f"'{root}' has no {DATASET_JSON}; it is not a dataset in the nnU-Net raw "
                               "layout (dataset.json, imagesTr/, labelsTr/).")
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{js} is not valid JSON ({exc}).") from None
        desc = DatasetDescription.from_json(data, str(js))
        targets = read_stages_csv(root / STAGES_CSV) if (root / STAGES_CSV).is_file() else {}
        training = _list_cases(root / "imagesTr", root / "labelsTr", desc, targets)
        test = _list_cases(root / "imagesTs", None, desc, targets)
        return cls(root=root, description=desc, training=training, test=test)


def _list_cases(image_dir: Path, label_dir: Path | None, desc: DatasetDescription,
                targets: dict[str, CaseTargets]) -> list[Case]:
    if not image_dir.is_dir():
        return []
    ending = desc.file_ending
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(ending) + "$")
    channels: dict[str, dict[int, Path]] = {}
    for f in sorted(image_dir.iterdir()):
        m = pattern.match(f.name)
        if m:
            channels.setdefault(m["case"], {})[int(m["ch"])] = f
    cases = []
    for case_id, files in sorted(channels.items()):
        n = len(desc.channel_names)
        image_files = [files.get(i, image_dir / f"{case_id}_{i:04d}{ending}") for i in range(n)]
        label = label_dir / f"{case_id}{ending}" if label_dir is not None else None
        cases.append(Case(case_id, image_files, label, targets.get(case_id, CaseTargets())))
    return cases


# --- stages.csv --------------------------------------------------------------------------------

def read_stages_csv(path: str | os.PathLike) -> dict[str, CaseTargets]:
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "case" not in reader.fieldnames or "t_stage" not in reader.fieldnames:
            raise DatasetError(f"{path} must have a header row with at least 'case,t_stage' "
                               f"(found {reader.fieldnames}).")
        out: dict[str, CaseTargets] = {}
        for line, row in enumerate(reader, start=2):
            case = (row.get("case") or "").strip()
            if not case:
                raise DatasetError(f"{path}, line {line}: empty case id.")
            if case in out:
                raise DatasetError(f"{path}, line {line}: case '{case}' is listed twice.")
            outcome = (row.get("outcome") or "").strip()
            try:
                outcome_value = int(outcome) if outcome else None
            except ValueError:
                raise DatasetError(f"{path}, line {line}: outcome '{outcome}' must be 0 or 1.") from None
            out[case] = CaseTargets(
                t_stage=(row.get("t_stage") or "").strip() or None,
                outcome=outcome_value,
                pathology=(row.get("pathology") or "").strip() or None,
            )
    return out


def write_stages_csv(path: str | os.PathLike, targets: dict[str, CaseTargets]) -> None:
    with_outcome = any(t.outcome is not None for t in targets.values())
    with_pathology = any(t.pathology is not None for t in targets.values())
    header = ["case", "t_stage"] + (["outcome"] if with_outcome or with_pathology else []) + \
        (["pathology"] if with_pathology else [])
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for case, t in sorted(targets.items()):
            row = [case, t.t_stage or ""]
            if len(header) > 2:
                row.append("" if t.outcome is None else int(t.outcome))
            if len(header) > 3:
                row.append(t.pathology or "")
            w.writerow(row)


# --- writing a dataset -------------------------------------------------------------------------

class DatasetWriter:
    """Writes a dataset in the raw layout, case by case, then ``dataset.json`` and ``stages.csv``.

    Refuses a non-empty destination unless ``overwrite``, so nothing the user had is replaced.
    """

    def __init__(self, root: str | os.PathLike, description: DatasetDescription, overwrite: bool = False):
        self.root = Path(root)
        self.description = description
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise DatasetError(f"'{self.root}' is not empty; choose a new folder or pass overwrite.")
            for sub in ("imagesTr", "labelsTr", "imagesTs"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
            for name in (DATASET_JSON, STAGES_CSV):
                (self.root / name).unlink(missing_ok=True)
        self._targets: dict[str, CaseTargets] = {}
        self._num_training = 0

    def add_case(self, case_id: str, images: Image | list[Image], label: Image | None = None,
                 targets: CaseTargets | None = None, test: bool = False) -> None:
        if not _CASE_ID.match(case_id):
            raise DatasetError(f"Case id '{case_id}' must use letters, digits, '_', '-' or '.'.")
        images = images if isinstance(images, list) else [images]
        if len(images) != len(self.description.channel_names):
            raise DatasetError(f"Case '{case_id}' has {len(images)} channels; dataset.json declares "
                               f"{len(self.description.channel_names)}.")
        ending = self.description.file_ending
        folder = "imagesTs" if test else "imagesTr"
        for ch, img in enumerate(images):
            write_image(img, self.root / folder / f"{case_id}_{ch:04d}{ending}")
        if label is not None and not test:
            write_image(label, self.root / "labelsTr" / f"{case_id}{ending}")
        if not test:
            self._num_training += 1
        if targets is not None:
            self._targets[case_id] = targets

    def finalize(self) -> RawDataset:
        self.description.num_training = self._num_training
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / DATASET_JSON).write_text(json.dumps(self.description.to_json(), indent=2) + "\n")
        if self._targets:
            write_stages_csv(self.root / STAGES_CSV, self._targets)
        return RawDataset.load(self.root)
