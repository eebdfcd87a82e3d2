"""Skeleton export with the real bpy module: presets, camera maths, depth, overrides, files.

The cost per frame is measured by benchmarks/keypoint_export.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="needs the bpy module (pip install 'bpy==4.5.*')")

from mathutils import Quaternion, Vector  # noqa: E402
from PIL import Image  # noqa: E402

from frameprompt_blender.blender import skeleton as S  # noqa: E402
from frameprompt_blender.core.bone_maps import JointRef, detect_preset  # noqa: E402
from frameprompt_blender.core.keypoints import LIMB_COLORS, NECK, NOSE, R_ELBOW, R_WRIST  # noqa: E402
from frameprompt_blender.core.openpose_draw import draw_pose  # noqa: E402
from frameprompt_blender.core.openpose_json import read_pose_folder  # noqa: E402

pytestmark = pytest.mark.blender

# Left side (+X) rest layout: arms hanging down, legs straight. Right side mirrored.
LAYOUT = {
    "upper_arm": ((0.2, 0.0, 1.5), (0.2, 0.0, 1.2)),
    "forearm": ((0.2, 0.0, 1.2), (0.2, 0.0, 0.95)),
    "hand": ((0.2, 0.0, 0.95), (0.2, 0.0, 0.85)),
    "thigh": ((0.1, 0.0, 1.0), (0.1, 0.0, 0.55)),
    "shin": ((0.1, 0.0, 0.55), (0.1, 0.0, 0.1)),
    "foot": ((0.1, 0.0, 0.1), (0.1, -0.12, 0.02)),
}
PARENT = {"forearm": "upper_arm", "hand": "forearm", "shin": "thigh", "foot": "shin"}
HEAD = ((0.0, 0.0, 1.6), (0.0, 0.0, 1.85))
# keypoint index -> (role, side): the bone whose head is the joint
JOINTS = {2: ("upper_arm", "R"), 3: ("forearm", "R"), 4: ("hand", "R"), 5: ("upper_arm", "L"),
          6: ("forearm", "L"), 7: ("hand", "L"), 8: ("thigh", "R"), 9: ("shin", "R"), 10: ("foot", "R"),
          11: ("thigh", "L"), 12: ("shin", "L"), 13: ("foot", "L")}  # fmt: skip

NAMES = {
    "metarig": ({"upper_arm": "upper_arm.{S}", "forearm": "forearm.{S}", "hand": "hand.{S}", "thigh": "thigh.{S}",
                 "shin": "shin.{S}", "foot": "foot.{S}"}, "spine.006"),
    "rigify": ({r: f"ORG-{r}.{{S}}" for r in LAYOUT}, "ORG-spine.006"),
    "mixamo": ({"upper_arm": "mixamorig:{Side}Arm", "forearm": "mixamorig:{Side}ForeArm",
                "hand": "mixamorig:{Side}Hand", "thigh": "mixamorig:{Side}UpLeg", "shin": "mixamorig:{Side}Leg",
                "foot": "mixamorig:{Side}Foot"}, "mixamorig:Head"),
    "mpfb": ({"upper_arm": "upperarm01.{S}", "forearm": "lowerarm01.{S}", "hand": "wrist.{S}",
              "thigh": "upperleg02.{S}", "shin": "lowerleg01.{S}", "foot": "foot.{S}"}, "head"),
    "unreal": ({"upper_arm": "upperarm_{s}", "forearm": "lowerarm_{s}", "hand": "hand_{s}", "thigh": "thigh_{s}",
                "shin": "calf_{s}", "foot": "foot_{s}"}, "head"),
    "generic": ({"upper_arm": "{Side}_UpperArm", "forearm": "{Side}_LowerArm", "hand": "{Side}_Hand",
                 "thigh": "{Side}_UpperLeg", "shin": "{Side}_LowerLeg", "foot": "{Side}_Foot"}, "Head"),
    "unknown": ({r: f"Bone_{r}_{{S}}x" for r in LAYOUT}, "Bone_top"),
}  # fmt: skip

W, H = 320, 240
CAM = (0.0, -6.0, 1.0)
LENS, SENSOR = 50.0, 36.0


def bone_name(template: str, side: str) -> str:
    return (
        template.replace("{S}", side)
        .replace("{s}", side.lower())
        .replace("{Side}", "Left" if side == "L" else "Right")
    )


def rest_point(role: str, side: str, end: int = 0) -> np.ndarray:
    p = np.array(LAYOUT[role][end], float)
    return p * [1 if side == "L" else -1, 1, 1]


@pytest.fixture
def scene():
    bpy.ops.wm.read_homefile(use_empty=True)
    sc = bpy.context.scene
    sc.render.resolution_x, sc.render.resolution_y, sc.render.resolution_percentage = W, H, 100
    cam_data = bpy.data.cameras.new("Cam")
    cam_data.lens, cam_data.sensor_width, cam_data.sensor_fit = LENS, SENSOR, "AUTO"
    cam = bpy.data.objects.new("Cam", cam_data)
    sc.collection.objects.link(cam)
    cam.location = CAM
    cam.rotation_euler = (math.radians(90), 0, 0)  # looks along +Y, up +Z
    sc.camera = cam
    yield sc


def make_rig(scene, preset: str, extra: tuple[str, ...] = (), location=(0.0, 0.0, 0.0)):
    roles, head = NAMES[preset]
    data = bpy.data.armatures.new(f"Rig_{preset}")
    arm = bpy.data.objects.new(f"Rig_{preset}", data)
    scene.collection.objects.link(arm)
    arm.location = location
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    for side in "LR":
        for role in LAYOUT:
            eb = data.edit_bones.new(bone_name(roles[role], side))
            eb.head, eb.tail = Vector(rest_point(role, side, 0)), Vector(rest_point(role, side, 1))
        for role, parent in PARENT.items():
            eb = data.edit_bones[bone_name(roles[role], side)]
            eb.parent = data.edit_bones[bone_name(roles[parent], side)]
            eb.use_connect = True
    eb = data.edit_bones.new(head)
    eb.head, eb.tail = Vector(HEAD[0]), Vector(HEAD[1])
    for i, name in enumerate(extra):
        eb = data.edit_bones.new(name)
        eb.head, eb.tail = Vector((0, 0.3, 0.1 * i)), Vector((0, 0.3, 0.1 * i + 0.05))
    bpy.ops.object.mode_set(mode="OBJECT")
    return arm


def rotate_world(pb, axis, degrees):
    local = pb.bone.matrix_local.to_3x3().inverted() @ Vector(axis)
    pb.rotation_mode = "QUATERNION"
    pb.rotation_quaternion = Quaternion(local.normalized(), math.radians(degrees))


def analytic_pixels(p, cam=CAM, w=W, h=H, lens=LENS, sensor=SENSOR):
    """Pinhole camera looking along +Y from `cam`, horizontal sensor fit."""
    p = np.asarray(p, float)
    d = p[..., 1] - cam[1]
    f = lens / sensor * w  # pixels per unit of x/d
    return np.stack([w / 2 + (p[..., 0] - cam[0]) / d * f, h / 2 - (p[..., 2] - cam[2]) / d * f], -1), d


def posed_expected(offset=(0.0, 0.0, 0.0)):
    """World joint positions after raising the right arm 90 degrees sideways (about +Y)."""
    pts = {}
    for k, (role, side) in JOINTS.items():
        pts[k] = rest_point(role, side) + offset
    sh = rest_point("upper_arm", "R") + offset
    for k in (3, 4):
        v = pts[k] - sh
        pts[k] = sh + np.array([-v[2], v[1], v[0]]) * -1  # Ry(90): (x, y, z) -> (z, y, -x); down -> -X
    return pts


@pytest.mark.parametrize("preset", ["metarig", "rigify", "mixamo", "mpfb", "unreal", "generic"])
def test_each_preset_projects_to_analytic_pixels(scene, preset):
    offset = np.array([0.3, 0.5, 0.0])
    arm = make_rig(scene, preset, location=offset)
    rotate_world(arm.pose.bones[bone_name(NAMES[preset][0]["upper_arm"], "R")], (0, 1, 0), 90)
    pose = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    report = S.resolve_bone_map(arm)
    assert report.preset == preset and report.ok, report.summary()
    assert (pose.canvas_width, pose.canvas_height) == (W, H)
    expected = posed_expected(offset)
    assert expected[R_WRIST][0] == pytest.approx(-0.2 - 0.55 + 0.3)  # the arm really points sideways
    for k, p in expected.items():
        px, d = analytic_pixels(p)
        assert pose.keypoints[k, 2] > 0, k
        assert np.abs(pose.keypoints[k, :2] - px).max() <= 0.5, (k, pose.keypoints[k], px)
        assert pose.depth[k] == pytest.approx(d, abs=1e-4)
    # neck: midpoint of the shoulders in the image
    np.testing.assert_allclose(
        pose.keypoints[NECK, :2], (pose.keypoints[2, :2] + pose.keypoints[5, :2]) / 2, atol=1e-4
    )
    # face points estimated from the head bone, in front of it, above the neck
    assert all(pose.keypoints[i, 2] > 0 for i in (0, 14, 15, 16, 17))
    assert pose.keypoints[NOSE, 1] < pose.keypoints[NECK, 1]
    assert pose.keypoints[14, 0] < pose.keypoints[15, 0]  # facing the camera: right eye on the image left


_METARIG_DUMP = """
import json, os, sys, bpy, addon_utils
bpy.ops.wm.read_homefile(use_empty=True)
addon_utils.enable("rigify", default_set=True, handle_error=None)
bpy.ops.object.armature_human_metarig_add()
bones = [(b.name, tuple(b.head_local), tuple(b.tail_local), b.parent.name if b.parent else None)
         for b in bpy.context.object.data.bones]
addon_utils.disable("rigify", default_set=True)
sys.stdout.write("BONES" + json.dumps(bones) + "\\n"); sys.stdout.flush()
os._exit(0)  # never risk the bpy 4.5 exit hang with an add-on's classes around
"""


@pytest.fixture(scope="module")
def metarig_bones():
    """Bone names, rest positions and parents of Blender's real human meta-rig (Rigify's "Add > Armature >
    Human"), taken in a child process so Rigify is never registered in the test process."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _METARIG_DUMP], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BONES")), None)
    if line is None:
        pytest.skip(f"could not build the Rigify meta-rig: {out.stderr[-500:]}")
    return json.loads(line[5:])


def build_rig(scene, name: str, bones, rename=lambda n: n):
    """An armature from (name, head, tail, parent) rows, each name passed through `rename`."""
    data = bpy.data.armatures.new(name)
    rig = bpy.data.objects.new(name, data)
    scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    for bone, head, tail, _ in bones:
        eb = data.edit_bones.new(rename(bone))
        eb.head, eb.tail = Vector(head), Vector(tail)
    for bone, _, _, parent in bones:
        if parent is not None:
            data.edit_bones[rename(bone)].parent = data.edit_bones[rename(parent)]
    bpy.ops.object.mode_set(mode="OBJECT")
    return rig


def test_real_metarig(scene, metarig_bones):
    meta = build_rig(scene, "metarig", metarig_bones)
    data = meta.data
    assert len(data.bones) > 150
    report = S.resolve_bone_map(meta)
    assert report.preset == "metarig" and report.ok and not report.missing
    assert report.joints[NOSE].name == "nose.002" and report.estimated == ()
    scene.camera.location = (0, -6, 1.2)
    pose = S.armature_pose(scene, meta, scene.camera, 1, W, H)
    assert pose.visible.all(), pose.keypoints
    # nose tip read from the nose bone lands where the camera maths puts nose.002's head
    px, _ = analytic_pixels(np.array(data.bones["nose.002"].head_local), cam=(0, -6, 1.2))
    assert np.abs(pose.keypoints[NOSE, :2] - px).max() <= 0.5
    # the estimated face (as for rigs without face bones) lands near the real face bones
    names = [b.name for b in data.bones if b.name.split(".")[0] not in ("nose", "eye", "ear")]
    est = S.armature_pose(scene, meta, scene.camera, 1, W, H, bone_map=detect_preset(names))
    face_px = np.abs(est.keypoints[[0, 14, 15, 16, 17], :2] - pose.keypoints[[0, 14, 15, 16, 17], :2]).max()
    assert face_px < 1.5, face_px


def test_real_metarig_with_meaningless_names_is_read_from_its_hierarchy(scene, metarig_bones):
    """All 159 bones renamed bone_000 ...: the hierarchy guess finds the same joints as the meta-rig's
    names, and the same head bone, so the exported keypoints are the same."""
    alias = {row[0]: f"bone_{i:03d}" for i, row in enumerate(metarig_bones)}
    named = build_rig(scene, "named", metarig_bones)
    anon = build_rig(scene, "anon", metarig_bones, rename=alias.__getitem__)
    ref, report = S.resolve_bone_map(named), S.resolve_bone_map(anon)
    assert report.preset == "hierarchy" and report.ok and set(report.guessed) == set(range(2, 14))
    body = {k: JointRef(alias[j.name], j.end) for k, j in ref.joints.items() if k in report.guessed}
    assert {k: report.joints[k] for k in body} == body, report.summary()
    assert report.head_bone == alias["spine.006"] and report.head_guessed
    scene.camera.location = (0, -6, 1.2)
    a = S.armature_pose(scene, named, scene.camera, 1, W, H, bone_map=detect_preset([b[0] for b in metarig_bones
                        if b[0].split(".")[0] not in ("nose", "eye", "ear")]))  # fmt: skip
    b = S.armature_pose(scene, anon, scene.camera, 1, W, H)
    assert b.visible.all()
    assert np.abs(a.keypoints[:, :2] - b.keypoints[:, :2]).max() < 1e-3  # face points from the same head


def test_orthographic_camera(scene):
    arm = make_rig(scene, "metarig")
    cam = scene.camera.data
    cam.type, cam.ortho_scale = "ORTHO", 4.0
    pose = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    for k, (role, side) in JOINTS.items():
        p = rest_point(role, side)
        ex = (W / 2 + p[0] / 4.0 * W, H / 2 - (p[2] - CAM[2]) / 4.0 * W)
        assert np.abs(pose.keypoints[k, :2] - ex).max() <= 0.5
        assert pose.depth[k] == pytest.approx(p[1] - CAM[1])


def test_behind_camera_and_outside_frame(scene):
    arm = make_rig(scene, "metarig")
    scene.camera.location = (0, -0.05, 1.0)  # inside the body plane: y = 0 is 0.05 ahead, the foot tip...
    scene.camera.rotation_euler = (math.radians(90), 0, math.radians(180))  # ...and now it looks along -Y
    pose = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    assert not pose.visible[2:14].any()
    assert np.all(pose.keypoints[2:14, :2] == 0)  # behind: no meaningless coordinates
    assert np.all(pose.depth[2:14] < 0)
    # looking at the chest with a long lens: feet and knees leave the frame but keep their coordinates
    scene.camera.location, scene.camera.rotation_euler = (0, -6, 1.3), (math.radians(90), 0, 0)
    scene.camera.data.lens = 200
    pose = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    for k in (9, 10, 12, 13):
        assert pose.keypoints[k, 2] == 0 and pose.keypoints[k, 1] > H
    assert pose.keypoints[2, 2] > 0


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"shift_x": 0.12, "shift_y": -0.07},
        {"sensor_fit": "VERTICAL", "sensor_height": 20.0},
        {"resolution_percentage": 50, "resolution_x": 300, "resolution_y": 400},
        {"pixel_aspect_x": 2.0},
        {"type": "ORTHO", "ortho_scale": 3.0, "shift_x": 0.1},
    ],
)
def test_projection_matches_blender(scene, settings):
    """core.projection against Blender's own calc_matrix_camera (and world_to_camera_view where it applies)."""
    from bpy_extras.object_utils import world_to_camera_view

    cam = scene.camera
    r = scene.render
    for key, value in settings.items():
        setattr(r if hasattr(r, key) else cam.data, key, value)
    cam.location, cam.rotation_euler = (1.5, -5.0, 1.4), (math.radians(85), math.radians(3), math.radians(12))
    dg = bpy.context.evaluated_depsgraph_get()
    params = S.camera_params(scene, cam, depsgraph=dg)
    pts = np.array([[0.2, 0.4, 1.1], [-0.6, 1.5, 0.2], [0.9, -1.0, 1.9]])
    ours = params.camera_view(pts)
    w, h = params.render_size
    proj = np.array(cam.calc_matrix_camera(dg, x=w, y=h, scale_x=r.pixel_aspect_x, scale_y=r.pixel_aspect_y))
    view = np.array(cam.matrix_world.normalized().inverted())
    for p, o in zip(pts, ours, strict=True):
        clip = proj @ view @ np.append(p, 1.0)
        ndc = clip[:2] / clip[3]
        assert o[:2] == pytest.approx((ndc + 1) / 2, abs=1e-5)
        if r.pixel_aspect_x == r.pixel_aspect_y:
            v = world_to_camera_view(scene, cam, Vector(p))
            assert o == pytest.approx(tuple(v), abs=1e-5)


def test_unknown_rig_report_then_overrides(scene):
    roles, head = NAMES["unknown"]
    arm = make_rig(scene, "unknown")
    report = S.resolve_bone_map(arm)
    assert not report.ok and "MISSING" in report.summary() and "frameprompt_bone_map" in report.summary()
    pose = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    assert not pose.visible.any()
    # an empty in front of the face for the nose
    empty = bpy.data.objects.new("NoseEmpty", None)
    scene.collection.objects.link(empty)
    empty.location = (0.0, -0.15, 1.7)
    overrides = {kp: bone_name(roles[role], side) for kp, (role, side) in JOINTS.items()}
    overrides = {str(k): v for k, v in overrides.items()}
    overrides.update({"Nose": "NoseEmpty", "head": head, "LEar": ""})
    S.set_bone_map_overrides(arm, overrides)
    report = S.resolve_bone_map(arm)
    assert report.ok and report.missing == (17,), report.summary()
    pose = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    for k, (role, side) in JOINTS.items():
        assert np.abs(pose.keypoints[k, :2] - analytic_pixels(rest_point(role, side))[0]).max() <= 0.5
    assert np.abs(pose.keypoints[NOSE, :2] - analytic_pixels((0.0, -0.15, 1.7))[0]).max() <= 0.5
    assert pose.keypoints[17, 2] == 0 and pose.keypoints[16, 2] > 0
    # a tail override moves the point: the right wrist at the tail of the hand
    arm["frameprompt_bone_map"] = json.dumps({"RWrist": bone_name(roles["hand"], "R") + ":tail"})
    pose = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    tail = analytic_pixels(rest_point("hand", "R", 1))[0]
    assert np.abs(pose.keypoints[R_WRIST, :2] - tail).max() <= 0.5


@pytest.mark.parametrize("near", ["R", "L"])
def test_depth_order_nearer_forearm_on_top(scene, tmp_path, near):
    arm = make_rig(scene, "metarig")
    scene.camera.location = (0, -6, 1.075)
    y_r, y_l = (-0.3, 0.3) if near == "R" else (0.3, -0.3)
    # forearms crossing in front of the chest: elbows out, wrists across, at different depths
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    eb = arm.data.edit_bones
    for side, y, sx in (("R", y_r, -1), ("L", y_l, 1)):
        eb[f"forearm.{side}"].use_connect = False
        eb[f"forearm.{side}"].head = Vector((0.2 * sx, y, 1.2))
        eb[f"forearm.{side}"].tail = Vector((-0.2 * sx, y, 0.95))
        eb[f"hand.{side}"].head = Vector((-0.2 * sx, y, 0.95))
        eb[f"hand.{side}"].tail = Vector((-0.25 * sx, y, 0.9))
    bpy.ops.object.mode_set(mode="OBJECT")
    poses = S.export_skeleton_frames(scene, arm, scene.camera, [1], tmp_path, W, H)
    img = np.asarray(Image.open(tmp_path / "skeleton" / "0000.png"))
    limb = 3 if near == "R" else 5  # RElbow->RWrist, LElbow->LWrist
    assert (
        poses[0].depth[R_ELBOW] < poses[0].depth[6]
        if near == "R"
        else poses[0].depth[R_ELBOW] > poses[0].depth[6]
    )
    assert tuple(img[H // 2, W // 2]) == tuple(int(v * 0.6) for v in LIMB_COLORS[limb])


def test_face_points_hidden_when_the_head_faces_away(scene):
    arm = make_rig(scene, "metarig")
    front = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    assert all(front.keypoints[i, 2] > 0 for i in (0, 14, 15, 16, 17))
    arm.rotation_euler = (0, 0, math.radians(180))
    back = S.armature_pose(scene, arm, scene.camera, 1, W, H)
    assert all(back.keypoints[i, 2] == 0 for i in (0, 14, 15)), back.keypoints[[0, 14, 15]]
    assert back.keypoints[16, 2] > 0 and back.keypoints[17, 2] > 0
    assert back.keypoints[2, 0] > back.keypoints[5, 0]  # seen from behind: right shoulder on the image right
    no_hiding = S.armature_pose(scene, arm, scene.camera, 1, W, H, hide_occluded_face=False)
    assert no_hiding.keypoints[NOSE, 2] > 0


def test_export_demo_scene_files_and_cost(tmp_path):
    from frameprompt_blender.blender.demo_scene import build_demo_scene

    bpy.ops.wm.read_homefile(use_empty=True)
    demo = build_demo_scene()
    sc = demo.scene
    assert S.resolve_bone_map(demo.armature).preset == "metarig"
    sc.frame_set(3)
    poses = S.export_skeleton_frames(sc, demo.armature, demo.camera, [1, 5, 9, 13], tmp_path, 128, 128)
    assert sc.frame_current == 3
    assert sorted(p.name for p in (tmp_path / "pose").iterdir()) == [
        f"{i:04d}_keypoints.json" for i in range(4)
    ]
    assert sorted(p.name for p in (tmp_path / "skeleton").iterdir()) == [f"{i:04d}.png" for i in range(4)]
    assert read_pose_folder(tmp_path / "pose") == poses
    for i, p in enumerate(poses):
        assert p.visible[1:14].all(), p.keypoints  # the whole body is in frame on every frame
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "skeleton" / f"{i:04d}.png")), draw_pose(p)
        )
    # the animation moves the joints
    assert np.abs(poses[0].keypoints[4, :2] - poses[1].keypoints[4, :2]).max() > 2
