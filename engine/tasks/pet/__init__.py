"""PET outcome: metabolic tumour, pathology and treatment outcome from FDG PET in SUV.

Declared for its data and phantoms; the multi-task multi-scale network is not built yet.
"""

from engine.tasks.base import FieldOfView, Label, PlanDefaults, Task, neoplasm

TASK = Task(
    name="pet",
    title="Treatment-outcome prediction from FDG PET (multi-task, multi-scale)",
    modality="PT",
    labels=(Label("tumour", 1, (255, 160, 0), neoplasm()),),
    tumour_label="tumour",
    plan_defaults=PlanDefaults(dims=3, target_spacing=(2.0, 2.0, 2.0)),  # the paper: 2 mm isotropic
    phantom="engine.synth.pet",
    slicer_module="EsophagusStaging",
    summary="phantoms and planning only; the outcome network is planned",
    # one thoracic bed position at least; PET voxels are 2-5.5 mm, so 8 mm is already a coarse scanner
    field_of_view=FieldOfView(min_extent_mm=(100.0, 200.0, 200.0), max_spacing_mm=(8.0, 8.0, 8.0),
                              min_spacing_mm=(0.5, 0.5, 0.5), region="the thorax around the tumour"),
)
