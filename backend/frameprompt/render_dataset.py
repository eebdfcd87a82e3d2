"""Render a training data set in Blender: reference, N skeleton frames and N target frames per clip.

Runs inside Blender's Python: the `bpy` module (pip install bpy) or a `blender` binary
(`frameprompt dataset render --blender PATH` re-runs this file as `blender -b --python ... -- ARGS`).
No torch here.

Per clip (its own seeded RNG, so a resumed run renders exactly the clips it would have rendered):
  * a scene: a .blend file with a rigged character and one of its actions, or the built-in demo
    humanoid driven by a procedural motion (walk, run, wave, jump, turn, dance);
  * camera jitter (orbit +-25 deg, distance +-12 %, height +-0.15 m) and background variety (world and
    ground colours);
  * the reference frame from a random pose of the motion, then N consecutive frames: skeletons from
    the shared skeleton export (`frameprompt_blender.blender.skeleton.export_skeleton_frames`, the same
    code the add-on uses at inference) and the rendered target frames.
A clip is rendered into `.tmp-<clip>` and renamed when complete (meta.json written last), so
re-running the command skips finished clips and redoes an interrupted one.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dataset_format import REFERENCE_FILE, TARGET_DIR, frame_name, write_meta

MOTIONS = ("walk", "run", "wave", "jump", "turn", "dance")
X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
ENGINES = {"workbench": "BLENDER_WORKBENCH", "eevee": "BLENDER_EEVEE_NEXT", "cycles": "CYCLES"}

# A motion: (phase in [0, 2 pi), rng values) -> ({bone: (world axis, angle)}, root (dx, dy, dz), root yaw)
Pose3D = tuple[dict[str, tuple[tuple[float, float, float], float]], tuple[float, float, float], float]


def _walk(ph: float, k: dict[str, float], scale: float = 1.0) -> Pose3D:
    swing = math.radians(25 * scale * k["amp"]) * math.sin(ph)
    bend = math.radians(40 * scale)
    return (
        {
            "thigh.L": (X, -swing),
            "thigh.R": (X, swing),
            "shin.L": (X, bend * max(0.0, math.sin(ph - 1.2))),
            "shin.R": (X, bend * max(0.0, -math.sin(ph - 1.2))),
            "upper_arm.L": (X, swing * 0.8),
            "upper_arm.R": (X, -swing * 0.8),
            "spine.006": (Z, math.radians(8) * math.sin(ph)),
        },
        (0.0, 0.0, 0.0),
        0.0,
    )


def _run(ph: float, k: dict[str, float]) -> Pose3D:
    bones, _, _ = _walk(ph, k, scale=1.8)
    bones.update(
        {
            "forearm.L": (X, -math.radians(70)),
            "forearm.R": (X, -math.radians(70)),
            "spine.002": (X, -math.radians(10)),
        }
    )
    return bones, (0.0, 0.0, 0.05 * abs(math.sin(ph))), 0.0


def _wave(ph: float, k: dict[str, float]) -> Pose3D:
    side = 1.0 if k["side"] > 0.5 else -1.0
    arm, fore = ("upper_arm.R", "forearm.R") if side > 0 else ("upper_arm.L", "forearm.L")
    return (
        {
            arm: (Y, side * math.radians(95)),
            fore: (Y, side * (math.radians(35) + math.radians(30 * k["amp"]) * math.sin(2 * ph))),
            "spine.006": (Z, math.radians(10) * math.sin(ph)),
        },
        (0.0, 0.0, 0.0),
        0.0,
    )


def _jump(ph: float, k: dict[str, float]) -> Pose3D:
    air = max(0.0, math.sin(ph))
    crouch = max(0.0, -math.sin(ph))
    return (
        {
            "thigh.L": (X, -math.radians(50) * crouch),
            "thigh.R": (X, -math.radians(50) * crouch),
            "shin.L": (X, math.radians(80) * crouch),
            "shin.R": (X, math.radians(80) * crouch),
            "upper_arm.L": (Y, -math.radians(150) * air),
            "upper_arm.R": (Y, math.radians(150) * air),
        },
        (0.0, 0.0, 0.35 * k["amp"] * air - 0.15 * crouch),
        0.0,
    )


def _turn(ph: float, k: dict[str, float]) -> Pose3D:
    bones, root, _ = _walk(2 * ph, k, scale=0.6)
    return bones, root, math.pi * k["amp"] * ph / (2 * math.pi) * (1 if k["side"] > 0.5 else -1)


def _dance(ph: float, k: dict[str, float]) -> Pose3D:
    a = math.sin(ph)
    return (
        {
            "upper_arm.L": (Y, -math.radians(60 + 60 * max(0.0, a))),
            "upper_arm.R": (Y, math.radians(60 + 60 * max(0.0, -a))),
            "forearm.L": (Y, -math.radians(40) * abs(a)),
            "forearm.R": (Y, math.radians(40) * abs(a)),
            "spine.002": (Z, math.radians(20 * k["amp"]) * a),
            "thigh.L": (Y, -math.radians(10) * max(0.0, a)),
            "thigh.R": (Y, math.radians(10) * max(0.0, -a)),
        },
        (0.08 * a, 0.0, 0.03 * abs(math.sin(2 * ph))),
        0.0,
    )


MOTION_FUNCTIONS: dict[str, Callable[[float, dict[str, float]], Pose3D]] = {
    "walk": _walk,
    "run": _run,
    "wave": _wave,
    "jump": _jump,
    "turn": _turn,
    "dance": _dance,
}


@dataclass
class RenderConfig:
    out: str
    clips: int
    frames: int
    width: int
    height: int
    blends: Sequence[str] = ()
    motions: Sequence[str] = MOTIONS
    seed: int = 0
    engine: str = "workbench"
    samples: int = 4
    fps: int = 16
    armature: str | None = None
    camera: str | None = None
    progress: bool = True
    # built-in scene only: vary the character (frameprompt_blender.blender.characters); "train" or "test"
    # pool (test = ids % 10 == 0, never in training), `num_characters` ids of it cycled over the clips
    characters: str | None = None
    num_characters: int = 0


def _bpy():
    try:
        import bpy
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "rendering needs Blender: pip install 'bpy==4.5.*' (Python 3.11), or pass --blender PATH"
        ) from error
    return bpy


def _key_motion(arm: Any, motion: str, length: int, rng: random.Random) -> None:
    """Key a procedural motion on frames 1..length (one key per frame)."""
    _bpy()
    from mathutils import Quaternion, Vector

    fn = MOTION_FUNCTIONS[motion]
    period = rng.uniform(0.6, 1.0) * length if motion in ("turn",) else rng.choice([12, 16, 20, 24])
    k = {"amp": rng.uniform(0.7, 1.2), "side": rng.random()}
    arm.animation_data_clear()
    base_location = Vector(arm.location)
    base_yaw = arm.rotation_euler.z
    bones = arm.pose.bones
    for pb in bones:
        pb.rotation_mode = "QUATERNION"
    for f in range(1, length + 1):
        ph = (
            2 * math.pi * ((f - 1) / period % 1.0)
            if motion != "turn"
            else 2 * math.pi * min(1.0, (f - 1) / period)
        )
        rotations, (dx, dy, dz), yaw = fn(ph, k)
        for pb in bones:
            if pb.name in rotations:
                axis, angle = rotations[pb.name]
                local = pb.bone.matrix_local.to_3x3().inverted() @ Vector(axis)
                pb.rotation_quaternion = Quaternion(local.normalized(), angle)
            else:
                pb.rotation_quaternion = Quaternion()
            pb.keyframe_insert("rotation_quaternion", frame=f)
        arm.location = base_location + Vector((dx, dy, dz))
        arm.rotation_euler.z = base_yaw + yaw
        arm.keyframe_insert("location", frame=f)
        arm.keyframe_insert("rotation_euler", frame=f)


def _jitter_camera(camera: Any, target: Any, rng: random.Random, distance: float = 1.0) -> None:
    """Orbit the camera around the character by +-25 deg, move it +-12 % closer/farther, +-0.15 m up/down,
    and aim it at `target` (a world point)."""
    _bpy()
    from mathutils import Matrix, Vector

    offset = Vector(camera.location) - target
    offset = Matrix.Rotation(math.radians(rng.uniform(-25, 25)), 3, "Z") @ offset
    offset *= distance * rng.uniform(0.88, 1.12)
    offset.z += rng.uniform(-0.15, 0.15)
    camera.location = target + offset
    camera.rotation_euler = (-offset).to_track_quat("-Z", "Y").to_euler()


def _background(scene: Any, rng: random.Random) -> None:
    bpy = _bpy()
    if scene.world is None:
        scene.world = bpy.data.worlds.new("FP_World")
    colour = [rng.uniform(0.02, 0.9) for _ in range(3)]
    scene.world.color = colour
    if scene.world.use_nodes and scene.world.node_tree is not None:
        node = scene.world.node_tree.nodes.get("Background")
        if node is not None:
            node.inputs[0].default_value = (*colour, 1.0)
    ground = bpy.data.materials.get("FP_Ground")
    if ground is not None:
        ground.diffuse_color = (*[rng.uniform(0.1, 0.9) for _ in range(3)], 1.0)


def _setup_render(scene: Any, config: RenderConfig) -> None:
    r = scene.render
    engine = ENGINES.get(config.engine, config.engine)
    if engine == "BLENDER_EEVEE_NEXT" and "BLENDER_EEVEE_NEXT" not in {
        e.identifier for e in type(r).bl_rna.properties["engine"].enum_items
    }:
        engine = "BLENDER_EEVEE"
    r.engine = engine
    if engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = config.samples
        scene.cycles.use_denoising = False
    if engine == "BLENDER_WORKBENCH":
        scene.display.shading.color_type = "MATERIAL"
        scene.display.shading.light = "STUDIO"
        scene.display.shading.background_type = "WORLD"
    r.resolution_x, r.resolution_y, r.resolution_percentage = config.width, config.height, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = False
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGB"
    r.fps = config.fps
    scene.view_settings.view_transform = "Standard"


def _render_frame(scene: Any, frame: int, path: Path) -> None:
    bpy = _bpy()
    scene.frame_set(frame)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


def _load_blend_scene(
    path: str, config: RenderConfig, rng: random.Random
) -> tuple[Any, Any, Any, int, int, str]:
    """Open a .blend file, pick its armature and one of its actions; returns scene, armature, camera, frames."""
    bpy = _bpy()
    bpy.ops.wm.open_mainfile(filepath=str(path))
    scene = bpy.context.scene
    armatures = [o for o in scene.objects if o.type == "ARMATURE"]
    if config.armature:
        armatures = [o for o in armatures if o.name == config.armature]
    if not armatures:
        raise RuntimeError(f"{path}: no armature{' named ' + config.armature if config.armature else ''}")
    arm = armatures[0]
    camera = scene.objects.get(config.camera) if config.camera else scene.camera
    if camera is None:
        raise RuntimeError(f"{path}: no camera (set a scene camera or pass --camera)")
    actions = [a for a in bpy.data.actions if a.users >= 0 and a.frame_range[1] > a.frame_range[0]]
    if not actions:
        raise RuntimeError(f"{path}: no actions to render (animate the rig, or use the built-in motions)")
    action = rng.choice(sorted(actions, key=lambda a: a.name))
    if arm.animation_data is None:
        arm.animation_data_create()
    arm.animation_data.action = action
    if hasattr(arm.animation_data, "action_slot") and not arm.animation_data.action_slot:
        slots = getattr(action, "slots", None)
        if slots:
            arm.animation_data.action_slot = slots[0]
    start, end = (int(round(v)) for v in action.frame_range)
    return scene, arm, camera, start, end, f"{Path(path).name}:{action.name}"


def _builtin_scene(
    config: RenderConfig, motion: str, rng: random.Random, character: int | None = None
) -> tuple[Any, Any, Any, int, int, str]:
    bpy = _bpy()
    from frameprompt_blender.blender.demo_scene import build_demo_scene

    bpy.ops.wm.read_homefile(use_empty=True)
    demo = build_demo_scene()
    if character is not None:
        from frameprompt_blender.blender.characters import character_params, replace_demo_character

        demo = replace_demo_character(demo, character_params(character))
    length = max(2 * config.frames, 24)
    _key_motion(demo.armature, motion, length, rng)
    name = f"builtin:{motion}" + (f":char{character}" if character is not None else "")
    return demo.scene, demo.armature, demo.camera, 1, length, name


def render_clip(config: RenderConfig, index: int) -> Path:
    """Render clip `index` into <out>/clip_<index>; returns its folder."""
    _bpy()
    from mathutils import Vector

    from frameprompt_blender.blender.skeleton import export_skeleton_frames

    rng = random.Random(config.seed * 1_000_003 + index)
    out = Path(config.out)
    final = out / f"clip_{index:05d}"
    tmp = out / f".tmp-clip_{index:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TARGET_DIR).mkdir(parents=True)

    if config.blends:
        blend = config.blends[index % len(config.blends)] if len(config.blends) > 1 else config.blends[0]
        scene, arm, camera, start, end, source = _load_blend_scene(blend, config, rng)
    else:
        motion = config.motions[index % len(config.motions)]
        character = clip_character(config, index)
        scene, arm, camera, start, end, source = _builtin_scene(config, motion, rng, character)
    n = config.frames
    if end - start + 1 < n:
        raise RuntimeError(f"{source} has {end - start + 1} frames, fewer than --frames {n}")
    _setup_render(scene, config)
    scene.frame_set(start)
    heads = [arm.matrix_world @ pb.head for pb in arm.pose.bones]
    centre = sum(heads, Vector((0.0, 0.0, 0.0))) / max(1, len(heads))  # the character's middle
    # the demo camera frames the figure loosely: move it closer so the character fills the frame
    _jitter_camera(camera, centre, rng, distance=1.0 if config.blends else 0.78)
    _background(scene, rng)

    first = rng.randint(start, end - n + 1)
    frames = list(range(first, first + n))
    reference_frame = rng.randint(start, end)
    _render_frame(scene, reference_frame, tmp / REFERENCE_FILE)
    export_skeleton_frames(scene, arm, camera, frames, tmp, config.width, config.height)
    for i, f in enumerate(frames):
        _render_frame(scene, f, tmp / TARGET_DIR / frame_name(i))
    extra: dict[str, Any] = {"frames": frames, "reference_frame": reference_frame}
    if config.characters and not config.blends:
        extra["character"] = clip_character(config, index)
    write_meta(
        tmp,
        config.width,
        config.height,
        n,
        fps=config.fps,
        source=source,
        engine=config.engine,
        seed=config.seed,
        **extra,
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def clip_character(config: RenderConfig, index: int) -> int | None:
    """The character id of clip `index` with --characters (None: the plain demo humanoid)."""
    if not config.characters:
        return None
    from frameprompt_blender.blender.characters import pool_ids

    ids = pool_ids(config.characters, max(1, config.num_characters))
    # cycle characters with a stride coprime to the motion count, so each character gets several motions
    return ids[(index // max(1, len(config.motions)) + index) % len(ids)]


def render_dataset(config: RenderConfig) -> list[Path]:
    """Render `config.clips` clips, skipping those already complete; returns every clip folder."""
    for motion in config.motions:
        if motion not in MOTION_FUNCTIONS:
            raise ValueError(f"unknown motion {motion!r}; choose from {', '.join(MOTIONS)}")
    for blend in config.blends:
        if not Path(blend).is_file():
            raise FileNotFoundError(f"--blend {blend} does not exist")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    done = [i for i in range(config.clips) if (out / f"clip_{i:05d}" / "meta.json").is_file()]
    from tqdm.auto import tqdm

    bar = tqdm(total=config.clips, initial=len(done), desc="render clips", disable=not config.progress)
    folders = []
    for i in range(config.clips):
        folder = out / f"clip_{i:05d}"
        if i not in done:
            with _quiet():
                render_clip(config, i)
            bar.update()
        folders.append(folder)
    bar.close()
    return folders


class _quiet:
    """Silence Blender's per-frame 'Saved: ...' lines (C-level stdout) while rendering."""

    def __enter__(self) -> None:
        sys.stdout.flush()
        self.saved = os.dup(1)
        self.null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self.null, 1)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        os.dup2(self.saved, 1)
        os.close(self.saved)
        os.close(self.null)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must look like 256x256, got {text!r}") from error
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return w, h


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--blend", nargs="*", default=[], help=".blend files with a rigged character and actions"
    )
    parser.add_argument("--out", required=True, help="data set folder to write (existing clips are kept)")
    parser.add_argument("--clips", type=int, required=True, help="number of clips")
    parser.add_argument("--frames", type=int, required=True, help="N: skeleton/target frames per clip")
    parser.add_argument("--size", type=parse_size, default=(256, 256), help="WxH (default 256x256)")
    parser.add_argument(
        "--motions",
        default=",".join(MOTIONS),
        help=f"built-in motions without --blend (default {','.join(MOTIONS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="workbench", help="render engine")
    parser.add_argument("--samples", type=int, default=4, help="Cycles samples (default 4)")
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--armature", help="armature object name in the .blend files (default: the first)")
    parser.add_argument("--camera", help="camera object name (default: the scene camera)")
    parser.add_argument(
        "--characters",
        choices=["train", "test"],
        help="built-in scene: vary the procedural character, from the training or the held-out pool",
    )
    parser.add_argument(
        "--num-characters", type=int, default=50, help="how many characters of the pool (default 50)"
    )
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> RenderConfig:
    return RenderConfig(
        out=args.out,
        clips=args.clips,
        frames=args.frames,
        width=args.size[0],
        height=args.size[1],
        blends=list(args.blend),
        motions=[m.strip() for m in args.motions.split(",") if m.strip()],
        seed=args.seed,
        engine=args.engine,
        samples=args.samples,
        fps=args.fps,
        armature=args.armature,
        camera=args.camera,
        progress=not args.no_progress,
        characters=args.characters,
        num_characters=args.num_characters,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point inside a `blender -b --python render_dataset.py -- ARGS` process."""
    argv = list(sys.argv[sys.argv.index("--") + 1 :] if argv is None and "--" in sys.argv else argv or [])
    parser = argparse.ArgumentParser(prog="render_dataset")
    add_render_arguments(parser)
    render_dataset(config_from_args(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
