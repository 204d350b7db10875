"""What CI can check of the Slicer-only files: the .ui loads in a real Qt loader, every widget the
shared panel and the module use exists in it, a module file is thin, CMake lists every file on disk,
and the extension metadata is complete."""

from __future__ import annotations

import ast
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ["EsophagusStaging", "GTVSeg", "NPCStaging"]
SHARED_WIDGET = REPO / "OncoStagingCommon" / "OncoStagingCommon" / "widget.py"
#: The shared Qt panels: the task panel and the treatment-outcome (PET) panel.
SHARED_PANELS = (SHARED_WIDGET, REPO / "OncoStagingCommon" / "OncoStagingCommon" / "pet_panel.py")
#: What only the shared logic and panel do: run and poll engine processes, build results, keep GUI state.
SHARED_ONLY = ("EngineJob", "subprocess", "Launcher", "poll(", "import_run_results", "engine.pipelines",
               "--progress", "parameterNodeWrapper")
PAPER = ("Segmentation prompts classification: nnU-Net-based 3D transfer learning with ROI tokenization and "
         "cross-task attention for esophageal cancer T-stage diagnosis (nn-TransEC)")
#: The method each module's help text names.
METHODS = {"EsophagusStaging": PAPER, "GTVSeg": "Shi et al., decoupled GTV segmentation on CT",
           "NPCStaging": "multi-task GTV segmentation and T-staging of nasopharyngeal carcinoma on MRI"}


def module_task(module: str):
    """The task a module names (``TASK = "..."`` in its module file)."""
    from engine.tasks import get_task

    source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    return get_task(re.search(r'^TASK = "([\w-]+)"$', source, re.M).group(1))


def ui_path(module: str) -> Path:
    return REPO / module / "Resources" / "UI" / f"{module}.ui"


def widget_names_used(module: str) -> set[str]:
    """``self.ui.<name>`` of the shared panel (every module's .ui needs them) and of the module itself."""
    sources = [SHARED_WIDGET, REPO / module / f"{module}.py"]
    return {name for path in sources
            for name in re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8"))}


def custom_widgets(ui: Path) -> dict[str, str]:
    """Slicer/CTK classes declared in the .ui and the Qt class each extends."""
    root = ET.parse(ui).getroot()
    return {cw.findtext("class"): cw.findtext("extends") for cw in root.iter("customwidget")}


@pytest.fixture(scope="module")
def qt_app():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (the 'slicer' extra)")
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def load_ui(ui: Path):
    """Load with QUiLoader; Slicer/CTK custom classes become their declared Qt base class."""
    from PySide6 import QtCore, QtUiTools

    declared = custom_widgets(ui)

    class Loader(QtUiTools.QUiLoader):
        def createWidget(self, class_name, parent=None, name=""):
            base = class_name
            while base in declared:
                base = declared[base]
            widget = super().createWidget(base, parent, name)
            if widget is not None and base != class_name:
                widget.setProperty("slicerClass", class_name)
            return widget

    file = QtCore.QFile(str(ui))
    assert file.open(QtCore.QIODevice.ReadOnly)
    try:
        loader = Loader()
        widget = loader.load(file)
        assert widget is not None, loader.errorString()
        return widget
    finally:
        file.close()


@pytest.mark.parametrize("module", MODULES)
def test_ui_loads_and_has_every_widget_the_code_uses(qt_app, module):
    from PySide6 import QtWidgets

    widget = load_ui(ui_path(module))
    names = {w.objectName() for w in widget.findChildren(QtWidgets.QWidget)}
    used = widget_names_used(module)
    assert used, "the module uses self.ui widgets"
    assert sorted(used - names) == []
    # The Slicer classes the code relies on are declared as such in the .ui.
    by_name = {w.objectName(): w for w in widget.findChildren(QtWidgets.QWidget)}
    assert by_name["inputVolumeSelector"].property("slicerClass") == "qMRMLNodeComboBox"
    assert by_name["trainingCollapsibleButton"].property("slicerClass") == "ctkCollapsibleButton"
    # the .ui's wording is what the shared panel shows when idle: "Segment" for a task without stages
    assert by_name["applyButton"].text() == ("Segment && Stage" if module_task(module).stage_names else "Segment")


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_names_exist_in_the_parameter_node(module):
    root = ET.parse(ui_path(module)).getroot()
    params = {p.findtext("string") for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    tree = ast.parse(SHARED_WIDGET.read_text(encoding="utf-8"))
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef)
                   and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list))
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    assert params and params <= fields


def cmake_list(cmake: Path, variable: str) -> list[str]:
    text = cmake.read_text(encoding="utf-8")
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set in {cmake}"
    module = re.search(r"set\(MODULE_NAME (\w+)\)", text).group(1)
    return [entry.replace("${MODULE_NAME}", module) for entry in match.group(1).split()]


@pytest.mark.parametrize("module", MODULES)
def test_module_cmake_lists_every_file_on_disk(module):
    folder = REPO / module
    scripts = cmake_list(folder / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(folder / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")
    on_disk_py = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py") if "Testing" not in p.parts)
    on_disk_res = sorted(str(p.relative_to(folder)) for p in (folder / "Resources").rglob("*") if p.is_file())
    assert sorted(scripts) == on_disk_py
    assert sorted(resources) == on_disk_res


def test_shared_package_cmake_lists_every_file_and_the_engine_is_installed():
    folder = REPO / "OncoStagingCommon"
    scripts = cmake_list(folder / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    assert sorted(scripts) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"GLOB_RECURSE ONCOSTAGING_ENGINE_SCRIPTS .*engine/\*\.py", top, re.S)
    # the demo models go beside engine/, where engine.registry.builtin_dir() finds them
    assert re.search(r"install\(DIRECTORY \$\{CMAKE_CURRENT_SOURCE_DIR\}/models\s+DESTINATION "
                     r"\$\{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR\}", top)
    subdirs = re.findall(r"^add_subdirectory\((\w+)\)", top, re.M)
    assert subdirs == ["OncoStagingCommon", *MODULES]


def test_extension_metadata_and_catalog_entry():
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    meta = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', top))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert meta.get(f"EXTENSION_{key}"), key
    assert meta["EXTENSION_DEPENDS"] == "PyTorch"
    assert "find_package(Slicer REQUIRED)" in top
    assert "${Slicer_EXTENSION_GENERATE_CONFIG}" in top and "${Slicer_EXTENSION_CPACK}" in top
    for url in [meta["EXTENSION_ICONURL"], *meta["EXTENSION_SCREENSHOTURLS"].split()]:
        local = REPO / url.split("/main/", 1)[1]
        assert local.is_file() and local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
    catalog = json.loads((REPO / "Resources" / "OncoStaging.json").read_text(encoding="utf-8"))
    assert catalog["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert set(catalog) == {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                            "scm_url", "tier"}
    assert catalog["category"] == meta["EXTENSION_CATEGORY"] and catalog["build_dependencies"] == ["PyTorch"]


@pytest.mark.parametrize("module", MODULES)
def test_module_help_says_research_only_and_cites_the_paper(module):
    source = (REPO / module / f"{module}.py").read_text(encoding="utf-8")
    assert "research use only" in source.lower()
    assert METHODS[module] in source
    assert re.search(r'categories = \["Oncology"\]', source)


def test_shared_logic_never_imports_qt():
    """Everything of OncoStagingCommon but the panel runs headless (slicer-core, no Qt, no application)."""
    for path in (REPO / "OncoStagingCommon").rglob("*.py"):
        if path in SHARED_PANELS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"qt", "ctk", "PythonQt"}, path
        assert "slicer.app" not in path.read_text(encoding="utf-8"), path

@pytest.mark.parametrize("module", MODULES)
def test_module_file_is_thin_and_names_its_task(module):
    """A module is its metadata, a TaskWidget subclass naming a task and .ui, and its self-test: the
    engine process, progress and results belong to the shared logic."""
    from engine.tasks import get_task

    path = REPO / module / f"{module}.py"
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) < 150
    assert [s for s in SHARED_ONLY if s in source] == []
    task_name = re.search(r'^TASK = "([\w-]+)"$', source, re.M).group(1)
    widget = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == f"{module}Widget")
    assert [b.id for b in widget.bases] == ["TaskWidget"]
    assigned = {t.id: n.value for n in widget.body if isinstance(n, ast.Assign) for t in n.targets}
    assert getattr(assigned["TASK"], "id", None) == "TASK"
    assert get_task(task_name).slicer_module == module
    assert (REPO / module / "Resources" / ast.literal_eval(assigned["UI_FILE"])).is_file()
