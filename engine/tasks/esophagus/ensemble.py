"""Ensembles of stage classifiers: one bundle that stages with the mean of several runs' classifiers.

A stage classifier trained on ~140 cases moves by several AUC points between runs (seed, fold);
averaging runs removes that luck. The members share one segmentation, bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from engine.errors import EngineError
from engine.pipelines.case import load_model
from engine.pipelines.training_run import command_line
from engine.registry import ModelBundle, save_bundle
from engine.tasks.esophagus import TASK
from engine.tasks.esophagus.model_card import ensemble_model_card
from engine.tasks.esophagus.options import (CLASSIFIER, CLASSIFIER_MEMBERS, FULLRES, LOWRES,
                                            classifier_weight_names)


def member_records(bundle: ModelBundle) -> list[dict[str, Any]]:
    """One record per classifier: an ensemble given as a member contributes its members' own records
    (as its weights are flattened), so every card row keeps its run's fold and validation."""
    nested = (bundle.training or {}).get("classifier_ensemble")
    if nested and len(nested) == len(classifier_weight_names(bundle)):
        return [dict(m) for m in nested]
    training, options = bundle.training or {}, (bundle.training or {}).get("options") or {}
    return [{"id": bundle.id, "version": bundle.version, "path": str(bundle.path),
            "sha256": {n: bundle.weight_file(n).sha256 for n in classifier_weight_names(bundle)},
            "command": training.get("command"), "seed": training.get("seed"), "fold": options.get("fold"),
            "classifier_epochs": options.get("classifier_epochs"),
            "val_cases": (training.get("data") or {}).get("val_cases"),
            "validation": (bundle.metrics or {}).get("classifier") or {}}]


def shared_parts(bundle: ModelBundle) -> dict[str, Any]:
    """What every member of an ensemble must have in common with the first."""
    arch = {k: v for k, v in bundle.architecture.items() if k != CLASSIFIER_MEMBERS}
    return {"plan": bundle.plan, "labels": [lab.to_dict() for lab in bundle.labels], "stages": bundle.stages,
            "modality": bundle.modality, "architecture": arch,
            "segmentation": {n: bundle.weight_file(n).sha256 for n in (LOWRES, FULLRES)}}


def check_members(bundles: list[ModelBundle]) -> None:
    """Refuse members that do not share the first's segmentation, or repeat a classifier."""
    first = bundles[0]
    reference, seen = shared_parts(first), {}
    for b in bundles:
        differ = [k for k, v in shared_parts(b).items() if v != reference[k]]
        if differ:
            raise EngineError(f"Model {b.path} differs from {first.path} in its {', '.join(differ)}; an "
                              "ensemble averages classifiers on one segmentation: train each member with "
                              f"--segmentation-from {first.path} and the same switches.")
        for name in classifier_weight_names(b):
            digest = b.weight_file(name).sha256
            if digest in seen:
                raise EngineError(f"The classifier '{name}' of {b.path} is identical to one of "
                                  f"{seen[digest]}; each member must be a different training run "
                                  "(another seed or fold).")
            seen[digest] = b.path


def classifier_metrics(members: list[dict[str, Any]], classifiers: int) -> dict[str, Any]:
    """The ensemble's classifier metrics: its size and its members' mean validation."""
    validated = [m["validation"] for m in members if m["validation"]]
    out: dict[str, Any] = {"members": classifiers}
    for key in ("val_auc", "val_accuracy"):
        values = [v[key] for v in validated if isinstance(v.get(key), (int, float))]
        if values:
            out[f"{key}_member_mean"] = float(np.mean(values))
    return out


def ensemble_classifiers(models: Sequence[str | Path | ModelBundle], out_dir: str | Path, *,
                         model_id: str | None = None, version: str | None = None, overwrite: bool = False,
                         command: str | None = None, weights_dtype: str | None = None) -> ModelBundle:
    """One bundle that stages with the mean probabilities of several models' classifiers.

    The models must share plan, labels, stages, architecture and segmentation networks (bit for bit:
    train each with ``--segmentation-from`` the same model), and their classifiers must differ. The
    first model gives the segmentation, id and card defaults. ``weights_dtype="float16"`` stores every
    weight in half precision (half the size, for shipping); they are computed in float32 as before.
    """
    if len(models) < 2:
        raise EngineError("An ensemble needs at least two models; pass every model whose classifier "
                          "should be averaged.")
    bundles = [load_model(TASK.name, m) for m in models]
    check_members(bundles)
    first = bundles[0]
    weights: dict[str, dict[str, torch.Tensor]] = {n: first.load_state_dict(n) for n in (LOWRES, FULLRES)}
    names: list[str] = []
    for b in bundles:
        for name in classifier_weight_names(b):
            names.append(CLASSIFIER if not names else f"{CLASSIFIER}_{len(names) + 1}")
            weights[names[-1]] = b.load_state_dict(name)
    members = [record for b in bundles for record in member_records(b)]
    metrics = {**{k: v for k, v in first.metrics.items() if k in ("lowres", "fullres")},
               "classifier": classifier_metrics(members, len(names))}
    training = {**{k: v for k, v in first.training.items() if k in ("data", "segmentation_from", "hardware", "domain")},
                "command": command_line(command),
                "seed": first.training.get("seed"), "classifier_ensemble": members}
    card = ensemble_model_card(first, members, len(names), weights_dtype)
    return save_bundle(
        out_dir, id=model_id or first.id, name=first.name, version=version or first.version, task=TASK.name,
        architecture={**first.architecture, CLASSIFIER_MEMBERS: names}, plan=first.plan, labels=first.labels,
        stages=first.stages, modality=first.modality, training=training, metrics=metrics,
        intended_use=first.intended_use, weights=weights, model_card=card, overwrite=overwrite,
        weights_dtype=weights_dtype)
