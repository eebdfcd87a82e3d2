"""The add-on never imports torch, diffusers, transformers or the backend package (`frameprompt`).

Runs in a fresh interpreter: imports every add-on module, enables the add-on, draws the panel and
exports a job folder of the demo scene; then inspects sys.modules.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "diffusers", "transformers", "peft", "accelerate", "frameprompt")

SCRIPT = r"""
import importlib, importlib.util, json, pkgutil, sys, tempfile
sys.path.insert(0, @REPO@)
forbidden = @FORBIDDEN@

def leaked():
    return sorted(m for m in sys.modules if m.split(".")[0] in forbidden)

import frameprompt_blender, frameprompt_blender.core
for info in pkgutil.walk_packages(frameprompt_blender.core.__path__, "frameprompt_blender.core."):
    importlib.import_module(info.name)
report = {"core_bpy": "bpy" in sys.modules, "core_zmq": "zmq" in sys.modules, "after_core": leaked()}

import bpy, addon_utils
from unittest import mock
bpy.ops.wm.read_homefile(use_empty=True)
addon_utils.enable("frameprompt_blender", default_set=True, handle_error=None)
try:
    import frameprompt_blender.blender as fb
    for info in pkgutil.walk_packages(fb.__path__, "frameprompt_blender.blender."):
        importlib.import_module(info.name)
    importlib.import_module("frameprompt_blender.batch")
    bpy.types.FRAMEPROMPT_PT_animate.draw(mock.MagicMock(), bpy.context)
    report["exported"] = False
    if importlib.util.find_spec("frameprompt_blender.blender.demo_scene"):
        from frameprompt_blender.blender.demo_scene import build_demo_scene
        from frameprompt_blender.blender.batch import run_batch
        build_demo_scene()
        sc = bpy.context.scene
        sc.render.engine = "BLENDER_WORKBENCH"
        run_batch(sc, out_dir=tempfile.mkdtemp(), num_frames=4, width=32, height=32, export_only=True, log=None)
        report["exported"] = True
    report["after_addon"] = leaked()
finally:
    addon_utils.disable("frameprompt_blender", default_set=True)
print("RESULT:" + json.dumps(report))
"""


def test_core_and_addon_import_no_backend_or_torch():
    if importlib.util.find_spec("bpy") is None:
        pytest.skip("needs the bpy module")
    code = SCRIPT.replace("@REPO@", repr(str(REPO))).replace("@FORBIDDEN@", repr(FORBIDDEN))
    with tempfile.TemporaryDirectory() as user:
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=150,
            cwd=user,
            env={"PATH": "/usr/bin:/bin", "HOME": user, "BLENDER_USER_RESOURCES": user},
        )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT:"))
    report = json.loads(line[len("RESULT:") :])
    assert report["core_bpy"] is False, "frameprompt_blender.core imported bpy"
    assert report["after_core"] == []
    assert report["after_addon"] == [], f"the add-on imported {report['after_addon']}"
