"""Engine results → MRML nodes: the one place where a run folder becomes scene content.

Every OncoStaging module imports its results through :func:`import_run_results`, so all of them
look and behave the same in the scene:

- a segmentation node built from the run's label map, one named, coloured segment per label
  (with SNOMED CT terminology when the model provides it), reference geometry from the input and a
  closed-surface 3D reconstruction;
- the Grad-CAM heat map as a scalar volume with a heat colour table, shown as slice-view
  foreground over the input at ~40 % opacity;
- a volume table (structure, cm³) and, for a task that stages, a stage-probability table with a
  bar chart;
- for a task whose report has ``slice_probabilities`` (one classifier probability per input slice),
  a slice table (slice index, position in mm, probability, kept) with a line chart and the
  classifier's threshold (``slice_threshold``);
- all of them named after the input, tagged with the module (owner) and the input node ID, and
  placed in one folder under the input's study in the subject hierarchy.

Re-importing for the same input and owner replaces exactly those nodes. Nodes are built first and
old ones removed only when the new set is complete, so a failed import leaves the scene as it was.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import slicer
import vtk

log = logging.getLogger(__name__)

OWNER_ATTRIBUTE = "OncoStaging.Owner"
INPUT_ATTRIBUTE = "OncoStaging.InputVolumeID"
ROLE_ATTRIBUTE = "OncoStaging.Role"
REPORT_ATTRIBUTE = "OncoStaging.Report"

SEGMENTATION_FILE = "segmentation.nii.gz"
GRADCAM_FILE = "gradcam.nii.gz"
REPORT_FILE = "report.json"

HEAT_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
DEFAULT_GRADCAM_OPACITY = 0.4
STRUCTURE_COLUMN, VOLUME_COLUMN = "Structure", "Volume [cm3]"
STAGE_COLUMN, PROBABILITY_COLUMN, INDEX_COLUMN = "Stage", "Probability", "Index"
SLICE_COLUMN, POSITION_COLUMN, KEPT_COLUMN, THRESHOLD_COLUMN = "Slice", "z [mm]", "Kept", "Threshold"


class ResultImportError(RuntimeError):
    """A run folder cannot be turned into scene nodes (missing or inconsistent files)."""


class SegmentLike(Protocol):
    """A segment description; ``engine.io.segmentation_nrrd.SegmentInfo`` fits."""

    name: str
    value: int
    color: tuple[float, float, float]
    terminology: str | None


@dataclass
class ResultNodes:
    """The nodes one run put into the scene."""

    segmentation: Any
    volume_table: Any
    #: None for a task without stages (or a run that did not stage).
    probability_table: Any | None = None
    probability_chart: Any | None = None
    probability_series: Any | None = None
    gradcam: Any | None = None
    folder_item: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    #: None unless the report has ``slice_probabilities``.
    slice_table: Any | None = None
    slice_chart: Any | None = None
    #: the probability curve, then the threshold line when the report gives one
    slice_series: list[Any] = field(default_factory=list)

    def nodes(self) -> list[Any]:
        return [n for n in (self.segmentation, self.gradcam, self.volume_table, self.probability_table,
                            self.probability_series, self.probability_chart, self.slice_table,
                            *self.slice_series, self.slice_chart) if n is not None]


# ---------------------------------------------------------------------------------------- reading

def read_volume_file(path: Path, node_class: str = "vtkMRMLScalarVolumeNode") -> Any:
    """Read a volume file into a node that is *not* in any scene (nothing changes if this fails)."""
    node = getattr(slicer, node_class)()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise ResultImportError(f"Cannot read '{path}' as a volume.")
    return node


def write_volume_file(node: Any, path: Path) -> None:
    """Write a volume node to a file without adding a storage node to the scene."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(node):
        raise ResultImportError(f"Cannot write volume '{node.GetName()}' to '{path}'.")


def ijk_to_ras(node: Any) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def same_geometry(a: Any, b: Any, tolerance_mm: float = 1e-3) -> bool:
    """Same voxel grid (dimensions and IJK→RAS) within ``tolerance_mm``."""
    if a.GetImageData().GetDimensions() != b.GetImageData().GetDimensions():
        return False
    return bool(np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=tolerance_mm))


# ---------------------------------------------------------------------------------------- finding

def result_nodes_of(scene: Any, input_volume: Any, owner: str) -> list[Any]:
    """Nodes that ``owner`` created for ``input_volume`` (display/storage nodes not included)."""
    found = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        if node.GetAttribute(OWNER_ATTRIBUTE) == owner and node.GetAttribute(INPUT_ATTRIBUTE) == input_volume.GetID():
            found.append(node)
    return found


def _owned_folders(scene: Any, input_volume: Any, owner: str) -> list[int]:
    sh = scene.GetSubjectHierarchyNode()
    if sh is None:
        return []
    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())
            if sh.GetItemAttribute(ids.GetId(i), OWNER_ATTRIBUTE) == owner
            and sh.GetItemAttribute(ids.GetId(i), INPUT_ATTRIBUTE) == input_volume.GetID()]


def remove_result_nodes(scene: Any, input_volume: Any, owner: str, keep: Iterable[Any] = ()) -> int:
    """Remove what ``owner`` created for ``input_volume`` (except ``keep``, which must not be in one
    of its result folders yet); returns how many nodes were removed."""
    keep_ids = {n.GetID() for n in keep}
    removed = 0
    for node in result_nodes_of(scene, input_volume, owner):
        if node.GetID() in keep_ids:
            continue
        _remove_with_helpers(scene, node)
        removed += 1
    sh = scene.GetSubjectHierarchyNode()
    for folder in _owned_folders(scene, input_volume, owner):
        sh.RemoveItem(folder, False, False)
    return removed


def _remove_with_helpers(scene: Any, node: Any) -> None:
    helpers = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetNumberOfStorageNodes"):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


# ---------------------------------------------------------------------------------------- building

def _tag(node: Any, owner: str, input_volume: Any, role: str) -> None:
    node.SetAttribute(OWNER_ATTRIBUTE, owner)
    node.SetAttribute(INPUT_ATTRIBUTE, input_volume.GetID())
    node.SetAttribute(ROLE_ATTRIBUTE, role)


def add_segmentation(scene: Any, input_volume: Any, labelmap: Any, segments: Sequence[SegmentLike], name: str,
                     show_3d: bool = True) -> Any:
    """A segmentation node holding ``labelmap`` (a label map node outside the scene) as one segment per
    entry of ``segments`` — every segment is created, even when its label is absent from the map."""
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(input_volume)
    segmentation = seg_node.GetSegmentation()
    ordered = sorted(segments, key=lambda s: int(s.value))
    # The importer maps label value v to the (v-1)-th ID; fill gaps so values and segments stay aligned.
    ids = vtk.vtkStringArray()
    spacers = []
    by_value = {int(s.value): s for s in ordered}
    for value in range(1, max(by_value) + 1 if by_value else 1):
        spec = by_value.get(value)
        segment_id = spec.name.replace(" ", "_") if spec else f"__unused_{value}"
        segmentation.AddEmptySegment(segment_id, spec.name if spec else segment_id,
                                     tuple(float(c) for c in spec.color) if spec else (0.5, 0.5, 0.5))
        if spec is None:
            spacers.append(segment_id)
        ids.InsertNextValue(segment_id)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg_node, ids):
        raise ResultImportError("Slicer could not import the label map into a segmentation.")
    for segment_id in spacers:
        segmentation.RemoveSegment(segment_id)
    for spec in ordered:
        segment = segmentation.GetSegment(spec.name.replace(" ", "_"))
        if spec.terminology:
            if hasattr(segment, "SetTerminology"):  # Slicer >= 5.8
                segment.SetTerminology(spec.terminology)
            else:
                segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
    seg_node.CreateClosedSurfaceRepresentation()
    display = seg_node.GetDisplayNode()
    display.SetVisibility3D(bool(show_3d))
    display.SetPreferredDisplayRepresentationName3D("Closed surface")
    return seg_node


def add_gradcam(scene: Any, input_volume: Any, gradcam: Any, name: str) -> Any:
    """Add a Grad-CAM volume (outside the scene) with a heat colour map, range 0..1."""
    gradcam.SetName(name)
    scene.AddNode(gradcam)
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetAndObserveColorNodeID(HEAT_COLOR_NODE_ID)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetLowerThreshold(0.05)  # faint activation stays transparent over the CT
    display.SetApplyThreshold(1)
    gradcam.SetAndObserveDisplayNodeID(display.GetID())
    return gradcam


def show_gradcam_in_slice_views(scene: Any, background: Any, gradcam: Any | None,
                                opacity: float = DEFAULT_GRADCAM_OPACITY) -> None:
    """Input as background and Grad-CAM as foreground in every slice view (None hides it)."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(gradcam.GetID() if gradcam is not None else None)
        composite.SetForegroundOpacity(float(opacity))


def add_table(scene: Any, name: str, columns: Sequence[tuple[str, str, list[Any]]]) -> Any:
    """A table node from ``(column name, 'string'|'double', values)`` triples."""
    table = vtk.vtkTable()
    for column_name, kind, values in columns:
        array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        array.SetName(column_name)
        for v in values:
            array.InsertNextValue(str(v) if kind == "string" else float(v))
        table.AddColumn(array)
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAndObserveTable(table)
    node.SetUseColumnTitleAsColumnHeader(True)
    return node


def add_probability_chart(scene: Any, table: Any, name: str) -> tuple[Any, Any]:
    """A bar chart of ``table``'s probabilities, one bar per stage."""
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} series")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName(INDEX_COLUMN)
    series.SetYColumnName(PROBABILITY_COLUMN)
    series.SetLabelColumnName(STAGE_COLUMN)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetColor(0.85, 0.25, 0.2)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Stage probabilities")
    chart.SetXAxisTitle("Stage")
    chart.SetYAxisTitle("Probability")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(False)
    return chart, series


def slice_positions_mm(volume: Any, count: int) -> list[float] | None:
    """The S (z) coordinate in mm of the centre of each of the ``count`` slices (K index) of ``volume``;
    None when the volume does not have that many slices (the position cannot be derived)."""
    image = volume.GetImageData()
    if image is None:
        return None
    dims = image.GetDimensions()
    if dims[2] != count:
        return None
    m = ijk_to_ras(volume)
    centre_i, centre_j = (dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0
    return [float(m[2] @ np.array([centre_i, centre_j, float(k), 1.0])) for k in range(count)]


def add_slice_probabilities(scene: Any, input_volume: Any, report: dict[str, Any],
                            name: str) -> tuple[Any, Any, list[Any]] | None:
    """Table and line chart of the report's ``slice_probabilities`` (None when it has none).

    Columns: slice index (K), z in mm (when the input's geometry gives one per slice), probability,
    kept ("yes"/"no": in ``slices_kept``, the slices the segmenter ran on) and, when the report gives
    ``slice_threshold``, that threshold, drawn as a dashed line."""
    probabilities = [float(p) for p in report.get("slice_probabilities") or []]
    if not probabilities:
        return None
    kept = {int(k) for k in report.get("slices_kept") or []}
    threshold = report.get("slice_threshold")
    indices = list(range(len(probabilities)))
    columns: list[tuple[str, str, list[Any]]] = [(SLICE_COLUMN, "double", indices)]
    positions = slice_positions_mm(input_volume, len(probabilities))
    if positions is None:
        log.warning("%d slice probabilities for a volume of another slice count: no z positions",
                    len(probabilities))
    else:
        columns.append((POSITION_COLUMN, "double", positions))
    columns += [(PROBABILITY_COLUMN, "double", probabilities),
                (KEPT_COLUMN, "string", ["yes" if k in kept else "no" for k in indices])]
    if threshold is not None:
        columns.append((THRESHOLD_COLUMN, "double", [float(threshold)] * len(probabilities)))
    table = add_table(scene, name, columns)

    def line(y_column: str, colour: tuple[float, float, float], style: int) -> Any:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {y_column.lower()}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(SLICE_COLUMN)
        series.SetYColumnName(y_column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeLine)
        series.SetLineStyle(style)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetColor(*colour)
        return series

    series = [line(PROBABILITY_COLUMN, (0.85, 0.25, 0.2), slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)]
    if threshold is not None:
        series.append(line(THRESHOLD_COLUMN, (0.4, 0.4, 0.4), slicer.vtkMRMLPlotSeriesNode.LineStyleDash))
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")
    for s in series:
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
    chart.SetTitle("Tumour probability per slice")
    chart.SetXAxisTitle("Slice")
    chart.SetYAxisTitle("Probability")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(threshold is not None)
    return table, chart, series


def _place_in_hierarchy(scene: Any, input_volume: Any, owner: str, nodes: Sequence[Any]) -> int:
    """One folder under the input's parent (its study when loaded from DICOM) holding ``nodes``."""
    sh = scene.GetSubjectHierarchyNode()
    if sh is None:
        return 0
    input_item = sh.GetItemByDataNode(input_volume) or sh.CreateItem(sh.GetSceneItemID(), input_volume)
    parent = sh.GetItemParent(input_item)
    folder = sh.CreateFolderItem(parent, f"{input_volume.GetName()} {owner} results")
    sh.SetItemAttribute(folder, OWNER_ATTRIBUTE, owner)
    sh.SetItemAttribute(folder, INPUT_ATTRIBUTE, input_volume.GetID())
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if not item:
            item = sh.CreateItem(folder, node)
        sh.SetItemParent(item, folder)
    return folder


def load_report(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / REPORT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultImportError(f"The run folder has no readable {REPORT_FILE} ({exc}).") from exc


def import_run_results(scene: Any, input_volume: Any, run_dir: str | Path, owner: str,
                       segments: Sequence[SegmentLike], gradcam_opacity: float = DEFAULT_GRADCAM_OPACITY,
                       show_3d: bool = True, with_stages: bool = True) -> ResultNodes:
    """Turn an engine run folder into scene nodes for ``input_volume``, replacing ``owner``'s previous
    results for that input. All or nothing: on any error the scene is left as it was.

    The probability table and chart are made only ``with_stages`` (the task stages) and when the
    report holds stage probabilities, so a segmentation-only task shows no empty chart; the slice
    table and chart only when the report holds ``slice_probabilities``."""
    run_dir = Path(run_dir)
    report = load_report(run_dir)
    labelmap = read_volume_file(run_dir / SEGMENTATION_FILE, "vtkMRMLLabelMapVolumeNode")
    if not same_geometry(labelmap, input_volume):
        raise ResultImportError(f"The segmentation's voxel grid differs from '{input_volume.GetName()}'; the "
                                "run was made for another volume.")
    gradcam_path = run_dir / GRADCAM_FILE
    gradcam_volume = read_volume_file(gradcam_path) if gradcam_path.is_file() else None
    if gradcam_volume is not None and not same_geometry(gradcam_volume, input_volume):
        raise ResultImportError("The Grad-CAM map's voxel grid differs from the input volume's.")

    base = input_volume.GetName()
    created: list[Any] = []
    try:
        seg = add_segmentation(scene, input_volume, labelmap, segments, f"{base} segmentation", show_3d)
        seg.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report))
        created.append(seg)
        gradcam = None
        if gradcam_volume is not None:
            gradcam = add_gradcam(scene, input_volume, gradcam_volume, f"{base} Grad-CAM")
            created.append(gradcam)
        volumes = report.get("volumes_cm3", {})
        volume_table = add_table(scene, f"{base} volumes", [
            (STRUCTURE_COLUMN, "string", list(volumes)), (VOLUME_COLUMN, "double", list(volumes.values()))])
        created.append(volume_table)
        probabilities = (report.get("stage_probabilities") or {}) if with_stages else {}
        probability_table = chart = series = None
        if probabilities:
            probability_table = add_table(scene, f"{base} stage probabilities", [
                (INDEX_COLUMN, "double", list(range(1, len(probabilities) + 1))),
                (STAGE_COLUMN, "string", list(probabilities)),
                (PROBABILITY_COLUMN, "double", list(probabilities.values()))])
            created.append(probability_table)
            chart, series = add_probability_chart(scene, probability_table, f"{base} stage probabilities chart")
            created += [series, chart]
        slice_nodes = add_slice_probabilities(scene, input_volume, report, f"{base} slice probabilities")
        slice_table, slice_chart, slice_series = slice_nodes or (None, None, [])
        if slice_nodes:
            created += [slice_table, *slice_series, slice_chart]
        for node, role in ((seg, "segmentation"), (gradcam, "gradcam"), (volume_table, "volume_table"),
                           (probability_table, "probability_table"), (series, "probability_series"),
                           (chart, "probability_chart"), (slice_table, "slice_table"),
                           (slice_chart, "slice_chart"), *((s, "slice_series") for s in slice_series)):
            if node is not None:
                _tag(node, owner, input_volume, role)
        remove_result_nodes(scene, input_volume, owner, keep=created)
        folder = _place_in_hierarchy(scene, input_volume, owner, created)
    except Exception:
        for node in created:
            if scene.IsNodePresent(node):
                _remove_with_helpers(scene, node)
        raise
    if gradcam is not None:
        show_gradcam_in_slice_views(scene, input_volume, gradcam, gradcam_opacity)
    log.info("Imported %s results for '%s' from %s", owner, base, run_dir)
    return ResultNodes(segmentation=seg, gradcam=gradcam, volume_table=volume_table,
                       probability_table=probability_table, probability_chart=chart, probability_series=series,
                       folder_item=folder, report=report, slice_table=slice_table, slice_chart=slice_chart,
                       slice_series=slice_series)


def find_results(scene: Any, input_volume: Any, owner: str) -> ResultNodes | None:
    """The current results of ``owner`` for ``input_volume`` (e.g. after loading a saved scene)."""
    owned = result_nodes_of(scene, input_volume, owner)
    by_role = {n.GetAttribute(ROLE_ATTRIBUTE): n for n in owned}
    if "segmentation" not in by_role or "volume_table" not in by_role:
        return None
    # Scenes saved before segmentation-only tasks existed keep the report on the probability table.
    holders = [by_role[r] for r in ("segmentation", "probability_table") if r in by_role]
    report_text = next((t for t in (n.GetAttribute(REPORT_ATTRIBUTE) for n in holders) if t), "{}")
    folders = _owned_folders(scene, input_volume, owner)
    return ResultNodes(segmentation=by_role["segmentation"], gradcam=by_role.get("gradcam"),
                       volume_table=by_role["volume_table"], probability_table=by_role.get("probability_table"),
                       probability_chart=by_role.get("probability_chart"),
                       probability_series=by_role.get("probability_series"),
                       folder_item=folders[0] if folders else 0, report=json.loads(report_text),
                       slice_table=by_role.get("slice_table"), slice_chart=by_role.get("slice_chart"),
                       slice_series=[n for n in owned if n.GetAttribute(ROLE_ATTRIBUTE) == "slice_series"])


# ---------------------------------------------------------------------------------------- display and export

def set_surfaces_visible(segmentation_node: Any, visible: bool) -> None:
    display = segmentation_node.GetDisplayNode()
    if visible and not segmentation_node.GetSegmentation().ContainsRepresentation("Closed surface"):
        segmentation_node.CreateClosedSurfaceRepresentation()
    display.SetVisibility3D(bool(visible))


def set_gradcam_opacity(scene: Any, gradcam: Any, opacity: float) -> None:
    """Foreground opacity of the slice views that show ``gradcam``."""
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        if composite.GetForegroundVolumeID() == gradcam.GetID():
            composite.SetForegroundOpacity(float(opacity))


def export_segmentation(segmentation_node: Any, path: str | Path) -> Path:
    """Write a ``.seg.nrrd`` file (Slicer's own format, with names, colours and terminology)."""
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise ValueError(f"'{path.name}' must end in .seg.nrrd")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentation_node):
        raise ResultImportError(f"Cannot write the segmentation to '{path}'.")
    return path


def came_from_dicom(volume: Any) -> bool:
    """Slicer's DICOM loader records the source instances; only then can a DICOM SEG be exported."""
    return bool(volume.GetAttribute("DICOM.instanceUIDs"))
