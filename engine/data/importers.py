"""Turn public data folders into the nnU-Net raw layout the engine trains on."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.data.dataset import DatasetDescription, DatasetWriter, RawDataset
from engine.errors import DatasetError
from engine.io.image import read_image, read_label

#: OpenKBP label values (challenge order); organs overwrite PTVs where they overlap.
OPENKBP_ORGANS = {"Brainstem": 1, "SpinalCord": 2, "RightParotid": 3, "LeftParotid": 4,
                  "Esophagus": 5, "Larynx": 6, "Mandible": 7}
OPENKBP_PTVS = {"PTV56": 8, "PTV63": 9, "PTV70": 10}


def import_openkbp(source: str | os.PathLike, out: str | os.PathLike, cases: int | None = None,
                   include_ptv: bool = False, overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   gtv_from: str | None = None) -> RawDataset:
    """OpenKBP ``pt_N/{ct,labels}.nii.gz`` → dataset; without ``include_ptv`` the PTVs become background
    (they are dose targets, not anatomy).

    ``gtv_from`` (``"PTV56"``, ``"PTV63"`` or ``"PTV70"``) writes a single-label dataset instead: that
    PTV becomes label 1 "GTV" and everything else background, for the slice-wise GTV task. OpenKBP's
    organ contours overwrite the PTVs where they overlap, so the target has holes where it meets the
    organs (e.g. the larynx); patients without that PTV have an empty label map.
    """
    source = Path(source)
    folders = sorted((p for p in source.glob("pt_*") if (p / "ct.nii.gz").is_file()),
                     key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    if not folders:
        raise DatasetError(f"No OpenKBP patient folders (pt_N/ct.nii.gz) in '{source}'.")
    if gtv_from is not None and gtv_from not in OPENKBP_PTVS:
        raise DatasetError(f"gtv_from must be one of {', '.join(OPENKBP_PTVS)}, not {gtv_from!r}.")
    if cases is not None:
        folders = folders[:cases]
    if gtv_from is not None:
        labels = {"background": 0, "GTV": 1}
        description = (f"OpenKBP head-and-neck CTs (Babier et al., Med Phys 2021); label GTV = {gtv_from} "
                       "(organs overwrite PTVs where they overlap)")
    else:
        labels = {"background": 0, **OPENKBP_ORGANS, **(OPENKBP_PTVS if include_ptv else {})}
        description = "OpenKBP head-and-neck CTs (Babier et al., Med Phys 2021)"
    writer = DatasetWriter(out, DatasetDescription(
        name="OpenKBP", description=description, channel_names={"0": "CT"}, labels=labels,
        extra={"gtv_from": gtv_from} if gtv_from else {}), overwrite=overwrite)
    for i, folder in enumerate(folders):
        image = read_image(folder / "ct.nii.gz")
        label = read_label(folder / "labels.nii.gz", reference=image)
        if gtv_from is not None:
            label.array = (label.array == OPENKBP_PTVS[gtv_from]).astype(np.uint8)
        elif not include_ptv:
            label.array = np.where(label.array > max(OPENKBP_ORGANS.values()), 0, label.array).astype(np.uint8)
        writer.add_case(f"openkbp_{folder.name.split('_')[-1]}", image, label)
        if progress:
            progress(i + 1, len(folders))
    return writer.finalize()
