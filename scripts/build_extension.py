#!/usr/bin/env python3
"""Build the installable Blender extension zip.

    python scripts/build_extension.py [--output-dir dist] [--no-download] [--split-platforms]

Steps:
1. download the unmodified pyzmq wheels named in ``blender_manifest.toml`` into ``wheels/`` with
   ``pip download --only-binary=:all: --no-deps`` (cp311 for Blender 4.2-5.0, cp312-abi3 for 5.1+ on
   Linux x86_64/aarch64, macOS universal2 and Windows amd64); wheels already there are kept;
2. stage ``build/extension/frameprompt_blender/`` = the add-on package + the manifest (copied next to
   its ``__init__.py``) + ``wheels/``; the backend and the tests are never copied;
3. run Blender's extension CLI (``blender_ext.py build``, shipped inside the bpy wheel, or
   ``blender --command extension build`` when a Blender binary is on PATH), then ``validate``.

Prints the zip path on the last line.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "blender_manifest.toml"
PACKAGE = ROOT / "frameprompt_blender"
WHEELS = ROOT / "wheels"

# (python version, pip platform tag) pairs whose wheels the manifest lists.
DOWNLOADS: list[tuple[str, str]] = [
    (py, plat)
    for py in ("3.11", "3.13")
    for plat in ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64", "macosx_11_0_arm64", "win_amd64")
]
# macosx_11_0_arm64 resolves to the universal2 wheel, which also serves macOS x86_64.


def read_manifest(path: Path = MANIFEST) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def manifest_wheels(manifest: dict) -> list[str]:
    """File names of the wheels the manifest lists (``./wheels/NAME.whl`` -> ``NAME.whl``)."""
    return [Path(w).name for w in manifest.get("wheels", [])]


def pinned_versions(manifest: dict) -> dict[str, str]:
    """Distribution name -> version, parsed from the wheel file names."""
    pins: dict[str, str] = {}
    for name in manifest_wheels(manifest):
        dist, version = name.split("-")[:2]
        pins[dist] = version
    return pins


def download_wheels(manifest: dict, dest: Path = WHEELS) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    wanted = manifest_wheels(manifest)
    if all((dest / w).is_file() for w in wanted):
        print(f"build: all {len(wanted)} wheels already in {dest}")
        return
    for dist, version in pinned_versions(manifest).items():
        for py, plat in DOWNLOADS:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"{dist}=={version}",
                "--only-binary=:all:",
                "--no-deps",
                "--python-version",
                py,
                "--platform",
                plat,
                "--dest",
                str(dest),
                "-q",
            ]
            print("build:", " ".join(cmd[2:]))
            subprocess.run(cmd, check=True)
    missing = [w for w in wanted if not (dest / w).is_file()]
    if missing:
        raise SystemExit(
            f"build: pip did not produce the wheels the manifest lists: {missing}\n"
            f"  fix: update the 'wheels' list in {MANIFEST.name} to the names in {dest}"
        )


def stage(manifest: dict, stage_root: Path) -> Path:
    """Copy the add-on, the manifest and the listed wheels into stage_root/<id>/."""
    src = stage_root / manifest["id"]
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    shutil.copy2(MANIFEST, src / "blender_manifest.toml")
    if manifest_wheels(manifest):
        (src / "wheels").mkdir()
        for name in manifest_wheels(manifest):
            shutil.copy2(WHEELS / name, src / "wheels" / name)
    return src


def find_blender_ext() -> list[str]:
    """Command prefix for Blender's extension CLI."""
    spec = importlib.util.find_spec("bpy")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            found = sorted(Path(loc).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
            if found:
                return [sys.executable, str(found[-1])]
    blender = shutil.which("blender")
    if blender:
        return [blender, "--factory-startup", "--command", "extension"]
    raise SystemExit(
        "build: Blender's extension CLI not found\n"
        "  fix: install bpy (pip install 'bpy==4.5.*') or put a 'blender' binary on PATH"
    )


def build(output_dir: Path, *, download: bool = True, split_platforms: bool = False) -> list[Path]:
    manifest = read_manifest()
    if download:
        download_wheels(manifest)
    src = stage(manifest, ROOT / "build" / "extension")
    output_dir.mkdir(parents=True, exist_ok=True)
    cli = find_blender_ext()
    cmd = [*cli, "build", "--source-dir", str(src), "--output-dir", str(output_dir)]
    if split_platforms:
        cmd.append("--split-platforms")
    subprocess.run(cmd, check=True)
    stem = f"{manifest['id']}-{manifest['version']}"
    zips = sorted(output_dir.glob(f"{stem}*.zip"))
    if not zips:
        raise SystemExit(f"build: no {stem}*.zip in {output_dir}")
    for z in zips:
        subprocess.run([*cli, "validate", str(z)], check=True)
    return zips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--no-download", action="store_true", help="use the wheels already in wheels/")
    parser.add_argument("--split-platforms", action="store_true", help="one zip per platform")
    args = parser.parse_args(argv)
    zips = build(
        args.output_dir.resolve(), download=not args.no_download, split_platforms=args.split_platforms
    )
    for z in zips:
        print(z)
    return 0


if __name__ == "__main__":
    sys.exit(main())
