"""Static checks of the Slicer extension that need no Slicer: the .ui has every widget the code
uses, CMake lists exist and are complete, the module has Slicer's four classes and its test is
registered for ctest, and the Slicer-side code parses as Python 3.9 with only allowed imports."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from SAM3DPromptLib.shortcuts import SHORTCUTS  # the module's and the web app's

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "SAM3DPrompt"
MODULE_SCRIPT = MODULE / "SAM3DPrompt.py"
UI_FILE = MODULE / "Resources" / "UI" / "SAM3DPrompt.ui"
TRAINED_MODEL = REPO / "model_server" / "sam3d" / "models" / "small_phantoms.pt"
# What the Slicer side may import: Slicer's bundled packages, the stdlib, and itself.
ALLOWED_THIRD_PARTY = {"numpy", "requests", "slicer", "qt", "vtk", "ctk"}


def _cmake_list(text: str, variable: str) -> list:
    match = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    return match.group(1).split()


def _ui_widgets() -> dict:
    """name -> class of every widget in the .ui."""
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_SCRIPT.read_text(encoding="utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE_SCRIPT.name}")


def test_every_widget_the_code_uses_is_in_the_ui():
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", MODULE_SCRIPT.read_text(encoding="utf-8")))
    assert len(used) >= 15  # the check really found the Widget's uses
    missing = sorted(used - set(_ui_widgets()))
    assert not missing, f"used in SAM3DPrompt.py but not in {UI_FILE.name}: {missing}"


def test_ui_parameter_names_are_parameter_node_fields_and_custom_widgets_declared():
    root = ET.parse(UI_FILE).getroot()
    bound = {w.get("name"): w.find("property[@name='SlicerParameterName']/string").text
             for w in root.iter("widget") if w.find("property[@name='SlicerParameterName']") is not None}
    fields = {node.target.id for node in _class(_module_tree(), "SAM3DPromptParameterNode").body
              if isinstance(node, ast.AnnAssign)}
    assert bound == {"inputVolumeSelector": "inputVolume", "segmentationSelector": "segmentation"}
    assert set(bound.values()) <= fields
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used_custom = {cls for cls in _ui_widgets().values() if not cls.startswith("Q")}
    assert used_custom <= declared, f"custom widgets without a <customwidget>: {used_custom - declared}"
    # The API key is typed in a password field.
    echo = root.find(".//widget[@name='apiKeyLineEdit']/property[@name='echoMode']/enum")
    assert echo is not None and echo.text == "QLineEdit::Password"


def test_module_cmake_lists_existing_files_and_every_library_file():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = [s.replace("${MODULE_NAME}", "SAM3DPrompt") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", "SAM3DPrompt") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    for listed in scripts + resources:
        assert (MODULE / listed).is_file(), f"CMakeLists.txt lists {listed}, which does not exist"
    library = {f"SAM3DPromptLib/{p.name}" for p in (MODULE / "SAM3DPromptLib").glob("*.py")}
    assert library - set(scripts) == set(), f"not packaged: {sorted(library - set(scripts))}"
    assert "SAM3DPrompt.py" in scripts and "Resources/UI/SAM3DPrompt.ui" in resources
    assert "Resources/Icons/SAM3DPrompt.png" in resources
    assert re.search(r"slicerMacroBuildScriptedModule\(.*WITH_GENERIC_TESTS.*\)", text, re.S)
    testing = text[text.index("if(BUILD_TESTING)"):]
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing
    assert "add_subdirectory(Testing)" in testing


def test_in_slicer_tests_are_registered_and_exist():
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text()
    text = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    registered = set(re.findall(r"slicer_add_python_unittest\(\s*SCRIPT\s+(\S+?)\s*\)", text))
    present = {p.name for p in (MODULE / "Testing" / "Python").glob("*.py")}
    assert registered == present and registered


def test_extension_cmake_follows_the_template_and_its_urls_name_repository_files():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL",
                     "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', text), f"EXTENSION_{variable} missing"
    order = ["project(SAM3DPrompt)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
             "add_subdirectory(SAM3DPrompt)", "## NEXT_MODULE",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.index(item) for item in order]
    assert positions == sorted(positions)
    icon = re.search(r'EXTENSION_ICONURL "[^"]*/main/([^"]+)"', text).group(1)
    assert (REPO / icon).is_file(), f"the extension icon {icon} is not in the repository"
    for shot in re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', text).group(1).split():
        path = REPO / shot.split("/main/", 1)[1]
        if not path.is_file() and not TRAINED_MODEL.is_file():
            pytest.skip(f"{path.relative_to(REPO)} is made by Resources/Screenshots/make_workflow_figure.py "
                        "once the small-phantoms model is there")
        assert path.is_file(), f"screenshot {path} missing: run Resources/Screenshots/make_workflow_figure.py"


def test_module_has_slicers_four_classes_and_a_registered_test():
    tree = _module_tree()
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert bases["SAM3DPrompt"] == ["ScriptedLoadableModule"]
    assert bases["SAM3DPromptWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["SAM3DPromptLogic"][0] == "ScriptedLoadableModuleLogic"
    assert bases["SAM3DPromptTest"] == ["ScriptedLoadableModuleTest"]
    decorators = [ast.unparse(d) for d in _class(tree, "SAM3DPromptParameterNode").decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    test_class = _class(tree, "SAM3DPromptTest")
    tests = {f.name for f in test_class.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    run_test = next(f for f in test_class.body if isinstance(f, ast.FunctionDef) and f.name == "runTest")
    called = {n.attr for n in ast.walk(run_test) if isinstance(n, ast.Attribute)}
    assert {"test_SAM3DPrompt_ClickScenario", "test_SAM3DPrompt_Widget"} <= tests <= called


def test_documented_shortcuts_match_the_code():
    shortcuts = SHORTCUTS
    assert set(shortcuts) == {"positive", "negative", "undo", "reset", "nextLesion"}
    guide = (REPO / "docs" / "SLICER_MODULE.md").read_text(encoding="utf-8")
    for key in shortcuts.values():
        assert f"`{key}`" in guide, f"shortcut {key} is not documented in docs/SLICER_MODULE.md"


# Keys Slicer's views bind without a modifier (Slicer 5.6 - 5.10): slice views
# (vtkMRMLSliceIntersectionWidget: b f g r t v V Left Right Up Down [ ] { }), 3D views
# (vtkMRMLCameraWidget: r plus minus Home End Next Prior Insert Clear KP_*, arrows), markups
# (vtkSlicerMarkupsWidget: s snaps a point to the slice, Delete, BackSpace).
VIEW_KEYS = set("bfgrtvs") | {"left", "right", "up", "down", "[", "]", "{", "}", "+", "-", "=",
                               "plus", "minus", "home", "end", "pgdown", "pgup", "ins", "insert",
                               "del", "delete", "backspace", "clear"}
# Bound with any modifier: Shift+v ("V": all slices), the bracket keys.
VIEW_KEYS_ANY_MODIFIER = {"v", "[", "]", "{", "}"}


def test_no_shortcut_takes_a_key_slicers_views_bind():
    shortcuts = SHORTCUTS
    for action, sequence in shortcuts.items():
        *modifiers, key = sequence.lower().split("+") if sequence != "+" else ["+"]
        assert key not in VIEW_KEYS_ANY_MODIFIER, f"{action}: {sequence} is bound by Slicer's views"
        if not modifiers:
            assert key not in VIEW_KEYS, f"{action}: {sequence} is bound by Slicer's views"
            assert not key.startswith("kp_"), f"{action}: {sequence} is a keypad key of the 3D view"
    # The check itself would catch the old keys.
    assert "r" in VIEW_KEYS and "s" in VIEW_KEYS


def _slicer_side_sources() -> list:
    return sorted(p for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)


def test_slicer_side_parses_as_python_3_9_with_allowed_imports_only():
    import sys
    stdlib = set(sys.stdlib_module_names)
    own = {"SAM3DPromptLib", "SAM3DPrompt"}
    for path in _slicer_side_sources():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
        annotated = any(isinstance(n, (ast.AnnAssign, ast.arg)) and getattr(n, "annotation", None)
                        or isinstance(n, ast.FunctionDef) and n.returns for n in ast.walk(tree))
        if annotated:  # `X | None` and `list[int]` in annotations must stay unevaluated on 3.9
            assert "from __future__ import annotations" in source, f"{path.name} needs the future import"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            bad = roots - stdlib - own - ALLOWED_THIRD_PARTY
            assert not bad, f"{path.relative_to(REPO)} imports {bad}: the Slicer side must stay torch-free"


def _python39() -> str:
    """A working Python 3.9 (Slicer 5.x's version): on PATH or installed by pyenv; '' if none."""
    candidates = [shutil.which("python3.9") or ""]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.9*/bin/python3.9"))
    for candidate in candidates:
        if candidate and subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return ""


def test_slicer_side_compiles_with_a_real_python_3_9_when_available():
    python39 = _python39()
    if not python39:
        pytest.skip("no working python3.9 (PATH or pyenv); the ast check above still ran")
    version = subprocess.run([python39, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "(3, 9)"
    code = "import sys, ast; [compile(open(p).read(), p, 'exec') for p in sys.argv[1:]]"
    result = subprocess.run([python39, "-c", code, *map(str, _slicer_side_sources())],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
