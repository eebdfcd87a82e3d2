"""Retargeting with the real bpy: a BVH clip with classic joint names, imported by Blender's own importer,
goes onto a Mixamo-named character with other proportions, an A-pose, more spine bones, fingers and
rolled bones, through `import_mocap(onto=...)` and the headless batch (`--mocap FILE --mocap-onto`).
The target's OpenPose keypoints must follow the clip's: limbs pointing the same way in 3-D, wrist and
ankle trajectories on the image strongly correlated."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="needs the bpy module (pip install 'bpy==4.5.*')")

from bvh_clips import tail_rig, write_bvh  # noqa: E402
from mathutils import Vector  # noqa: E402

from frameprompt_blender.blender import skeleton as S  # noqa: E402
from frameprompt_blender.blender.export import FramePromptUserError  # noqa: E402
from frameprompt_blender.blender.mocap import import_mocap  # noqa: E402
from frameprompt_blender.core.keypoints import (  # noqa: E402
    L_ANKLE,
    L_ELBOW,
    L_HIP,
    L_KNEE,
    L_SHOULDER,
    L_WRIST,
    R_ANKLE,
    R_ELBOW,
    R_HIP,
    R_KNEE,
    R_SHOULDER,
    R_WRIST,
)
from frameprompt_blender.core.openpose_json import read_pose_folder  # noqa: E402

pytestmark = pytest.mark.blender
REPO = Path(__file__).resolve().parents[2]
FRAMES = 16
SEGMENTS = [(R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST),
            (R_HIP, R_KNEE), (R_KNEE, R_ANKLE), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE)]  # fmt: skip
ENDS = (R_WRIST, L_WRIST, R_ANKLE, L_ANKLE)


def _motion(joint: str, f: int) -> tuple[float, float, float]:
    """(Z, X, Y) degrees: a walk with swinging arms, a waving left forearm, a bending spine."""
    s, c = math.sin(2 * math.pi * f / FRAMES), math.cos(2 * math.pi * f / FRAMES)
    table = {"LeftShoulder": (-70 + 20 * s, 30 * c, 0), "RightShoulder": (65 + 15 * c, -35 * s, 0),
             "LeftElbow": (0, 0, 40 + 35 * s), "RightElbow": (0, 0, -30 + 20 * c), "LeftHip": (0, -30 * s, 5),
             "RightHip": (0, 30 * s, -5), "LeftKnee": (0, 25 + 25 * c, 0), "RightKnee": (0, 25 - 25 * c, 0),
             "Chest": (5 * s, 10 * c, 15 * s), "Neck": (0, 10 * s, 20 * c)}  # fmt: skip
    return table.get(joint, (0.0, 0.0, 0.0))


def _hips(f: int) -> list[float]:
    """Walks to its left, bobbing, turning a little."""
    return [3.0 * f, 95.0 + 3 * math.sin(4 * math.pi * f / FRAMES), 1.0 * f, 0.0, 0.0, 2.0 * f]


def write_clip(path: Path) -> Path:
    return write_bvh(path, FRAMES, _hips, _motion, number_format=".4f")


def mixamo_character(scene, name: str = "Hero"):
    """A Mixamo-named armature, 1.2 times the clip's height with longer legs, arms in an A-pose (40 deg),
    three spine bones, two fingers per hand, toes, every bone rolled; built facing +Y in its own space
    and turned round by its object, so it faces -Y like the clip."""
    data = bpy.data.armatures.new(name)
    arm = bpy.data.objects.new(name, data)
    scene.collection.objects.link(arm)
    arm.rotation_euler = (0.0, 0.0, math.pi)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    c, s = math.cos(math.radians(40)), math.sin(math.radians(40))
    rows = [("Hips", None, (0, 0, 1.15), (0, 0, 1.25)), ("Spine", "Hips", (0, 0, 1.25), (0, 0, 1.38)),
            ("Spine1", "Spine", (0, 0, 1.38), (0, 0, 1.5)), ("Spine2", "Spine1", (0, 0, 1.5), (0, 0, 1.62)),
            ("Neck", "Spine2", (0, 0, 1.62), (0, 0.01, 1.72)), ("Head", "Neck", (0, 0.01, 1.72), (0, 0.01, 1.95))]  # fmt: skip
    for side, sx in (("Left", -1.0), ("Right", 1.0)):  # facing +Y: the character's left is -X
        sh = (0.19, 1.58)
        el = (sh[0] + 0.25 * c, sh[1] - 0.25 * s)
        wr = (el[0] + 0.23 * c, el[1] - 0.23 * s)
        tip = (wr[0] + 0.08 * c, wr[1] - 0.08 * s)
        rows += [
            (f"{side}Shoulder", "Spine2", (sx * 0.04, 0, 1.58), (sx * sh[0], 0, sh[1])),
            (f"{side}Arm", f"{side}Shoulder", (sx * sh[0], 0, sh[1]), (sx * el[0], 0, el[1])),
            (f"{side}ForeArm", f"{side}Arm", (sx * el[0], 0, el[1]), (sx * wr[0], 0, wr[1])),
            (f"{side}Hand", f"{side}ForeArm", (sx * wr[0], 0, wr[1]), (sx * tip[0], 0, tip[1])),
            (f"{side}HandIndex1", f"{side}Hand", (sx * tip[0], 0.02, tip[1]),
             (sx * (tip[0] + 0.05 * c), 0.02, tip[1] - 0.05 * s)),
            (f"{side}HandPinky1", f"{side}Hand", (sx * tip[0], -0.02, tip[1]),
             (sx * (tip[0] + 0.05 * c), -0.02, tip[1] - 0.05 * s)),
            (f"{side}UpLeg", "Hips", (sx * 0.1, 0, 1.12), (sx * 0.1, 0, 0.6)),
            (f"{side}Leg", f"{side}UpLeg", (sx * 0.1, 0, 0.6), (sx * 0.1, 0, 0.1)),
            (f"{side}Foot", f"{side}Leg", (sx * 0.1, 0, 0.1), (sx * 0.1, 0.12, 0.03)),
            (f"{side}ToeBase", f"{side}Foot", (sx * 0.1, 0.12, 0.03), (sx * 0.1, 0.2, 0.0)),
        ]  # fmt: skip
    rng = np.random.default_rng(5)
    for bone, parent, head, tail in rows:
        eb = data.edit_bones.new("mixamorig:" + bone)
        eb.head, eb.tail, eb.roll = Vector(head), Vector(tail), float(rng.uniform(-math.pi, math.pi))
        if parent:
            eb.parent = data.edit_bones["mixamorig:" + parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    return arm


def camera(scene):
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.3, -7.0, 1.0), (math.radians(88), 0.0, math.radians(3))
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 160, 128, 100
    scene.render.engine = "BLENDER_WORKBENCH"
    return cam


def world_points(scene, arm, frame: int) -> np.ndarray:
    scene.frame_set(frame)
    pts, _conf, _ = S.SkeletonReader(arm).world_points(bpy.context.evaluated_depsgraph_get())
    return pts


def angle(a, b) -> float:
    return math.degrees(math.acos(np.clip(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))


def pixels(scene, arm, cam) -> np.ndarray:
    """(frames, 18, 3) keypoints through the camera at the scene's render size."""
    return np.stack([S.armature_pose(scene, arm, cam, f, None, None).keypoints for f in range(1, FRAMES + 1)])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def check_follows(scene, source, target, cam) -> dict[str, float]:
    worst = 0.0
    for f in range(1, FRAMES + 1):
        src, tgt = world_points(scene, source, f), world_points(scene, target, f)
        worst = max(worst, *(angle(src[b] - src[a], tgt[b] - tgt[a]) for a, b in SEGMENTS))
    ps, pt = pixels(scene, source, cam), pixels(scene, target, cam)
    assert (pt[:, 2:14, 2] > 0).all()  # every limb joint on the picture, every frame
    corr = min(correlation(ps[:, k, axis], pt[:, k, axis]) for k in ENDS for axis in (0, 1))
    return {"worst_limb_angle": worst, "min_end_correlation": corr}


def test_classic_bvh_onto_a_mixamo_character(tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    cam = camera(scene)
    bvh = write_clip(tmp_path / "walk.bvh")
    source = import_mocap(bvh, scale=0.01)
    hero = mixamo_character(scene)
    n_objects = len(bpy.data.objects)
    assert import_mocap(bvh, onto=hero, scale=0.01) == hero
    assert len(bpy.data.objects) == n_objects  # the clip's own armature is gone again
    assert (scene.frame_start, scene.frame_end) == (1, FRAMES)
    assert hero.animation_data.action.name == "walk (Hero)"
    measured = check_follows(scene, source, hero, cam)
    print("retarget:", measured)
    assert measured["worst_limb_angle"] < 2.0, measured
    assert measured["min_end_correlation"] > 0.95, measured
    # the hips bob with the clip, scaled by leg length (the hero's hips stand 1.15 m up, the clip's 0.95 m)
    heights_s = [world_points(scene, source, f)[R_HIP][2] for f in range(1, FRAMES + 1)]
    heights_t = [world_points(scene, hero, f)[R_HIP][2] for f in range(1, FRAMES + 1)]
    np.testing.assert_allclose(np.ptp(heights_t), np.ptp(heights_s) * 1.15 / 0.95, rtol=0.05)
    # it stays standing on its floor: its feet never sink much below where they rest
    lowest = min(world_points(scene, hero, f)[[R_ANKLE, L_ANKLE], 2].min() for f in range(1, FRAMES + 1))
    assert lowest > 0.1 - 0.05 * 1.15


def test_a_skeleton_that_is_not_humanoid_is_refused_by_name(tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    rig = tail_rig(scene)
    n_objects = len(bpy.data.objects)
    with pytest.raises(FramePromptUserError, match=r"walk\.bvh cannot go onto armature 'Tail': armature 'Tail' "
                       r"does not read as a humanoid \(no bone for RShoulder"):  # fmt: skip
        import_mocap(write_clip(tmp_path / "walk.bvh"), onto=rig, scale=0.01)
    assert len(bpy.data.objects) == n_objects


def test_batch_mocap_onto_a_different_armature(tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    cam = camera(scene)
    mixamo_character(scene)
    blend = tmp_path / "hero.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bvh = write_clip(tmp_path / "walk.bvh")
    out = tmp_path / "job"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "frameprompt_blender.batch", str(blend), "--out", str(out), "--export-only",
         "--mocap", str(bvh), "--mocap-onto", "--armature", "Hero", "--mocap-scale", "0.01"],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    poses = read_pose_folder(out / "pose")
    assert len(poses) == FRAMES
    # the same as retargeting here: the batch's keypoints follow the clip as seen through the camera
    source = import_mocap(bvh, scale=0.01)
    ps = pixels(scene, source, cam)
    pt = np.stack([p.keypoints for p in poses])
    assert (pt[:, 2:14, 2] > 0).all()
    assert min(correlation(ps[:, k, axis], pt[:, k, axis]) for k in ENDS for axis in (0, 1)) > 0.95
