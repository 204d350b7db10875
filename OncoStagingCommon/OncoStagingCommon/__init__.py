"""Slicer-side code shared by the OncoStaging modules: one task-parameterised logic and panel.

Kept outside :mod:`engine` on purpose: this package talks to MRML (``slicer``, ``vtk``), which the
engine must never import. Only :mod:`OncoStagingCommon.widget` imports Qt, so the logic runs
headless with the ``slicer-core`` wheel in CI.

- :mod:`OncoStagingCommon.logic`: ``TaskLogic(task_name)``: Segment & Stage, training, model list.
- :mod:`OncoStagingCommon.widget`: ``TaskWidget``, the panel a module subclasses with its task and .ui.
- :mod:`OncoStagingCommon.results`: engine run folder → segmentation, Grad-CAM, tables, chart nodes.
- :mod:`OncoStagingCommon.process`: engine commands in a child process, polled without blocking.
- :mod:`OncoStagingCommon.dependencies`: which Python requirements Slicer still lacks.
"""
