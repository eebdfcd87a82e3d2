"""A motion-capture skeleton in BVH terms and a writer for clips on it, shared by the mocap tests.

Y up, the character facing +Z, its left at +X, centimetres: (joint, offset from the parent, children,
end site), classic joint names; a test renames them through `names`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

_ARM = ("LeftCollar", (3, 20, 0), [("LeftShoulder", (14, 0, 0), [("LeftElbow", (28, 0, 0), [
    ("LeftWrist", (26, 0, 0), [], (16, 0, 0))], None)], None)], None)  # fmt: skip
_LEG = ("LeftHip", (10, -5, 0), [("LeftKnee", (0, -43, 0), [("LeftAnkle", (0, -42, 0), [], (0, -6, 14))], None)],
        None)  # fmt: skip


def _mirror(node):
    name, off, kids, end = node
    return (name.replace("Left", "Right"), (-off[0], off[1], off[2]), [_mirror(k) for k in kids],
            None if end is None else (-end[0], end[1], end[2]))  # fmt: skip


SKELETON = ("Hips", (0, 0, 0), [
    ("Chest", (0, 25, 0), [("Neck", (0, 25, 0), [("Head", (0, 10, 0), [], (0, 18, 0))], None),
                           _ARM, _mirror(_ARM)], None),
    _LEG, _mirror(_LEG)], None)  # fmt: skip


def joint_names(node=SKELETON, out: list[str] | None = None) -> list[str]:
    """Every joint of the skeleton, parents first."""
    out = [] if out is None else out
    out.append(node[0])
    for k in node[2]:
        joint_names(k, out)
    return out


def write_bvh(
    path: Path,
    frames: int,
    hips: Callable[[int], list[float]],
    rotation: Callable[[str, int], tuple[float, float, float]],
    names: dict[str, str] | None = None,
    number_format: str = "g",
) -> Path:
    """A BVH clip of `frames` frames: `hips(f)` gives the root's 3 positions and 3 (Z, X, Y) rotations,
    `rotation(joint, f)` every other joint's (Z, X, Y) degrees; `names` renames the classic joints."""
    lines, order = ["HIERARCHY"], []

    def visit(node, depth, root=False):
        name, off, kids, end = node
        pad = "  " * depth
        lines.append(f"{pad}{'ROOT' if root else 'JOINT'} {names[name] if names else name}")
        lines.append(pad + "{")
        lines.append(f"{pad}  OFFSET {off[0]} {off[1]} {off[2]}")
        chans = "6 Xposition Yposition Zposition" if root else "3"
        lines.append(f"{pad}  CHANNELS {chans} Zrotation Xrotation Yrotation")
        order.append(name)
        for k in kids:
            visit(k, depth + 1)
        if end is not None:
            lines.extend(
                [f"{pad}  End Site", pad + "  {", f"{pad}    OFFSET {end[0]} {end[1]} {end[2]}", pad + "  }"]
            )
        lines.append(pad + "}")

    visit(SKELETON, 0, root=True)
    lines.extend(["MOTION", f"Frames: {frames}", "Frame Time: 0.0416667"])
    for f in range(frames):
        values: list[float] = []
        for joint in order:
            values += hips(f) if joint == "Hips" else list(rotation(joint, f))
        lines.append(" ".join(f"{v:{number_format}}" for v in values))
    path.write_text("\n".join(lines) + "\n")
    return path


def tail_rig(scene, name: str = "Tail"):
    """An armature with nothing humanoid about it: eight bones in one chain."""
    import bpy
    from mathutils import Vector

    data = bpy.data.armatures.new(name)
    rig = bpy.data.objects.new(name, data)
    scene.collection.objects.link(rig)
    bpy.context.view_layer.objects.active = rig
    bpy.ops.object.mode_set(mode="EDIT")
    parent = None
    for i in range(8):
        eb = data.edit_bones.new(f"tail.{i:03d}")
        eb.head, eb.tail, eb.parent = Vector((0, 0.1 * i, 1)), Vector((0, 0.1 * i + 0.1, 1)), parent
        parent = eb
    bpy.ops.object.mode_set(mode="OBJECT")
    return rig
