"""The built extension zip passes Blender's own `blender --command extension validate`.

No Blender binary is needed: the bpy module bundles the same command (the `bl_pkg` add-on's
`bl_extension_cli.cli_extension_handler`, which a Blender binary's `--command extension` calls, with
Blender's list of valid tags), run here in a child process of the venv's Python."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# `import bpy` puts Blender's scripts/addons_core on sys.path; os._exit skips bpy's teardown, which
# has nothing to clean up here and is slow.
VALIDATE = """
import os, sys
import bpy  # noqa: F401
from bl_pkg.bl_extension_cli import cli_extension_handler
rc = cli_extension_handler(["validate", sys.argv[1]])
sys.stdout.flush(); sys.stderr.flush()
os._exit(rc or 0)
"""

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module")


def blender_validate(archive: Path) -> subprocess.CompletedProcess[str]:
    """`blender --command extension validate ARCHIVE`, through the bpy module."""
    return subprocess.run(
        [sys.executable, "-c", VALIDATE, str(archive)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def built_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extension")
    # downloads the pinned pyzmq wheels into wheels/ the first time, then reuses them
    build = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_extension.py"), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0 and not (REPO / "wheels").is_dir():
        pytest.skip(f"the pyzmq wheels could not be downloaded: {build.stderr[-400:]}")
    assert build.returncode == 0, build.stdout + build.stderr
    with (REPO / "blender_manifest.toml").open("rb") as fh:
        manifest = tomllib.load(fh)
    (archive,) = out.glob(f"{manifest['id']}-{manifest['version']}.zip")
    return archive


def test_built_zip_passes_blenders_extension_validate(built_zip: Path) -> None:
    result = blender_validate(built_zip)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'Success parsing TOML in "{built_zip}"' in result.stdout


def test_the_validator_rejects_a_tag_outside_blenders_list(built_zip: Path, tmp_path: Path) -> None:
    # Blender's command checks tags against its own list, which the stand-alone blender_ext.py skips:
    # this shows the check above ran with it.
    bad = tmp_path / built_zip.name
    with zipfile.ZipFile(built_zip) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "blender_manifest.toml":
                data = data.replace(b"tags = [", b'tags = ["Generative AI", ')
            dst.writestr(name, data)
    result = blender_validate(bad)
    assert result.returncode != 0
    assert 'invalid tag "Generative AI"' in result.stdout + result.stderr
