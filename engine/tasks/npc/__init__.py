"""NPCStaging: nasopharyngeal carcinoma on contrast-enhanced T1 MRI — GTV and T-stage.

Declared for its data and phantoms; the multi-task network is not built yet.
"""

from engine.tasks.base import T_STAGES, FieldOfView, Label, PlanDefaults, Task, neoplasm

TASK = Task(
    name="npc",
    title="Nasopharyngeal carcinoma GTV segmentation and T-staging on MRI",
    modality="MR",
    labels=(Label("GTV", 1, (230, 41, 41), neoplasm()),),
    stage_names=T_STAGES,
    tumour_label="GTV",
    # the paper resamples to 0.4688 × 0.4688 × 6 mm and crops 21 × 224 × 224 (z first here)
    plan_defaults=PlanDefaults(dims=3, target_spacing=(6.0, 0.4688, 0.4688), patch_size=(21, 224, 224)),
    phantom="engine.synth.npc",
    slicer_module="NPCStaging",
    summary="phantoms and planning only; the segmentation and staging network is planned",
    # the nasopharynx with the skull base above and the parapharyngeal spaces beside it (the paper: 105 mm)
    field_of_view=FieldOfView(min_extent_mm=(60.0, 100.0, 100.0), max_spacing_mm=(8.0, 2.0, 2.0),
                              min_spacing_mm=(0.1, 0.1, 0.1), region="the nasopharynx and the skull base"),
)
