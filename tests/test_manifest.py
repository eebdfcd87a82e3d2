"""blender_manifest.toml against the extension rules, and the built zip (when the wheels are present)."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "blender_manifest.toml"
PACKAGE = REPO / "frameprompt_blender"

REQUIRED = (
    "schema_version",
    "id",
    "version",
    "name",
    "tagline",
    "maintainer",
    "type",
    "blender_version_min",
    "license",
)
PLATFORMS = {"windows-x64", "windows-arm64", "macos-x64", "macos-arm64", "linux-x64", "linux-arm64"}
PERMISSIONS = {"files", "network", "clipboard", "camera", "microphone"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    with MANIFEST.open("rb") as fh:
        return tomllib.load(fh)


def _walk(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        yield path, value
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def test_required_fields(manifest):
    for key in REQUIRED:
        assert key in manifest, f"missing {key}"
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["type"] == "add-on"
    assert re.fullmatch(r"[a-z][a-z0-9_]*", manifest["id"])
    assert manifest["id"] == PACKAGE.name, "the id must match the source folder (module name after install)"
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?", manifest["version"]), "version is not semver"
    assert tuple(int(x) for x in manifest["blender_version_min"].split(".")) >= (4, 2, 0)


def test_no_empty_values(manifest):
    for path, value in _walk(manifest):
        assert value not in ("", [], {}), f"{path} is empty: omit the key instead"


def test_tagline_and_permissions(manifest):
    tagline = manifest["tagline"]
    assert len(tagline) <= 64
    assert tagline[-1] not in ".!?,;:", "the tagline must not end with punctuation"
    for lic in manifest["license"]:
        assert lic.startswith("SPDX:")
    assert set(manifest.get("platforms", [])) <= PLATFORMS
    perms = manifest["permissions"]
    assert {"network", "files"} <= set(perms)
    for name, reason in perms.items():
        assert name in PERMISSIONS
        assert 0 < len(reason) <= 64 and not reason.endswith("."), f"permission {name}: {reason!r}"


def test_wheels_cover_python_311_and_313_on_every_platform(manifest):
    wheels = manifest["wheels"]
    for w in wheels:
        assert w.startswith("./wheels/") and "\\" not in w and w.endswith(".whl")
    names = [Path(w).name for w in wheels]
    tags = {
        "linux-x64": "x86_64",
        "linux-arm64": "aarch64",
        "macos-arm64": "universal2",
        "macos-x64": "universal2",
        "windows-x64": "win_amd64",
    }
    for platform, tag in tags.items():
        assert any("-cp311-cp311-" in n and tag in n for n in names), f"no cp311 wheel for {platform}"
        # Blender 5.1+ runs Python 3.13: a cp313 or an abi3 (cp3x-abi3, x <= 13) wheel serves it.
        assert any(("-cp313-" in n or "-abi3-" in n) and tag in n for n in names), (
            f"no 3.13 wheel for {platform}"
        )


def test_preferences_use_the_package_name_and_imports_are_relative():
    """Extension rules: AddonPreferences.bl_idname from __package__, relative imports, no bl_info."""
    prefs = (PACKAGE / "blender" / "preferences.py").read_text()
    assert "bl_idname = ADDON_PACKAGE" in prefs and "__package__" in prefs
    for py in PACKAGE.rglob("*.py"):
        tree = ast.parse(py.read_text(), str(py))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("frameprompt_blender"), (
                    f"{py.relative_to(REPO)}:{node.lineno}: absolute import of {node.module} breaks when "
                    "installed as an extension (bl_ext.<repo>.frameprompt_blender); use a relative import"
                )
                assert not node.module.startswith("frameprompt."), f"{py}: imports the backend"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(
                        ("frameprompt_blender", "frameprompt.", "torch", "diffusers")
                    ), f"{py.relative_to(REPO)}:{node.lineno}: import {alias.name}"
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "bl_info" for t in node.targets):
                pytest.fail(f"{py}: bl_info is not allowed in an extension")


def _blender_ext() -> list[str] | None:
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return [sys.executable, str(found[-1])]
    return None


def test_built_zip_is_valid(manifest, tmp_path):
    wheels = [REPO / "wheels" / Path(w).name for w in manifest["wheels"]]
    missing = [w.name for w in wheels if not w.is_file()]
    if missing:
        pytest.skip(f"wheels not downloaded (run `python scripts/build_extension.py` once): {missing[:2]}")
    if _blender_ext() is None and shutil.which("blender") is None:
        pytest.skip("needs bpy or a blender binary for Blender's extension CLI")
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "build_extension.py"),
            "--no-download",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    zips = list(tmp_path.glob(f"{manifest['id']}-{manifest['version']}.zip"))
    assert len(zips) == 1
    with zipfile.ZipFile(zips[0]) as zf:
        names = set(zf.namelist())
        assert "blender_manifest.toml" in names and "__init__.py" in names, (
            "manifest and __init__.py at the root"
        )
        for w in manifest["wheels"]:
            assert w.removeprefix("./") in names, f"{w} missing from the zip"
        assert not any(n.startswith(("backend/", "tests/", "frameprompt/")) for n in names)
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert "blender/panel.py" in names and "core/__init__.py" in names
        with zf.open("blender_manifest.toml") as fh:
            assert tomllib.load(fh) == manifest
    cli = _blender_ext()
    if cli:
        v = subprocess.run([*cli, "validate", str(zips[0])], capture_output=True, text=True, timeout=60)
        assert v.returncode == 0 and "Success" in v.stdout, v.stdout + v.stderr
    blender = shutil.which("blender")
    if blender:
        v = subprocess.run(
            [blender, "--factory-startup", "--command", "extension", "validate", str(zips[0])],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert v.returncode == 0, v.stdout + v.stderr
