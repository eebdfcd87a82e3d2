"""Motion capture as a user brings it: a BVH file imported with Blender's own importer, saved, then
exported headless (`python -m frameprompt_blender.batch SCENE.blend --out DIR --export-only`, no size
flags). Every keypoint must land within 1 px of Blender's own projection of its bone's head
(`world_to_camera_view`) at the scene's render size, on every frame of the scene's range."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="needs the bpy module (pip install 'bpy==4.5.*')")

from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from bvh_clips import joint_names, tail_rig, write_bvh  # noqa: E402

from frameprompt_blender.blender import skeleton as S  # noqa: E402
from frameprompt_blender.blender.batch import run_batch  # noqa: E402
from frameprompt_blender.blender.export import FramePromptUserError  # noqa: E402
from frameprompt_blender.core.bone_maps import GUESSED as B_GUESSED  # noqa: E402
from frameprompt_blender.core.keypoints import KEYPOINT_NAMES, NECK  # noqa: E402
from frameprompt_blender.core.openpose_json import read_pose_folder  # noqa: E402

pytestmark = pytest.mark.blender
REPO = Path(__file__).resolve().parents[2]

# classic -> Mixamo: the collar is Mixamo's Shoulder, the shoulder its Arm
MIXAMO = {"Collar": "Shoulder", "Shoulder": "Arm", "Elbow": "ForeArm", "Wrist": "Hand", "Hip": "UpLeg", "Knee": "Leg",
          "Ankle": "Foot", "Chest": "Spine"}  # fmt: skip
# OpenPose keypoint -> the classic joint at its place
JOINT_OF = {f"{s}{p}": f"{side}{p}" for s, side in (("R", "Right"), ("L", "Left"))
            for p in ("Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")}  # fmt: skip
FRAMES = 5


def naming(style: str) -> dict[str, str]:
    """classic joint name -> the name in the file."""
    names = joint_names()
    if style == "classic":
        return {n: n for n in names}
    if style == "mixamo":
        side = {n: next((p for p in ("Left", "Right") if n.startswith(p)), "") for n in names}
        return {n: "mixamorig:" + side[n] + MIXAMO.get(n[len(side[n]) :], n[len(side[n]) :]) for n in names}
    return {n: f"bone_{i:03d}" for i, n in enumerate(names)}  # nothing to go on but the hierarchy


def _rotation(joint: str, frame: int) -> tuple[float, float, float]:
    """(Z, X, Y) degrees: arms lowered, elbows and knees bending, the head nodding, over the frames."""
    f = frame
    table = {"LeftShoulder": (-35 - 6 * f, 0, 0), "RightShoulder": (40 + 5 * f, 0, 0),
             "LeftElbow": (0, 0, 25 + 8 * f), "RightElbow": (0, 0, -15 - 6 * f), "LeftHip": (0, -10 * f, 0),
             "LeftKnee": (0, 12 * f, 0), "RightHip": (0, 8 * f, 0), "RightKnee": (0, 5 * f, 0),
             "Neck": (0, 6 * f, 0), "Chest": (3 * f, 0, 0)}  # fmt: skip
    return table.get(joint, (0.0, 0.0, 0.0))


def write_clip(path: Path, names: dict[str, str]) -> Path:
    """The test clip: it walks to the character's left and turns a little."""
    return write_bvh(path, FRAMES, lambda f: [4.0 * f, 95.0, 2.0 * f, 0.0, 0.0, 7.0 * f], _rotation, names)


def stage(tmp_path: Path, style: str) -> tuple[Path, dict[str, str]]:
    """A user's scene: an empty file, the BVH imported with Blender's importer (in metres), the scene's
    range set to the clip, a camera in front, a render size with a percentage; saved."""
    names = naming(style)
    bpy.ops.wm.read_homefile(use_empty=True)
    bvh = write_clip(tmp_path / f"{style}.bvh", names)
    assert bpy.ops.import_anim.bvh(filepath=str(bvh), global_scale=0.01) == {"FINISHED"}
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, FRAMES  # the clip's range (the importer only ever extends it)
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.3, -5.5, 1.0), (math.radians(88), 0.0, math.radians(3))
    scene.camera = cam
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = (
        300,
        250,
        50,
    )  # -> 150 x 125, not multiples of 16
    r.engine = "BLENDER_WORKBENCH"
    path = tmp_path / f"{style}.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path, names


def batch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "frameprompt_blender.batch", *args], capture_output=True,
                          text=True, timeout=240, cwd=REPO, env=env)  # fmt: skip


@pytest.mark.parametrize("style, preset", [("classic", "mocap_classic"), ("mixamo", "mixamo"),
                                           ("meaningless", "hierarchy")])  # fmt: skip
def test_imported_bvh_exports_at_the_scene_resolution_onto_the_bone_heads(tmp_path, style, preset):
    blend, names = stage(tmp_path, style)
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    assert S.resolve_bone_map(arm).preset == preset, S.bone_map_report_text(arm)
    scene = bpy.context.scene
    assert (scene.frame_start, scene.frame_end) == (1, FRAMES)

    out = tmp_path / "job"
    run = batch(str(blend), "--out", str(out), "--export-only")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "size 150x125, the scene's render resolution" in run.stdout

    poses = read_pose_folder(out / "pose")
    assert len(poses) == FRAMES  # the scene's frame range
    w, h = 150, 125
    for i, pose in enumerate(poses):
        assert (pose.canvas_width, pose.canvas_height) == (w, h)
        scene.frame_set(scene.frame_start + i)
        for kp, joint in JOINT_OF.items():
            k = KEYPOINT_NAMES.index(kp)
            head = arm.matrix_world @ arm.pose.bones[names[joint]].head
            ndc = world_to_camera_view(scene, scene.camera, head)
            expected = np.array([ndc.x * w, (1 - ndc.y) * h])
            assert pose.keypoints[k, 2] > 0, (i, kp)
            assert np.abs(pose.keypoints[k, :2] - expected).max() <= 1.0, (i, kp, pose.keypoints[k], expected)
        np.testing.assert_allclose(pose.keypoints[NECK, :2], (pose.keypoints[2, :2] + pose.keypoints[5, :2]) / 2,
                                   atol=1e-3)  # fmt: skip
        assert pose.keypoints[0, 2] > 0  # the nose, estimated on the head bone, faces the camera
    # the motion is really there: the left wrist moves across the frames
    assert np.abs(poses[0].keypoints[7, :2] - poses[-1].keypoints[7, :2]).max() > 3
    doc = json.loads((out / "pose" / "0000_keypoints.json").read_text())
    assert (doc["canvas_width"], doc["canvas_height"]) == (w, h)
    ref = bpy.data.images.load(str(out / "reference.png"))
    assert tuple(ref.size) == (w, h)


def test_explicit_size_flags_still_win(tmp_path):
    blend, _ = stage(tmp_path, "classic")
    out = tmp_path / "job"
    run = batch(
        str(blend), "--out", str(out), "--export-only", "--width", "64", "--height", "48", "--frames", "2"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    poses = read_pose_folder(out / "pose")
    assert len(poses) == 2 and (poses[0].canvas_width, poses[0].canvas_height) == (64, 48)


def test_output_size_rules(tmp_path):
    from frameprompt_blender.blender.batch import _output_size

    stage(tmp_path, "classic")
    scene = bpy.context.scene
    quiet = lambda *_: None  # noqa: E731
    assert _output_size(scene, None, None, True, quiet) == (150, 125, True)
    assert _output_size(scene, None, None, False, quiet) == (
        144,
        128,
        False,
    )  # the model needs multiples of 16
    scene.render.resolution_percentage = 100
    scene.render.resolution_x, scene.render.resolution_y = 320, 240
    assert _output_size(scene, None, None, False, quiet) == (320, 240, True)
    assert _output_size(scene, 480, 832, False, quiet) == (480, 832, False)
    with pytest.raises(FramePromptUserError, match="both --width and --height"):
        _output_size(scene, 480, None, True, quiet)


def test_what_cannot_work_says_what_was_found(tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    mesh = bpy.data.objects.new("Body", bpy.data.meshes.new("Body"))
    scene.collection.objects.link(mesh)
    with pytest.raises(
        FramePromptUserError, match=r"has no armature \(objects: Cam \(camera\), Body \(mesh\)\)"
    ):
        run_batch(scene, out_dir=tmp_path / "a", export_only=True, log=None)
    # a tail rig: bones in one chain, nothing humanoid about it
    tail_rig(scene)
    with pytest.raises(FramePromptUserError) as err:
        run_batch(scene, out_dir=tmp_path / "b", export_only=True, log=None)
    msg = str(err.value)
    assert "Armature 'Tail' does not read as a humanoid" in msg and "tail.000, tail.001" in msg
    assert "no bone has 3 or more children" in msg and "frameprompt_bone_map" in msg
    assert not (tmp_path / "b").exists()  # nothing written before the check


# ------------------------------------------------------------------ --mocap, the import operator, the Bone Map


def test_batch_mocap_flag_imports_the_clip_and_takes_its_range(tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -6.0, 1.0), (math.radians(90), 0.0, 0.0)
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 96, 80, 100
    scene.render.engine = "BLENDER_WORKBENCH"
    blend = tmp_path / "stage.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    clip = write_clip(tmp_path / "walk.bvh", naming("meaningless"))
    out = tmp_path / "job"
    run = batch(str(blend), "--out", str(out), "--export-only", "--mocap", str(clip), "--mocap-scale", "0.01")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"bone map: {B_GUESSED} (no known bone names)" in run.stdout
    poses = read_pose_folder(out / "pose")
    assert len(poses) == FRAMES and (poses[0].canvas_width, poses[0].canvas_height) == (96, 80)
    assert all(p.keypoints[2:14, 2].all() for p in poses)


def test_import_mocap_new_or_onto_the_same_skeleton(tmp_path):
    from frameprompt_blender.blender.mocap import animated_bones, import_mocap

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    names = naming("classic")
    arm = import_mocap(write_clip(tmp_path / "a.bvh", names), scale=0.01)
    assert arm.type == "ARMATURE" and (scene.frame_start, scene.frame_end) == (1, FRAMES)
    first = arm.animation_data.action
    cam = _camera(scene)
    n_objects = len(bpy.data.objects)
    # a second clip for the same skeleton goes onto the armature; nothing else stays in the file
    again = import_mocap(write_clip(tmp_path / "b.bvh", names), onto=arm, scale=0.01)
    assert again == arm and len(bpy.data.objects) == n_objects
    assert arm.animation_data.action != first
    assert animated_bones(arm) == set(names.values())
    scene.frame_set(FRAMES)
    assert S.armature_pose(scene, arm, cam, None, 64, 64).keypoints[2:14, 2].any()
    # a clip made for other bones is retargeted onto it (tests/blender/test_mocap_retarget.py checks the
    # motion), and leaves neither its armature nor its own action behind
    n_actions = len(bpy.data.actions)
    import_mocap(write_clip(tmp_path / "m.bvh", naming("mixamo")), onto=arm)
    assert len(bpy.data.objects) == n_objects and len(bpy.data.actions) == n_actions + 1
    assert arm.animation_data.action.name == "m (a)" and animated_bones(arm) == set(names.values())
    with pytest.raises(FramePromptUserError, match="not found"):
        import_mocap(tmp_path / "none.bvh")
    (tmp_path / "clip.txt").write_text("x")
    with pytest.raises(FramePromptUserError, match=r"must be \.bvh or \.fbx"):
        import_mocap(tmp_path / "clip.txt")


def _camera(scene):
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -6.0, 1.0), (math.radians(90), 0.0, 0.0)
    scene.camera = cam
    return cam


def _drawn(fake, method: str) -> list:
    return [c for c in fake.mock_calls if c[0].endswith("." + method)]


def test_bone_map_panel_picks_are_saved_overrides_the_export_reads(addon, tmp_path):
    from unittest import mock

    blend, names = stage(tmp_path, "meaningless")
    arm = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    fake = mock.MagicMock()
    bpy.types.FRAMEPROMPT_PT_bone_map.draw(fake, bpy.context)
    rows = _drawn(fake, "prop_search")
    assert [c.args[1] for c in rows] == [*KEYPOINT_NAMES, "head"]
    assert all(
        c.args[0] == arm.frameprompt_bones and c.args[2] == arm.data and c.args[3] == "bones" for c in rows
    )
    labels = [c.kwargs.get("text", "") for c in _drawn(fake, "label")]
    assert f"auto: {names['RightWrist']} (guessed)" in labels and f"auto: {names['Head']}" in labels
    assert any(t.startswith(B_GUESSED) and t.endswith("18/18") for t in labels)

    # pick the elbow's bone for the right wrist: stored in the custom property the exporter reads
    arm.frameprompt_bones.RWrist = names["RightElbow"]
    assert json.loads(arm["frameprompt_bone_map"]) == {"RWrist": names["RightElbow"]}
    report = S.resolve_bone_map(arm)
    assert report.joints[4].name == names["RightElbow"] and 4 in report.overridden
    result = run_batch(bpy.context.scene, out_dir=tmp_path / "job", export_only=True, log=None)
    pose = read_pose_folder(result["pose_dir"])[0]
    np.testing.assert_allclose(pose.keypoints[4, :2], pose.keypoints[3, :2], atol=1e-4)
    # saved with the .blend, read back through the field
    name = arm.name
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    arm = bpy.data.objects[name]
    assert arm.frameprompt_bones.RWrist == names["RightElbow"] and arm.frameprompt_bones.RElbow == ""
    arm.frameprompt_bones.RWrist = ""  # empty: automatic again
    assert json.loads(arm["frameprompt_bone_map"]) == {}
    assert S.resolve_bone_map(arm).joints[4].name == names["RightWrist"]


def test_import_operator_and_button(addon, tmp_path):
    from unittest import mock

    bpy.ops.wm.read_homefile(use_empty=True)
    clip = write_clip(tmp_path / "walk.bvh", naming("classic"))
    assert bpy.ops.frameprompt.import_mocap(filepath=str(clip), scale=0.01) == {"FINISHED"}
    scene = bpy.context.scene
    arm = scene.frameprompt.armature
    assert arm is not None and arm.type == "ARMATURE" and scene.frame_end == FRAMES
    assert bpy.ops.frameprompt.import_mocap(filepath=str(clip), onto_armature=True, scale=0.01) == {
        "FINISHED"
    }
    assert (
        scene.frameprompt.armature == arm and len([o for o in bpy.data.objects if o.type == "ARMATURE"]) == 1
    )
    fake = mock.MagicMock()
    bpy.types.FRAMEPROMPT_PT_animate.draw(fake, bpy.context)
    assert "frameprompt.import_mocap" in [c.args[0] for c in _drawn(fake, "operator")]


def test_fbx_clip_through_blenders_fbx_importer(tmp_path):
    """An FBX clip (written here by Blender's FBX exporter from the BVH) comes in the same way."""
    from frameprompt_blender.blender.mocap import import_mocap

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    import_mocap(write_clip(tmp_path / "walk.bvh", naming("mixamo")), scale=0.01)
    fbx = tmp_path / "walk.fbx"
    assert bpy.ops.export_scene.fbx(filepath=str(fbx), object_types={"ARMATURE"}, bake_anim=True) == {
        "FINISHED"
    }
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    arm = import_mocap(fbx)
    assert arm.type == "ARMATURE" and (scene.frame_start, scene.frame_end) == (1, FRAMES)
    report = S.resolve_bone_map(arm)
    assert report.preset == "mixamo" and report.ok, report.summary()
    cam = _camera(scene)
    poses = [S.armature_pose(scene, arm, cam, f, 96, 96) for f in (1, FRAMES)]
    assert all(p.keypoints[2:14, 2].all() for p in poses)
    assert np.abs(poses[0].keypoints[7, :2] - poses[1].keypoints[7, :2]).max() > 1  # it moves
