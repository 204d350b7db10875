"""GTVSeg: gross tumour volume on CT, slice by slice.

Declared for its data and phantoms; the slice classifier + SANet cascade is not built yet.
"""

from engine.tasks.base import Label, PlanDefaults, Task, neoplasm

TASK = Task(
    name="gtv",
    title="Gross tumour volume segmentation on CT (slice classifier + SANet)",
    modality="CT",
    labels=(Label("GTV", 1, (230, 41, 41), neoplasm()),),
    tumour_label="GTV",
    # the paper segments 2D slices resized to 512 × 512 after cropping to the body
    plan_defaults=PlanDefaults(dims=2, patch_size=(512, 512)),
    phantom="engine.synth.gtv",
    slicer_module="GTVSeg",
    summary="phantoms and planning only; the slice classifier + SANet cascade is planned",
)
