"""Offscreen rendering of a headless MRML scene (EGL + Mesa llvmpipe, no display, no Qt).

Used by ``test_rendering.py`` (pixel checks) and, run as a script, to make the extension's
screenshots in ``Resources/Screenshots/`` from the same glue path the module uses::

    python tests/slicer/offscreen.py                  # writes Resources/Screenshots/*.png
    python tests/slicer/offscreen.py --gtv-ct CT.nii.gz   # GTVSeg's on that CT (default: a gtv phantom)
    python tests/slicer/offscreen.py --only npc           # NPCStaging's (the shipped demo on an npc phantom)

The GTVSeg screenshots are made only when a trained ``gtv`` model is installed (none ships with the
repository); otherwise they are skipped, never drawn from anything but a model's output.
"""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

THREE_D_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                    "vtkMRMLModelDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D")
SLICE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D",)
#: The npc phantom of the NPCStaging screenshots (not one of the shipped model's training phantoms).
NPC_SCREENSHOT_SEED = 31


def _window(size: tuple[int, int], layers: int = 1) -> tuple[vtk.vtkRenderWindow, vtk.vtkRenderer]:
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.SetNumberOfLayers(layers)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0, 0, 0)
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # some displayable managers observe the interactor
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return window, renderer


def _managers(factory_class, app_logic, renderer, names) -> vtk.vtkObject:
    factory = factory_class.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    for name in names:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    return group


def _pixels(window: vtk.vtkRenderWindow) -> np.ndarray:
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3]
    return np.ascontiguousarray(rgb[::-1])  # VTK's first row is the bottom one


class ThreeDView:
    """A Slicer 3D view: camera, view, model and segmentation (closed surface) displayable managers."""

    def __init__(self, scene, app_logic, size=(600, 600), name="1"):
        self.window, self.renderer = _window(size)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        app_logic.GetViewLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(scene)
        self.view_node = self.logic.AddViewNode(name)
        self.view_node.SetBoxVisible(False)
        self.view_node.SetAxisLabelsVisible(False)
        self.view_node.SetBackgroundColor(0, 0, 0)
        self.view_node.SetBackgroundColor2(0, 0, 0)
        self.group = _managers(slicer.vtkMRMLThreeDViewDisplayableManagerFactory, app_logic, self.renderer,
                               THREE_D_MANAGERS)
        self.group.SetMRMLDisplayableNode(self.view_node)

    def render(self, direction: str = "Anterior") -> np.ndarray:
        self.renderer.ResetCamera()
        camera = self.renderer.GetActiveCamera()
        fx, fy, fz = camera.GetFocalPoint()
        distance = camera.GetDistance()
        offsets = {"Anterior": (0, distance, 0), "Left": (-distance, 0, 0), "Right": (distance, 0, 0)}
        dx, dy, dz = offsets[direction]
        camera.SetPosition(fx + dx, fy + dy, fz + dz)
        camera.SetViewUp(0, 0, 1)
        self.renderer.ResetCamera()
        self.renderer.ResetCameraClippingRange()
        self.window.Render()
        return _pixels(self.window)


class SliceView:
    """A Slicer slice view: the slice logic's reslice of background/foreground plus segment outlines/fill."""

    def __init__(self, scene, app_logic, size=(600, 600), name="Red", orientation="Axial"):
        self.window, self.renderer = _window(size)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        app_logic.GetSliceLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(scene)
        self.slice_node = self.logic.AddSliceNode(name)
        self.slice_node.SetOrientation(orientation)
        self.composite = self.logic.GetSliceCompositeNode()
        self.group = _managers(slicer.vtkMRMLSliceViewDisplayableManagerFactory, app_logic, self.renderer,
                               SLICE_MANAGERS)
        self.group.SetMRMLDisplayableNode(self.slice_node)
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(self.mapper)
        self.actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self.actor)
        self.size = size

    def render(self, offset_ras: float | None = None, zoom: float = 1.0) -> np.ndarray:
        """The slice at ``offset_ras`` (S for axial), fitted to the background volume and magnified ``zoom`` times."""
        self.logic.ResizeSliceNode(*self.size)
        self.logic.FitSliceToBackground()
        if zoom != 1.0:
            fov = self.slice_node.GetFieldOfView()
            self.slice_node.SetFieldOfView(fov[0] / zoom, fov[1] / zoom, fov[2])
        if offset_ras is not None:
            self.logic.SetSliceOffset(offset_ras)
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        self.window.Render()
        self.window.Render()  # the segmentation pipeline updates on the first render
        return _pixels(self.window)


def colour_fraction(rgb: np.ndarray, colour: tuple[float, float, float], tolerance: float = 40) -> float:
    """Fraction of pixels whose hue matches ``colour`` (0..1 RGB) after normalising brightness, so
    shaded surfaces still count."""
    target = np.asarray(colour, float)
    target = target / max(target.max(), 1e-6)
    pixels = rgb.reshape(-1, 3).astype(float)
    peak = pixels.max(axis=1, keepdims=True)
    lit = peak[:, 0] > 40
    normalised = pixels[lit] / peak[lit]
    close = np.abs(normalised - target).max(axis=1) < tolerance / 255.0
    return float(close.sum()) / len(pixels)


def save_png(rgb: np.ndarray, path) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def warm_fraction(rgb: np.ndarray, margin: int = 50) -> float:
    """Fraction of clearly warm (red/yellow) pixels: red well above blue. A grey CT has none."""
    r, b = rgb[..., 0].astype(int), rgb[..., 2].astype(int)
    return float(np.mean(r - b > margin))


def peak_slice(volume) -> int:
    """The K index (of the volume node as Slicer holds it, which need not be the file's slice order) of
    the axial slice holding ``volume``'s highest value."""
    values = slicer.util.arrayFromVolume(volume)
    return int(np.argmax(values.reshape(values.shape[0], -1).max(axis=1)))


def largest_area_slice(volume) -> int:
    """The K index of the axial slice where the non-zero part of ``volume`` (a label map) is largest."""
    values = slicer.util.arrayFromVolume(volume)
    return int(np.argmax((values.reshape(values.shape[0], -1) > 0).sum(axis=1)))


def axial_offset(volume, k: float) -> float:
    """The axial RAS offset (S) of slice ``k`` of ``volume``'s K axis (``slicer.util.arrayFromVolume`` order)."""
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return float(m.MultiplyPoint((0.0, 0.0, k, 1.0))[2])


def make_screenshots(out_dir=None) -> list:
    """Segment & Stage a fresh phantom (the ``make demo`` case) with the shipped demo model, import the
    run through the module's glue and render the 3D view and an axial slice through the Grad-CAM peak.
    Everything shown is the model's own output."""
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    sys.path[:0] = [str(here), str(repo / "OncoStagingCommon"), str(repo)]
    from conftest import HeadlessSlicer


    from engine.pipelines.outputs import segments_from_labels
    from engine.demo import DEMO_CASE_SEED
    from engine.io.image import write_image
    from engine.registry import find_bundle
    from engine.synth import generate_case
    from engine.tasks import get_task
    from OncoStagingCommon import results

    out_dir = Path(out_dir or repo / "Resources" / "Screenshots")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="oncostaging-screens-"))
    try:
        bundle = find_bundle("esophagus")  # the shipped demo model unless a newer one is installed
        case = generate_case("esophagus", DEMO_CASE_SEED, "small")
        ct_file = work / "demo_ct.nii.gz"
        write_image(case.channels[0], ct_file)
        run = work / "run"
        result = get_task("esophagus").segment(ct_file, run, bundle, device="cpu")
        headless = HeadlessSlicer()
        ct = headless.load_volume(ct_file, "Phantom CT")
        three_d = ThreeDView(headless.scene, headless.app_logic, size=(800, 600))
        axial = SliceView(headless.scene, headless.app_logic, size=(600, 600))
        nodes = results.import_run_results(headless.scene, ct, run, "EsophagusStaging",
                                           segments_from_labels(bundle.labels))
        pericardium = nodes.segmentation.GetSegmentation().GetSegmentIdBySegmentName("pericardium")
        nodes.segmentation.GetDisplayNode().SetSegmentOpacity3D(pericardium, 0.35)
        written = [out_dir / "EsophagusStaging-3D.png", out_dir / "EsophagusStaging-GradCAM.png"]
        save_png(three_d.render("Left"), written[0])
        save_png(axial.render(axial_offset(ct, peak_slice(nodes.gradcam))), written[1])
        print(f"model {bundle.id} {bundle.version}; phantom seed {DEMO_CASE_SEED} (reference {case.targets.t_stage}); "
              f"predicted {result.predicted_stage}; wrote " + ", ".join(str(p) for p in written))
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render_module_screenshots(task_name: str, module: str, image_path, phantom_seed: int, volume_name: str,
                              zoom: float, out_dir=None, with_stages: bool = True):
    """Run ``task_name``'s installed model on ``image_path`` (default: a fresh phantom of ``phantom_seed``),
    import the run through the module's glue and write ``<module>-3D.png`` and ``<module>-GradCAM.png``: the
    GTV in 3D and the axial slice where it is largest, with the Grad-CAM. Returns (written files, imported
    nodes, run result, phantom case or None), or None (and makes nothing) when no model is installed."""
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    here = Path(__file__).resolve().parent
    repo = here.parents[1]
    sys.path[:0] = [str(here), str(repo / "OncoStagingCommon"), str(repo)]
    from conftest import HeadlessSlicer

    from engine.errors import EngineError
    from engine.io.image import write_image
    from engine.pipelines.outputs import segments_from_labels
    from engine.registry import find_bundle
    from engine.synth import generate_case
    from engine.tasks import get_task
    from OncoStagingCommon import results

    try:
        bundle = find_bundle(task_name)
    except EngineError as exc:
        print(f"{module} screenshots skipped: no trained {task_name} model is installed ({exc})")
        return None
    out_dir = Path(out_dir or repo / "Resources" / "Screenshots")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"oncostaging-{task_name}-screens-"))
    try:
        image_file = Path(image_path) if image_path else work / f"{task_name}_phantom.nii.gz"
        case = None if image_path else generate_case(task_name, phantom_seed, "small")
        if case is not None:
            write_image(case.channels[0], image_file)
        run = work / "run"
        result = get_task(task_name).segment(image_file, run, bundle, device="cpu")
        headless = HeadlessSlicer()
        volume = headless.load_volume(image_file, volume_name)
        three_d = ThreeDView(headless.scene, headless.app_logic, size=(800, 600))
        axial = SliceView(headless.scene, headless.app_logic, size=(600, 600))
        nodes = results.import_run_results(headless.scene, volume, run, module, segments_from_labels(bundle.labels),
                                           with_stages=with_stages)
        written = [out_dir / f"{module}-3D.png", out_dir / f"{module}-GradCAM.png"]
        save_png(three_d.render("Anterior"), written[0])
        labels = headless.load_volume(run / "segmentation.nii.gz", "GTV labels", labelmap=True)  # ``volume``'s K order
        save_png(axial.render(axial_offset(volume, largest_area_slice(labels)), zoom=zoom), written[1])
        print(f"model {bundle.id} {bundle.version}; wrote " + ", ".join(str(p) for p in written))
        return written, nodes, result, case
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_gtv_screenshots(out_dir=None, ct_path=None) -> list:
    """GTVSeg on ``ct_path`` (default: a gtv phantom); [] when no gtv model is installed."""
    made = render_module_screenshots("gtv", "GTVSeg", ct_path, 1, "CT", 1.8, out_dir, with_stages=False)
    if made is None:
        return []
    written, nodes, _, _ = made
    kept = len(nodes.report.get("slices_kept") or [])
    print(f"{kept} of {len(nodes.report.get('slice_probabilities') or [])} slices segmented")
    return written


def make_npc_screenshots(out_dir=None, mri_path=None) -> list:
    """NPCStaging on ``mri_path`` (default: a fresh npc phantom); [] when no npc model is installed."""
    made = render_module_screenshots("npc", "NPCStaging", mri_path, NPC_SCREENSHOT_SEED, "T1C MRI", 1.5, out_dir)
    if made is None:
        return []
    written, _, result, case = made
    reference = f" (reference {case.targets.t_stage})" if case is not None else ""
    print(f"predicted {result.predicted_stage}{reference}")
    return written


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gtv-ct", help="CT for the GTVSeg screenshots (default: OpenKBP pt_12, a validation "
                                         "patient of the shipped model, when the shared data is present; "
                                         "else a gtv phantom)")
    parser.add_argument("--npc-mri", help="MRI for the NPCStaging screenshots (default: an npc phantom)")
    parser.add_argument("--only", choices=("esophagus", "gtv", "npc"), help="make one module's screenshots")
    arguments = parser.parse_args()
    if arguments.only in (None, "esophagus"):
        make_screenshots()
    if arguments.only in (None, "gtv"):
        from pathlib import Path

        repo_parent = Path(__file__).resolve().parents[3]
        shared = Path(os.environ.get("ONCOSTAGING_SHARED_DATA", repo_parent / "shared" / "data"))
        held_out = shared / "openkbp" / "train" / "pt_12" / "ct.nii.gz"
        make_gtv_screenshots(ct_path=arguments.gtv_ct or (held_out if held_out.is_file() else None))
    if arguments.only in (None, "npc"):
        make_npc_screenshots(mri_path=arguments.npc_mri)
