"""Skeleton export cost per frame on a 60-bone rig (target <= 10 ms), beside the floor it cannot beat.

The floor is Blender evaluating the same frames (`scene.frame_set` + depsgraph) with no export; both
are timed in one run, interleaved, on the demo character with extra bones up to 60.

    python benchmarks/keypoint_export.py [--frames 24] [--repeats 5] [--png]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import bpy
from mathutils import Vector

from frameprompt_blender.blender.demo_scene import build_demo_scene
from frameprompt_blender.blender.skeleton import export_skeleton_frames

TARGET_MS = 10.0


def rig_with_60_bones():
    bpy.ops.wm.read_homefile(use_empty=True)
    demo = build_demo_scene()
    bpy.context.view_layer.objects.active = demo.armature
    bpy.ops.object.mode_set(mode="EDIT")
    bones = demo.armature.data.edit_bones
    for i in range(60 - len(bones)):  # finger-like extras under the spine
        bone = bones.new(f"extra_{i:02d}")
        bone.head, bone.tail = Vector((0.0, 0.5, 0.05 * i)), Vector((0.0, 0.5, 0.05 * i + 0.04))
        bone.parent = bones["spine"]
    bpy.ops.object.mode_set(mode="OBJECT")
    assert len(demo.armature.data.bones) == 60
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--png", action="store_true", help="also draw skeleton PNGs (512x512)")
    args = parser.parse_args()
    demo = rig_with_60_bones()
    scene = bpy.context.scene
    frames = list(range(1, args.frames + 1))

    def evaluate_only() -> None:
        for frame in frames:
            scene.frame_set(frame)
            bpy.context.evaluated_depsgraph_get()

    export_ms, floor_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            start = time.perf_counter()
            evaluate_only()
            floor_ms.append((time.perf_counter() - start) / len(frames) * 1e3)
            start = time.perf_counter()
            export_skeleton_frames(
                scene,
                demo.armature,
                demo.camera,
                frames,
                Path(tmp) / str(repeat),
                512,
                512,
                write_png=args.png,
            )
            export_ms.append((time.perf_counter() - start) / len(frames) * 1e3)
    export, floor = statistics.median(export_ms), statistics.median(floor_ms)
    what = "JSON + PNG" if args.png else "JSON only"
    print(
        f"skeleton export ({what}, 60 bones, {len(frames)} frames x {args.repeats}): {export:.2f} ms per frame"
    )
    print(f"frame evaluation alone: {floor:.2f} ms per frame; export / evaluation = {export / floor:.2f}")
    print(f"export / target ({TARGET_MS:.0f} ms) = {export / TARGET_MS:.2f} (<= 1 meets the target)")


if __name__ == "__main__":
    main()
