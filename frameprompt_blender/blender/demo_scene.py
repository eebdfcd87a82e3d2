"""A small procedural test/demo scene: a skinned humanoid on a metarig-style armature, walking and waving.

`build_demo_scene()` adds to the current scene (call `bpy.ops.wm.read_homefile(use_empty=True)` first for a
clean one): an armature with Blender human meta-rig bone names (spine ... spine.006, upper_arm.L, forearm.L,
hand.L, thigh.L, shin.L, foot.L ...), one mesh built from primitives with one vertex group per bone
(weight 1, an Armature modifier: deterministic, no automatic weights), a ground plane, a camera at a
three-quarter view, a sun, and a 24-frame walk-in-place with a right-arm wave, keyed on every frame.
Everything is built from data (bmesh, bpy.data), no operators, no randomness: the same call gives the
same scene, in about 0.1 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import bmesh
import bpy
from mathutils import Matrix, Quaternion, Vector

FRAME_START, FRAME_END = 1, 24

# name: (head, tail, parent, connected)  -- metres, character faces -Y, its left is +X
BONES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], str | None, bool]] = {
    "spine": ((0, 0.0, 1.00), (0, 0.0, 1.14), None, False),
    "spine.001": ((0, 0.0, 1.14), (0, 0.0, 1.28), "spine", True),
    "spine.002": ((0, 0.0, 1.28), (0, 0.0, 1.40), "spine.001", True),
    "spine.003": ((0, 0.0, 1.40), (0, 0.0, 1.54), "spine.002", True),
    "spine.004": ((0, 0.0, 1.54), (0, -0.01, 1.62), "spine.003", True),
    "spine.005": ((0, -0.01, 1.62), (0, -0.02, 1.68), "spine.004", True),
    "spine.006": ((0, -0.02, 1.68), (0, -0.02, 1.90), "spine.005", True),
    "shoulder.L": ((0.02, 0.0, 1.52), (0.17, 0.0, 1.52), "spine.003", False),
    "upper_arm.L": ((0.19, 0.0, 1.50), (0.28, 0.01, 1.22), "shoulder.L", False),
    "forearm.L": ((0.28, 0.01, 1.22), (0.33, -0.02, 0.98), "upper_arm.L", True),
    "hand.L": ((0.33, -0.02, 0.98), (0.35, -0.03, 0.84), "forearm.L", True),
    "thigh.L": ((0.10, 0.0, 0.98), (0.10, 0.0, 0.53), "spine", False),
    "shin.L": ((0.10, 0.0, 0.53), (0.10, 0.02, 0.10), "thigh.L", True),
    "foot.L": ((0.10, 0.02, 0.10), (0.10, -0.14, 0.02), "shin.L", True),
}
for _n in [n for n in BONES if n.endswith(".L")]:
    _h, _t, _p, _c = BONES[_n]
    BONES[_n[:-2] + ".R"] = (
        (-_h[0], _h[1], _h[2]),
        (-_t[0], _t[1], _t[2]),
        _p[:-2] + ".R" if _p and _p.endswith(".L") else _p,
        _c,
    )

# bone -> (radius, material index); spine.006 is the head (a sphere)
_PARTS = {
    "spine": (0.13, 1), "spine.001": (0.13, 1), "spine.002": (0.14, 1), "spine.003": (0.15, 1),
    "spine.004": (0.05, 0), "spine.006": (0.11, 0), "upper_arm": (0.05, 1), "forearm": (0.04, 0),
    "hand": (0.035, 0), "thigh": (0.075, 2), "shin": (0.055, 2), "foot": (0.045, 3),
}  # fmt: skip
_MATERIALS = (("FP_Skin", (0.85, 0.62, 0.48, 1)), ("FP_Shirt", (0.15, 0.35, 0.8, 1)),
              ("FP_Trousers", (0.2, 0.2, 0.25, 1)), ("FP_Shoes", (0.45, 0.2, 0.1, 1)),
              ("FP_Ground", (0.5, 0.5, 0.5, 1)))  # fmt: skip


@dataclass
class DemoScene:
    scene: Any
    armature: Any
    body: Any
    camera: Any
    light: Any
    ground: Any


def _material(name: str, color) -> Any:
    mat = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    mat.diffuse_color = color
    return mat


def build_armature(collection: Any, bones: dict | None = None, name: str = "FP_DemoRig") -> Any:
    """An armature object from a bone table {name: (head, tail, parent, connected)} (default: BONES)."""
    bones = BONES if bones is None else bones
    data = bpy.data.armatures.new(name)
    arm = bpy.data.objects.new(name, data)
    collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    for o in bpy.context.view_layer.objects:
        o.select_set(o == arm)
    bpy.ops.object.mode_set(mode="EDIT")
    for name, (head, tail, _parent, _connected) in bones.items():
        eb = data.edit_bones.new(name)
        eb.head, eb.tail, eb.roll = Vector(head), Vector(tail), 0.0
    for name, (_h, _t, parent, connected) in bones.items():
        if parent:
            eb = data.edit_bones[name]
            eb.parent = data.edit_bones[parent]
            eb.use_connect = connected
    bpy.ops.object.mode_set(mode="OBJECT")
    return arm


def _build_body(collection: Any, arm: Any) -> Any:
    mesh = bpy.data.meshes.new("FP_DemoBody")
    body = bpy.data.objects.new("FP_DemoBody", mesh)
    collection.objects.link(body)
    for name, color in _MATERIALS[:4]:
        mesh.materials.append(_material(name, color))
    bm = bmesh.new()
    deform = bm.verts.layers.deform.verify()
    groups: dict[str, int] = {}
    for name, (head, tail, _p, _c) in BONES.items():
        key = name.split(".")[0] if "." in name and not name.startswith("spine") else name
        if key not in _PARTS:
            continue
        radius, mat = _PARTS[key]
        h, t = Vector(head), Vector(tail)
        axis = t - h
        if name == "spine.006":
            geom = bmesh.ops.create_uvsphere(bm, u_segments=12, v_segments=8, radius=radius)
            xf = Matrix.Translation((h + t) / 2 + Vector((0, -0.01, 0)))
        else:
            geom = bmesh.ops.create_cone(bm, cap_ends=True, segments=8, radius1=radius, radius2=radius * 0.85,
                                         depth=axis.length)  # fmt: skip
            rot = Vector((0, 0, 1)).rotation_difference(axis.normalized()).to_matrix().to_4x4()
            xf = Matrix.Translation((h + t) / 2) @ rot
        verts = geom["verts"]
        bmesh.ops.transform(bm, matrix=xf, verts=verts)
        gi = groups.setdefault(name, len(groups))
        for v in verts:
            v[deform][gi] = 1.0
        faces = {f for v in verts for f in v.link_faces}
        for f in faces:
            f.material_index = mat
    bm.to_mesh(mesh)
    bm.free()
    for name, gi in sorted(groups.items(), key=lambda kv: kv[1]):
        assert body.vertex_groups.new(name=name).index == gi
    mod = body.modifiers.new("Armature", "ARMATURE")
    mod.object = arm
    body.parent = arm
    return body


def _world_rotation(pb: Any, axis: tuple[float, float, float], angle: float) -> Quaternion:
    """A pose rotation turning the bone about a world axis (armature at rest orientation)."""
    local = pb.bone.matrix_local.to_3x3().inverted() @ Vector(axis)
    return Quaternion(local.normalized(), angle)


def _animate(arm: Any) -> None:
    """Walk in place (legs and left arm swing) with a right-arm wave and a head turn, one key per frame."""
    pbs = arm.pose.bones
    X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    n = FRAME_END - FRAME_START + 1
    for f in range(FRAME_START, FRAME_END + 1):
        ph = 2 * math.pi * (f - FRAME_START) / n  # one full stride over the clip (loops)
        swing = math.radians(25) * math.sin(ph)  # > 0: left leg forward (towards -Y)
        rot = {
            "thigh.L": (X, -swing),
            "thigh.R": (X, swing),
            "shin.L": (X, math.radians(40) * max(0.0, math.sin(ph - 1.2))),  # knee bends, foot goes back
            "shin.R": (X, math.radians(40) * max(0.0, -math.sin(ph - 1.2))),
            "upper_arm.L": (X, swing * 0.8),
            "upper_arm.R": (Y, math.radians(95)),  # raised sideways
            "forearm.R": (Y, math.radians(35) + math.radians(30) * math.sin(2 * ph)),  # waving
            "spine.006": (Z, math.radians(15) * math.sin(ph)),  # head turns
            "spine.002": (Z, math.radians(5) * math.sin(ph)),
        }
        for name, (axis, angle) in rot.items():
            pb = pbs[name]
            pb.rotation_mode = "QUATERNION"
            pb.rotation_quaternion = _world_rotation(pb, axis, angle)
            pb.keyframe_insert("rotation_quaternion", frame=f)
    ad = arm.animation_data
    if ad is not None and ad.action is not None:
        ad.action.name = "FP_WalkWave"


def build_demo_scene(scene: Any = None) -> DemoScene:
    """Add the demo humanoid, camera, light, ground and animation to `scene` (default: the context scene),
    set it as the scene camera, select the armature (active object), and set frames 1-24, 256x256, 16 fps,
    Workbench with material colours and the Standard view transform."""
    scene = scene or bpy.context.scene
    if bpy.context.scene != scene:
        bpy.context.window.scene = scene
    coll = scene.collection
    if bpy.context.object is not None and bpy.context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    arm = build_armature(coll)
    body = _build_body(coll, arm)

    ground_mesh = bpy.data.meshes.new("FP_Ground")
    s = 3.0
    ground_mesh.from_pydata([(-s, -s, 0), (s, -s, 0), (s, s, 0), (-s, s, 0)], [], [(0, 1, 2, 3)])
    ground_mesh.materials.append(_material(*_MATERIALS[4]))
    ground = bpy.data.objects.new("FP_Ground", ground_mesh)
    coll.objects.link(ground)

    cam_data = bpy.data.cameras.new("FP_DemoCamera")
    cam_data.lens = 50.0
    cam = bpy.data.objects.new("FP_DemoCamera", cam_data)
    coll.objects.link(cam)
    # three-quarter view from the character's front left, looking at the chest
    cam.location = (2.4, -3.6, 1.15)
    cam.rotation_euler = (math.radians(90), 0.0, math.radians(33.7))
    scene.camera = cam

    light_data = bpy.data.lights.new("FP_Sun", "SUN")
    light_data.energy = 3.0  # type: ignore[attr-defined]  # a SunLight
    light = bpy.data.objects.new("FP_Sun", light_data)
    light.rotation_euler = (math.radians(40), math.radians(10), math.radians(30))
    coll.objects.link(light)

    _animate(arm)

    scene.frame_start, scene.frame_end = FRAME_START, FRAME_END
    r = scene.render
    r.resolution_x = r.resolution_y = 256
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.fps = 16
    r.engine = "BLENDER_WORKBENCH"
    scene.display.shading.color_type = "MATERIAL"
    scene.view_settings.view_transform = "Standard"
    if scene.world is None:
        scene.world = bpy.data.worlds.new("FP_World")
    scene.world.color = (0.05, 0.05, 0.06)

    for o in bpy.context.view_layer.objects:
        o.select_set(o == arm)
    bpy.context.view_layer.objects.active = arm
    scene.frame_set(FRAME_START)
    return DemoScene(scene, arm, body, cam, light, ground)
