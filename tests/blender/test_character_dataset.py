"""`render_character_dataset` with the real bpy: a small Mixamo-named character (armature + skinned mesh)
with one action of its own, in a user's scene, rendered at 32x32 with 4 frames per clip: its own action
and built-in motions retargeted onto it. The folders must pass the backend's data-set validator, the
skeletons must be the character's, and the user's scene must be left as it was."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

bpy = pytest.importorskip("bpy", reason="needs the bpy module (pip install 'bpy==4.5.*')")

from test_mocap_retarget import mixamo_character  # noqa: E402

from frameprompt_blender.blender.export import FramePromptUserError  # noqa: E402
from frameprompt_blender.blender.render_dataset import render_character_dataset  # noqa: E402
from frameprompt_blender.core.openpose_json import read_pose_folder  # noqa: E402

pytestmark = pytest.mark.blender
REPO = Path(__file__).resolve().parents[2]


def skin(scene, arm):
    """One box per bone, weighted fully to it, under an Armature modifier."""
    import bmesh
    from mathutils import Matrix

    mesh = bpy.data.meshes.new("HeroBody")
    body = bpy.data.objects.new("HeroBody", mesh)
    scene.collection.objects.link(body)
    bm = bmesh.new()
    deform = bm.verts.layers.deform.verify()
    for gi, bone in enumerate(arm.data.bones):
        geom = bmesh.ops.create_cube(bm, size=1.0)
        xf = Matrix(bone.matrix_local) @ Matrix.Translation((0, bone.length / 2, 0))
        xf = xf @ Matrix.Diagonal((0.08, bone.length, 0.08, 1.0))
        bmesh.ops.transform(bm, matrix=xf, verts=geom["verts"])
        for v in geom["verts"]:
            v[deform][gi] = 1.0
        body.vertex_groups.new(name=bone.name)
    bm.to_mesh(mesh)
    bm.free()
    body.modifiers.new("Armature", "ARMATURE").object = arm
    body.parent = arm
    return body


def wave(arm, frames: int = 8):
    """The character's own action: the right arm raised and lowered."""
    pb = arm.pose.bones["mixamorig:RightArm"]
    pb.rotation_mode = "XYZ"
    for f in range(1, frames + 1):
        pb.rotation_euler = (0.0, 0.0, math.radians(10 * f))
        pb.keyframe_insert("rotation_euler", frame=f)
    arm.animation_data.action.name = "HeroWave"
    return arm.animation_data.action


def user_scene(with_camera: bool):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    arm = mixamo_character(scene)
    skin(scene, arm)
    action = wave(arm)
    if with_camera:
        cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
        scene.collection.objects.link(cam)
        cam.location, cam.rotation_euler = (0.0, -4.8, 1.0), (math.radians(90), 0.0, 0.0)
        scene.camera = cam
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y = 320, 240
    scene.frame_set(3)
    return scene, arm, action


def validate_with_the_backend(folder: Path) -> None:
    """The validator `frameprompt finetune` runs (it needs torch, so in its own process)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "backend"), str(REPO)]),
        "OMP_NUM_THREADS": "1",
    }
    probe = subprocess.run([sys.executable, "-c", "import torch, frameprompt"], env=env, capture_output=True)
    if probe.returncode:
        pytest.skip("no torch + frameprompt in this Python to run the backend's validator")
    code = (
        "import sys; from frameprompt.training.data import validate_dataset; "
        f"r = validate_dataset({str(folder)!r}); print(r.summary() if hasattr(r, 'summary') else r); "
        "sys.exit(0 if r.ok else 1)"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def test_own_action_and_retargeted_builtin_motions_through_the_scene_camera(tmp_path):
    scene, arm, action = user_scene(with_camera=True)
    objects, actions = set(bpy.data.objects), set(bpy.data.actions)
    calls = []
    out = render_character_dataset(arm, tmp_path / "data", clips=3, frames=4, size=32, seed=1,
                                   motions=("walk", "wave"), engine="workbench",
                                   progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert out == tmp_path / "data" and calls == [(1, 3), (2, 3), (3, 3)]
    clips = sorted(p for p in out.iterdir())
    assert [c.name for c in clips] == ["clip_00000", "clip_00001", "clip_00002"]
    metas = [json.loads((c / "meta.json").read_text()) for c in clips]
    assert [m["source"] for m in metas] == [
        "unsaved:HeroWave",
        "builtin:walk:retargeted",
        "builtin:wave:retargeted",
    ]
    for clip, meta in zip(clips, metas, strict=True):
        assert (meta["width"], meta["height"], meta["num_frames"]) == (32, 32, 4) and meta[
            "armature"
        ] == "Hero"
        poses = read_pose_folder(clip / "pose")
        assert len(poses) == 4 and all(p.keypoints[2:14, 2].all() for p in poses)  # the body in view
        ref = np.asarray(PIL.Image.open(clip / "reference.png"))
        assert ref.shape == (32, 32, 3) and ref.std() > 3  # the character, not an empty frame
        assert len(list((clip / "target").iterdir())) == 4 and len(list((clip / "skeleton").iterdir())) == 4
    # the retargeted walk moves the character's legs: knees and ankles change place on the picture
    walk = np.stack([p.keypoints[8:14, :2] for p in read_pose_folder(clips[1] / "pose")])
    print("walk: largest leg-joint move", np.abs(walk - walk[0]).max(), "px")
    assert np.abs(walk - walk[0]).max() > 1.0
    validate_with_the_backend(out)

    # the user's scene as it was: the action, the frame, the render size, nothing left behind
    assert arm.animation_data.action == action and scene.frame_current == 3
    assert (scene.render.resolution_x, scene.render.resolution_y) == (320, 240)
    assert set(bpy.data.objects) == objects and set(bpy.data.actions) == actions

    # reproducible and resumable: a clip removed is rendered again, byte for byte
    before = (clips[1] / "pose" / "0002_keypoints.json").read_bytes()
    import shutil

    shutil.rmtree(clips[1])
    render_character_dataset(arm, out, clips=3, frames=4, size=32, seed=1, motions=("walk", "wave"),
                             engine="workbench")  # fmt: skip
    assert (clips[1] / "pose" / "0002_keypoints.json").read_bytes() == before


def test_without_a_camera_one_is_framed_on_the_character(tmp_path):
    scene, arm, _ = user_scene(with_camera=False)
    objects = set(bpy.data.objects)
    out = render_character_dataset(arm, tmp_path / "data", clips=1, frames=4, size=(32, 48), seed=0,
                                   include_builtin_motions=False, engine="workbench")  # fmt: skip
    poses = read_pose_folder(out / "clip_00000" / "pose")
    assert all(p.keypoints[2:14, 2].all() for p in poses)
    xs, ys = poses[0].keypoints[2:14, 0], poses[0].keypoints[2:14, 1]
    assert 0.4 * 48 < ys.max() - ys.min() < 48 and xs.max() - xs.min() < 32  # framed, filling the height
    assert scene.camera is None and set(bpy.data.objects) == objects


def test_what_cannot_work_is_named(tmp_path):
    scene, arm, action = user_scene(with_camera=True)
    with pytest.raises(FramePromptUserError, match="multiples of 16"):
        render_character_dataset(arm, tmp_path / "a", clips=1, frames=4, size=30)
    with pytest.raises(FramePromptUserError, match=r"'Hero' has no action of at least 9 frames"):
        render_character_dataset(
            arm, tmp_path / "b", clips=1, frames=8, size=32, include_builtin_motions=False
        )
    cam = scene.camera
    with pytest.raises(FramePromptUserError, match="'Cam' is not an armature"):
        render_character_dataset(cam, tmp_path / "c", clips=1, frames=4, size=32)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert action is not None
