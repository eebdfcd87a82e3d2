"""Procedural character variety (frameprompt_blender.blender.characters) and the held-out split."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _characters():
    # the module imports bpy only inside the Blender functions; importing the package needs no bpy
    spec = importlib.util.spec_from_file_location(
        "fp_characters", REPO / "frameprompt_blender" / "blender" / "characters.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_split_is_fixed_and_disjoint():
    c = _characters()
    train, test = c.pool_ids("train", 300), c.pool_ids("test", 50)
    assert not set(train) & set(test)
    assert all(not c.is_held_out(i) for i in train) and all(c.is_held_out(i) for i in test)
    assert test[:3] == [0, 10, 20] and train[:3] == [1, 2, 3]
    assert c.pool_ids("train", 5) == train[:5]  # a bigger set extends a smaller one
    with pytest.raises(ValueError):
        c.pool_ids("val", 3)


def test_params_are_deterministic_and_varied():
    c = _characters()
    assert c.character_params(7) == c.character_params(7)
    params = [c.character_params(i) for i in range(60)]
    assert len({p["pattern"] for p in params}) == len(c.PATTERNS)
    assert len({p["hair"] for p in params}) == len(c.HAIR_STYLES)
    assert len({round(p["height"], 3) for p in params}) > 50
    json.dumps(params)  # serialisable


def _rest_bones(monkeypatch):
    """demo_scene.BONES without bpy: stub the Blender modules its import names (no bpy in this process)."""
    import types

    for name in ("bpy", "bmesh", "mathutils"):
        stub = types.ModuleType(name)
        stub.Matrix = stub.Quaternion = stub.Vector = object
        monkeypatch.setitem(sys.modules, name, stub)
    spec = importlib.util.spec_from_file_location(
        "fp_demo_scene_stubbed", REPO / "frameprompt_blender" / "blender" / "demo_scene.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.BONES


def test_bones_keep_the_rig_and_change_the_proportions(monkeypatch):
    c = _characters()
    BONES = _rest_bones(monkeypatch)
    tall = c.character_bones({**c.character_params(1), "height": 1.1, "legs": 1.15}, BONES)
    short = c.character_bones({**c.character_params(1), "height": 0.85, "legs": 0.85}, BONES)
    assert tall.keys() == BONES.keys()
    for name, (head, _tail, parent, connected) in tall.items():
        assert (parent, connected) == BONES[name][2:]
        if connected:
            assert tall[parent][1] == head
    assert tall["spine.006"][1][2] > short["spine.006"][1][2]  # top of the head
    assert min(tall["foot.L"][1][2], tall["foot.L"][0][2]) < 0.1  # feet stay near the ground


def test_body_parts_use_valid_bones_and_materials():
    c = _characters()
    for i in range(30):
        params = c.character_params(i)
        for part in c.body_parts(params):
            assert part["material"] in range(6)
            assert part["kind"] in ("tube", "sphere", "cone", "box")
            assert part["bone"].startswith(("spine", "upper_arm", "forearm", "hand", "thigh", "shin", "foot"))


@pytest.mark.blender
@pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs bpy (pip install 'bpy==4.5.*')")
def test_render_with_characters(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO)]),
    }
    out = tmp_path / "data"
    command = [
        sys.executable,
        "-m",
        "frameprompt.cli",
        "dataset",
        "render",
        "--out",
        str(out),
        "--clips",
        "2",
    ]
    command += [
        "--frames",
        "4",
        "--size",
        "32x32",
        "--no-progress",
        "--characters",
        "test",
        "--num-characters",
        "2",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metas = [json.loads((out / f"clip_0000{i}" / "meta.json").read_text()) for i in range(2)]
    assert all(m["character"] % 10 == 0 for m in metas)  # the held-out pool
    assert all(f":char{m['character']}" in m["source"] for m in metas)
