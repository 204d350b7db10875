"""Headless Slicer for the module tests: a real MRML scene from the ``slicer-core`` wheel.

Slicer's own ``slicer.ScriptedLoadableModule`` imports Qt and does not exist in slicer-core, so a
Qt-free stand-in is installed here (tests only) and :mod:`OncoStagingCommon.logic` imports unchanged.
Everything skips, with the reason, when the ``slicer`` extra is not installed.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
SLICER_MISSING = ("slicer-core is not installed; install the 'slicer' extra "
                  "(pip install -e '.[slicer]') to run the Slicer module tests")

try:
    import slicer
    import slicer.util  # noqa: F401

    HAVE_SLICER = hasattr(slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_SLICER = False
# Test files start with ``pytest.importorskip("slicer", reason=SLICER_MISSING)``, so without the extra
# they are reported as skipped with this reason instead of failing to import.

def install_scripted_module_stand_in() -> None:
    """``slicer.ScriptedLoadableModule`` without Qt: the base classes the logic and panel derive from,
    with the members of Slicer's own that they use (module name, parameter node, resource path)."""
    if "slicer.ScriptedLoadableModule" in sys.modules:
        return
    stand_in = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.parent = parent
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self):
            return slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode") or \
                slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)

    class ScriptedLoadableModule:
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent
            self.moduleName = type(self).__name__.removesuffix("Widget")

        def setup(self):
            pass

        def resourcePath(self, filename):
            return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)

    class ScriptedLoadableModuleTest:
        pass

    for cls in (ScriptedLoadableModuleLogic, ScriptedLoadableModule, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(stand_in, cls.__name__, cls)
    sys.modules[stand_in.__name__] = stand_in
    slicer.ScriptedLoadableModule = stand_in


if HAVE_SLICER:
    install_scripted_module_stand_in()
    for folder in (REPO / "OncoStagingCommon", REPO / "EsophagusStaging", REPO / "GTVSeg",
                   REPO / "tests" / "plugins", Path(__file__).parent):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


class HeadlessSlicer:
    """A scene with the application logic and the module logics Slicer's C++ side needs."""

    def __init__(self) -> None:
        from vtk import vtkCollection

        self.scene = slicer.vtkMRMLScene()
        crosshair = slicer.vtkMRMLCrosshairNode()  # views expect the application's crosshair
        crosshair.SetCrosshairName("default")
        self.scene.AddNode(crosshair)
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        colors = self.app_logic.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.app_logic.SetModuleLogic("Colors", colors)
        self.app_logic.SetSliceLogics(vtkCollection())
        self.app_logic.SetViewLogics(vtkCollection())
        self.volumes = self._register(slicer.vtkSlicerVolumesLogic(), "Volumes")
        self.segmentations = self._register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        self.subject_hierarchy = self._register(slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)

    def _register(self, logic, name):
        logic.SetMRMLScene(self.scene)
        logic.SetMRMLApplicationLogic(self.app_logic)
        self.app_logic.SetModuleLogic(name, logic)
        return logic

    def load_volume(self, path: Path, name: str, labelmap: bool = False):
        node = self.volumes.AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
        assert node is not None, f"could not load {path}"
        return node

    def snapshot(self) -> list[tuple]:
        """Everything a test compares to show the scene did not change: nodes, names, attributes."""
        out = []
        for i in range(self.scene.GetNumberOfNodes()):
            n = self.scene.GetNthNode(i)
            attrs = tuple(sorted((k, n.GetAttribute(k)) for k in n.GetAttributeNames())) if n.GetAttributeNames() else ()
            out.append((n.GetID(), n.GetClassName(), n.GetName(), attrs))
        sh = self.scene.GetSubjectHierarchyNode()
        out.append(("sh-items", sh.GetNumberOfItems() if sh is not None else 0))
        return out


@pytest.fixture
def headless(monkeypatch):
    """A fresh headless scene, also published as ``slicer.mrmlScene``/``slicer.modules`` for slicer.util."""
    env = HeadlessSlicer()
    monkeypatch.setattr(slicer, "mrmlScene", env.scene, raising=False)
    modules = SimpleNamespace(segmentations=SimpleNamespace(logic=lambda: env.segmentations),
                              volumes=SimpleNamespace(logic=lambda: env.volumes),
                              subjecthierarchy=SimpleNamespace(logic=lambda: env.subject_hierarchy))
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    yield env
    env.scene.Clear(1)


# Same tiny configuration as tests/pipelines/test_esophagus.py: seconds on a CPU, not accurate.
TINY_TRAIN_ARGS = ["--lowres-epochs", "1", "--fullres-epochs", "1", "--classifier-epochs", "1",
                   "--steps-per-epoch", "2", "--base-features", "4", "--max-features", "8", "--folds", "4",
                   "--fold", "0", "--val-every", "1", "--seed", "1", "--target-spacing", "6.0", "3.9", "3.9"]


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory):
    """Eight esophagus phantoms (CT + reference labels + stages), as in the pipeline tests."""
    from engine.synth import generate_dataset

    root = tmp_path_factory.mktemp("slicer_phantoms")
    return generate_dataset("esophagus", root / "data", cases=8, seed=5)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, phantoms):
    """A tiny model trained through the training panel's own path (validate → train, in-process),
    with the progress events it emitted."""
    from OncoStagingCommon.logic import TaskLogic, TrainingRequest
    from OncoStagingCommon.process import InProcessLauncher

    events: list[dict] = []
    launcher = InProcessLauncher()
    logic = TaskLogic("esophagus", scene=slicer.vtkMRMLScene(), launcher=launcher)
    out = tmp_path_factory.mktemp("slicer_models") / "tiny-eso"
    request = TrainingRequest(dataset=phantoms.root, model_name="Tiny Eso", epochs=1, device="cpu", out_dir=out,
                              extra_args=TINY_TRAIN_ARGS)
    bundle_dir = logic.train(request, wait=True, on_event=events.append)
    return SimpleNamespace(bundle_dir=bundle_dir, events=events, commands=launcher.commands, request=request)


# ---------------------------------------------------------------------------------------- tasks beside the esophagus

@pytest.fixture
def toy():
    """The plug-in example task of the test suite, registered for this test."""
    import toy_task

    from engine.tasks import register_task, unregister_task

    register_task(toy_task.TASK, replace=True)
    yield toy_task.TASK
    unregister_task(toy_task.TASK.name)


@pytest.fixture
def segmentation_only(toy):
    """A task that segments and does not stage (no stage names), declared here."""
    from engine.tasks import Task, register_task, unregister_task

    task = register_task(Task(name="toyseg", title="Toy segmentation without stages", modality="CT",
                              labels=toy.labels, stage_names=None, tumour_label="lesion"), replace=True)
    yield task
    unregister_task(task.name)


@pytest.fixture
def volume(headless):
    """A small CT-like volume with a non-trivial geometry."""
    import numpy as np

    node = headless.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Toy CT")
    slicer.util.updateVolumeFromArray(node, np.full((8, 24, 24), 40, np.int16))
    node.SetSpacing(2.0, 1.5, 4.0)
    node.SetOrigin(-10.0, 5.0, 30.0)
    return node
