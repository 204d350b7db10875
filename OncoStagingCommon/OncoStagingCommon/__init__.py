"""Slicer-side code shared by the OncoStaging modules.

Kept outside :mod:`engine` on purpose: this package talks to MRML (``slicer``, ``vtk``), which the
engine must never import. Nothing here imports Qt, so the module logic that uses it runs headless
with the ``slicer-core`` wheel in CI.

- :mod:`OncoStagingCommon.results`: engine run folder → segmentation, Grad-CAM, tables, chart nodes.
- :mod:`OncoStagingCommon.process`: engine commands in a child process, polled without blocking.
- :mod:`OncoStagingCommon.dependencies`: which Python requirements Slicer still lacks.
"""
