"""PET outcome: metabolic tumour, pathology and treatment outcome from FDG PET in SUV.

Declared for its data and phantoms; the multi-task multi-scale network is not built yet.
"""

from engine.tasks.base import Label, PlanDefaults, Task, neoplasm

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
)
