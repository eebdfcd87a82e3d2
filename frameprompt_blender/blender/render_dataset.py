"""Render a training data set in Blender: reference, N skeleton frames and N target frames per clip.

Runs inside Blender's Python: the `bpy` module (pip install bpy) or a `blender` binary
(`frameprompt dataset render --blender PATH` re-runs this file as `blender -b --python ... -- ARGS`).
No torch here.

Built-in clips are shaped like what a user sends (docs/dataset.md): the reference is a separate
render of the clip's first frame (the add-on renders the scene's first frame the same way), the N
targets follow it with large motion (walks and runs across the frame, jumps, crouches, turns, arm
swings), the camera is static within a clip and placed so the character fills 60-85 % of the frame
height, and the background (world and ground colour) is flat and static within a clip, varied
between clips. Skeletons come from the shared skeleton export
(`frameprompt_blender.blender.skeleton.export_skeleton_frames`, the code the add-on uses at inference).

With `--blend` files: one of the file's actions on its armature, the scene camera jittered.

From inside Blender, `render_character_dataset` renders the user's own character in the open scene:
its own actions and the built-in motions retargeted onto it (`blender.retarget`), through the scene
camera, leaving the scene as it was.

A clip is rendered into `.tmp-<clip>` and renamed when complete (meta.json written last), so
re-running the command skips finished clips and redoes an interrupted one; each clip has its own
seeded RNG, so a resumed run renders exactly the clips it would have rendered.
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

from ..core.dataset_format import REFERENCE_FILE, TARGET_DIR, write_meta
from ..core.frame_names import frame_name
from ..core.render_options import ENGINES, MOTIONS, add_render_arguments

X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)

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
    """Walking while waving one arm."""
    side = 1.0 if k["side"] > 0.5 else -1.0
    arm, fore = ("upper_arm.R", "forearm.R") if side > 0 else ("upper_arm.L", "forearm.L")
    bones, _, _ = _walk(ph, k, scale=0.7)
    bones.update(
        {
            arm: (Y, side * math.radians(150)),
            fore: (Y, side * (math.radians(20) + math.radians(50 * k["amp"]) * math.sin(2 * ph))),
            "spine.006": (Z, math.radians(10) * math.sin(ph)),
        }
    )
    return bones, (0.0, 0.0, 0.0), 0.0


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


def _crouch(ph: float, k: dict[str, float]) -> Pose3D:
    down = 0.5 - 0.5 * math.cos(ph)  # stand -> squat -> stand over one period
    depth = k["amp"] * down
    return (
        {
            "thigh.L": (X, -math.radians(80) * depth),
            "thigh.R": (X, -math.radians(80) * depth),
            "shin.L": (X, math.radians(120) * depth),
            "shin.R": (X, math.radians(120) * depth),
            "spine.001": (X, -math.radians(25) * depth),
            "upper_arm.L": (X, -math.radians(70) * depth),
            "upper_arm.R": (X, -math.radians(70) * depth),
        },
        (0.0, 0.0, -0.42 * depth),
        0.0,
    )


MOTION_FUNCTIONS: dict[str, Callable[[float, dict[str, float]], Pose3D]] = {
    "walk": _walk,
    "run": _run,
    "wave": _wave,
    "jump": _jump,
    "turn": _turn,
    "dance": _dance,
    "crouch": _crouch,
}
# how far a motion carries the character across the frame during a clip, as a fraction of the
# visible width: every clip moves (users animate motion, and a still clip teaches copying)
MOTION_TRAVEL = {
    "walk": (0.35, 0.6),
    "run": (0.5, 0.75),
    "wave": (0.2, 0.4),
    "jump": (0.25, 0.45),
    "turn": (0.25, 0.45),
    "dance": (0.15, 0.35),
    "crouch": (0.1, 0.3),
}
# the gait/cycle period of each motion in frames; "turn" and "crouch" span the clip once
MOTION_PERIODS = {"walk": (14, 20), "run": (10, 14), "wave": (12, 20), "jump": (12, 16), "dance": (12, 20)}


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


def _key_motion(
    arm: Any,
    motion: str,
    length: int,
    rng: random.Random,
    yaw: float = 0.0,
    travel: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Key a procedural motion on frames 1..length (one key per frame), the character facing `yaw`
    (radians about Z; 0 faces -Y) and carried by `travel` (world metres, x and y) over the clip."""
    _bpy()
    from mathutils import Matrix, Quaternion, Vector

    fn = MOTION_FUNCTIONS[motion]
    low, high = MOTION_PERIODS.get(motion, (length - 1, length - 1))
    period = max(2, rng.randint(low, high))
    k = {"amp": rng.uniform(0.7, 1.2), "side": rng.random()}
    arm.animation_data_clear()
    base_location = Vector(arm.location)
    bones = arm.pose.bones
    for pb in bones:
        pb.rotation_mode = "QUATERNION"
    for f in range(1, length + 1):
        along = (f - 1) / max(1, length - 1)
        # turn and crouch play once over the clip, the others cycle with their period
        ph = 2 * math.pi * (along if motion in ("turn", "crouch") else (f - 1) / period % 1.0)
        rotations, offset, motion_yaw = fn(ph, k)
        for pb in bones:
            if pb.name in rotations:
                axis, angle = rotations[pb.name]
                local = pb.bone.matrix_local.to_3x3().inverted() @ Vector(axis)
                pb.rotation_quaternion = Quaternion(local.normalized(), angle)
            else:
                pb.rotation_quaternion = Quaternion()
            pb.keyframe_insert("rotation_quaternion", frame=f)
        step = Vector((travel[0] * along, travel[1] * along, 0.0))
        arm.location = base_location + step + Matrix.Rotation(yaw, 3, "Z") @ Vector(offset)
        arm.rotation_euler.z = yaw + motion_yaw
        arm.keyframe_insert("location", frame=f)
        arm.keyframe_insert("rotation_euler", frame=f)


def _stage_builtin_clip(
    demo: Any, motion: str, length: int, rng: random.Random, character_height: float
) -> None:
    """Place the camera and key the motion so the clip looks like a user's shot: the character fills
    60-85 % of the frame height and crosses the frame from side to side."""
    _bpy()
    from mathutils import Matrix, Vector

    camera, arm = demo.camera, demo.armature
    half_fov = math.atan(camera.data.sensor_width / (2 * camera.data.lens))  # square frames: fit is moot
    fill = rng.uniform(0.6, 0.85)
    visible = character_height / fill  # metres seen from bottom to top (and left to right)
    distance = visible / (2 * math.tan(half_fov))
    azimuth = rng.uniform(-math.pi, math.pi)
    towards_camera = Vector((math.sin(azimuth), -math.cos(azimuth), 0.0))
    right = Vector((math.cos(azimuth), math.sin(azimuth), 0.0))  # the camera's right in the ground plane

    low, high = MOTION_TRAVEL.get(motion, (0.0, 0.0))
    path = rng.uniform(low, high) * visible
    if path > 0:
        # across the frame, up to about 23 degrees towards or away from the camera
        direction = Matrix.Rotation(rng.uniform(-0.4, 0.4), 3, "Z") @ (right * rng.choice((-1.0, 1.0)))
        heading = direction
    else:
        direction = Vector((0.0, 0.0, 0.0))
        turn = rng.uniform(-1.3, 1.3)
        heading = Vector((math.sin(azimuth + turn), -math.cos(azimuth + turn), 0.0))
    yaw = math.atan2(heading.x, -heading.y)  # the character faces -Y at yaw 0
    start = -direction * (path / 2)
    arm.location = (start.x, start.y, 0.0)
    arm.rotation_euler = (0.0, 0.0, yaw)
    _key_motion(arm, motion, length, rng, yaw, tuple(direction.xy * path))  # type: ignore[arg-type]

    aim = Vector((0.0, 0.0, character_height * rng.uniform(0.45, 0.55)))
    camera.location = aim + towards_camera * distance + Vector((0.0, 0.0, rng.uniform(-0.2, 0.4)))
    camera.rotation_euler = (aim - camera.location).to_track_quat("-Z", "Y").to_euler()
    demo.ground.scale = (6.0, 6.0, 1.0)  # no ground edge in view at any distance used here


def _jitter_camera(camera: Any, target: Any, rng: random.Random) -> None:
    """Orbit the camera around the character by +-25 deg, move it +-12 % closer/farther, +-0.15 m up/down,
    and aim it at `target` (a world point)."""
    _bpy()
    from mathutils import Matrix, Vector

    offset = Vector(camera.location) - target
    offset = Matrix.Rotation(math.radians(rng.uniform(-25, 25)), 3, "Z") @ offset
    offset *= rng.uniform(0.88, 1.12)
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


def _assign_action(arm: Any, action: Any) -> None:
    """Play `action` on `arm` (in Blender 4.4+ through the action's first slot when none is picked)."""
    if arm.animation_data is None:
        arm.animation_data_create()
    arm.animation_data.action = action
    if hasattr(arm.animation_data, "action_slot") and not arm.animation_data.action_slot:
        slots = getattr(action, "slots", None)
        if slots:
            arm.animation_data.action_slot = slots[0]


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
    _assign_action(arm, action)
    start, end = (int(round(v)) for v in action.frame_range)
    return scene, arm, camera, start, end, f"{Path(path).name}:{action.name}"


def _builtin_scene(
    config: RenderConfig,
    motion: str,
    rng: random.Random,
    character: int | None = None,
    stride: int | None = None,
) -> tuple[Any, Any, Any, int, list[int], str]:
    """The built-in humanoid (or procedural character) staged as a user's shot; returns scene,
    armature, camera, the reference frame (the clip's first) and the N target frames after it."""
    bpy = _bpy()
    from .demo_scene import build_demo_scene

    bpy.ops.wm.read_homefile(use_empty=True)
    demo = build_demo_scene()
    if character is not None:
        from .characters import character_params, replace_demo_character

        demo = replace_demo_character(demo, character_params(character))
    # every frame or every other one: N targets then span up to 2N frames of motion
    stride = stride or rng.choice((1, 2, 2))
    length = 1 + stride * config.frames
    top = max(b.tail_local.z for b in demo.armature.data.bones) * demo.armature.scale.z
    _stage_builtin_clip(demo, motion, length, rng, character_height=1.05 * top)
    name = f"builtin:{motion}" + (f":char{character}" if character is not None else "")
    targets = [1 + stride * (i + 1) for i in range(config.frames)]
    return demo.scene, demo.armature, demo.camera, 1, targets, name


def _blend_clip(
    path: str, config: RenderConfig, rng: random.Random
) -> tuple[Any, Any, Any, int, list[int], str]:
    """A user's .blend: one of its actions, a random window of N frames, a random reference frame."""
    from mathutils import Vector

    scene, arm, camera, start, end, source = _load_blend_scene(path, config, rng)
    n = config.frames
    if end - start + 1 < n:
        raise RuntimeError(f"{source} has {end - start + 1} frames, fewer than --frames {n}")
    scene.frame_set(start)
    heads = [arm.matrix_world @ pb.head for pb in arm.pose.bones]
    centre = sum(heads, Vector((0.0, 0.0, 0.0))) / max(1, len(heads))  # the character's middle
    _jitter_camera(camera, centre, rng)
    first = rng.randint(start, end - n + 1)
    return scene, arm, camera, rng.randint(start, end), list(range(first, first + n)), source


def stage_demo_shot(
    num_frames: int, width: int, height: int, character: int = 10, motion: str = "walk", seed: int = 2
) -> Any:
    """The demo's scene: a held-out character (`characters.is_held_out`) doing a built-in motion, staged
    like a training clip, with the reference at frame 1 and the N animated frames at 2..N+1; returns it."""
    config = RenderConfig(out="", clips=1, frames=num_frames, width=width, height=height)
    rng = random.Random(seed)
    scene, *_ = _builtin_scene(config, motion, rng, character, stride=1)
    _setup_render(scene, config)
    _background(scene, rng)
    scene.frame_start, scene.frame_end = 1, 1 + num_frames
    scene.frame_set(1)
    return scene


def render_clip(config: RenderConfig, index: int) -> Path:
    """Render clip `index` into <out>/clip_<index>; returns its folder."""
    _bpy()
    rng = random.Random(config.seed * 1_000_003 + index)
    out = Path(config.out)
    final = out / f"clip_{index:05d}"
    tmp = out / f".tmp-clip_{index:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TARGET_DIR).mkdir(parents=True)

    if config.blends:
        blend = config.blends[index % len(config.blends)] if len(config.blends) > 1 else config.blends[0]
        scene, arm, camera, reference_frame, frames, source = _blend_clip(blend, config, rng)
    else:
        motion = config.motions[index % len(config.motions)]
        character = clip_character(config, index)
        scene, arm, camera, reference_frame, frames, source = _builtin_scene(config, motion, rng, character)
    _setup_render(scene, config)
    _background(scene, rng)

    meta: dict[str, Any] = {"fps": config.fps, "source": source, "engine": config.engine, "seed": config.seed,
                            "frames": frames, "reference_frame": reference_frame}  # fmt: skip
    if config.characters and not config.blends:
        meta["character"] = clip_character(config, index)
    return _write_clip(
        tmp,
        final,
        (scene, arm, camera),
        reference_frame,
        frames,
        (config.width, config.height),
        lambda f, path: _render_frame(scene, f, path),
        meta,
    )


def _write_clip(
    tmp: Path,
    final: Path,
    shot: tuple[Any, Any, Any],
    reference_frame: int,
    frames: list[int],
    size: tuple[int, int],
    render: Callable[[int, Path], None],
    meta: dict[str, Any],
) -> Path:
    """Render the reference, the skeletons and the targets of one clip into `tmp`, write meta.json last
    (`meta`: its entries after the size, in order), and move the folder to `final`; returns it."""
    from .skeleton import export_skeleton_frames

    scene, arm, camera = shot
    width, height = size
    render(reference_frame, tmp / REFERENCE_FILE)
    export_skeleton_frames(scene, arm, camera, frames, tmp, width, height)
    for i, f in enumerate(frames):
        render(f, tmp / TARGET_DIR / frame_name(i))
    write_meta(tmp, width, height, len(frames), **meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def clip_character(config: RenderConfig, index: int) -> int | None:
    """The character id of clip `index` with --characters (None: the plain demo humanoid)."""
    if not config.characters:
        return None
    from .characters import pool_ids

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


# -- a data set of the user's own character, in the scene as it is ------------------------------------

CHARACTER_SOURCE_RIG = "FP_MotionSource"


def render_character_dataset(
    armature_obj: Any,
    out_dir: str | os.PathLike,
    *,
    clips: int,
    frames: int,
    size: int | tuple[int, int],
    include_builtin_motions: bool = True,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    motions: Sequence[str] = MOTIONS,
    engine: str | None = None,
) -> Path:
    """Render `clips` training clips of the character `armature_obj` drives, in the current scene as it
    is (its meshes, materials, lights, world), into `out_dir`, in the data-set format
    (`core.dataset_format`, docs/dataset.md); returns `out_dir`.

    Each clip plays one motion: the armature's own actions (those that animate its bones and last at
    least `frames` + 1 frames) and, with `include_builtin_motions`, the built-in motions (`motions`, default
    all) retargeted onto the rig (`blender.retarget`), taken in turn. The reference is the clip's first
    frame, the `frames` targets follow with a stride of 1 or 2 frames (as in the built-in data set), seen
    through the scene camera; without one, through a camera framed on the character from a random side
    of its front, made for the clip and removed again. `size`: width and height (one number: square),
    multiples of 16. `engine`: "workbench", "eevee" or "cycles" to override the scene's own engine.
    `seed` makes the data set reproducible (clip k draws from the RNG seeded with (seed, k)); finished
    clips are kept, so raising `clips` later adds clips. `progress(done, total)` is called after each
    clip.

    The scene is left as it was: the armature's action and pose, the frame, the camera and the render
    settings are restored and everything made for a clip is removed. Raises FramePromptUserError naming
    the problem (no humanoid, no usable motion, a bad size)."""
    bpy = _bpy()
    from .export import FramePromptUserError
    from .reference import _temporarily
    from .skeleton import require_humanoid

    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise FramePromptUserError(
            f"training size {width}x{height} is not made of multiples of 16 (the model's VAE and patch "
            "need them); pick e.g. 256x256"
        )
    if clips <= 0 or frames <= 0:
        raise FramePromptUserError(f"a data set needs clips > 0 and frames > 0 (got {clips} and {frames})")
    if engine is not None and engine not in ENGINES:
        raise FramePromptUserError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    unknown = [m for m in motions if m not in MOTION_FUNCTIONS]
    if unknown:
        raise FramePromptUserError(f"unknown motion {unknown[0]!r}; choose from {', '.join(MOTIONS)}")
    if armature_obj is None or getattr(armature_obj, "type", None) != "ARMATURE":
        raise FramePromptUserError(
            f"{getattr(armature_obj, 'name', None)!r} is not an armature: pick the character's armature"
        )
    try:
        require_humanoid(armature_obj)
    except ValueError as error:
        raise FramePromptUserError(str(error)) from None
    scene = bpy.context.scene
    sources: list[tuple[str, Any]] = [("action", a) for a in _own_actions(armature_obj, frames + 1)]
    if include_builtin_motions:
        sources += [("builtin", m) for m in motions]
    if not sources:
        raise FramePromptUserError(
            f"armature '{armature_obj.name}' has no action of at least {frames + 1} frames (a reference and "
            f"{frames} targets); animate it, or include the built-in motions"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    render_engine = {} if engine is None else {"engine": _engine_id(scene, engine)}
    with _temporarily(scene.render, **render_engine), _scene_restored(scene, armature_obj):
        for i in range(clips):
            final = out / f"clip_{i:05d}"
            if not (final / "meta.json").is_file():
                kind, what = sources[i % len(sources)]
                with _quiet():
                    _character_clip(scene, armature_obj, kind, what, out, i, frames, (width, height), seed)
            if progress is not None:
                progress(i + 1, clips)
    return out


def _engine_id(scene: Any, engine: str) -> str:
    name = ENGINES[engine]
    known = {e.identifier for e in type(scene.render).bl_rna.properties["engine"].enum_items}
    return "BLENDER_EEVEE" if name == "BLENDER_EEVEE_NEXT" and name not in known else name


def _own_actions(armature_obj: Any, length: int) -> list[Any]:
    """The file's actions that animate this armature's bones and last at least `length` frames."""
    bpy = _bpy()
    from .mocap import action_fcurves, bone_names_in

    bones = {b.name for b in armature_obj.data.bones}
    found = []
    for action in sorted(bpy.data.actions, key=lambda a: a.name):
        start, end = action.frame_range
        if (
            int(round(end)) - int(round(start)) + 1 >= length
            and bone_names_in(action_fcurves(action)) & bones
        ):
            found.append(action)
    return found


class _scene_restored:
    """Put back what making clips changes: the armature's action and pose, the frame, the scene camera,
    the active object, its selection and mode."""

    def __init__(self, scene: Any, arm: Any) -> None:
        self.scene, self.arm = scene, arm

    def __enter__(self) -> None:
        bpy = _bpy()
        ad = self.arm.animation_data
        self.action = ad.action if ad else None
        self.slot = getattr(ad, "action_slot", None) if ad else None
        self.basis = {pb.name: pb.matrix_basis.copy() for pb in self.arm.pose.bones}
        self.frame = self.scene.frame_current
        self.camera = self.scene.camera
        view_layer = bpy.context.view_layer
        self.active = view_layer.objects.active
        self.selected = [o for o in view_layer.objects if o.select_get()]
        self.mode = self.active.mode if self.active is not None else "OBJECT"
        if self.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")

    def __exit__(self, *exc: object) -> None:
        bpy = _bpy()
        ad = self.arm.animation_data
        if ad is not None:
            ad.action = self.action
            if self.slot is not None:
                ad.action_slot = self.slot
        for pb in self.arm.pose.bones:
            if pb.name in self.basis:
                pb.matrix_basis = self.basis[pb.name]
        self.scene.camera = self.camera
        view_layer = bpy.context.view_layer
        for o in view_layer.objects:
            o.select_set(o in self.selected)
        view_layer.objects.active = self.active
        if self.active is not None and self.mode != "OBJECT":
            bpy.ops.object.mode_set(mode=self.mode)
        self.scene.frame_set(self.frame)


def _character_clip(
    scene: Any,
    arm: Any,
    kind: str,
    what: Any,
    out: Path,
    index: int,
    n: int,
    size: tuple[int, int],
    seed: int,
) -> Path:
    """One clip of the user's character: its own action `what`, or the built-in motion `what` baked onto it."""
    bpy = _bpy()
    from .reference import render_reference

    rng = random.Random(seed * 1_000_003 + index)
    tmp, final = out / f".tmp-clip_{index:05d}", out / f"clip_{index:05d}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TARGET_DIR).mkdir(parents=True)
    made: list[Any] = []  # objects and actions to remove again
    try:
        stride = rng.choice((1, 2, 2))
        if kind == "action":
            start, end = (int(round(v)) for v in what.frame_range)
            stride = min(stride, (end - start) // n)
            first = rng.randint(start, end - stride * n)
            _assign_action(arm, what)
            source = f"{Path(bpy.data.filepath).name or 'unsaved'}:{what.name}"
        else:
            length = 1 + stride * n
            made += _bake_builtin_motion(scene, arm, what, length, rng)
            first = 1
            source = f"builtin:{what}:retargeted"
        camera = scene.camera
        if camera is None:
            camera = _framing_camera(scene, arm, first, rng)
            made.append(camera)
        reference, targets = first, [first + stride * (i + 1) for i in range(n)]
        meta = {"fps": scene.render.fps, "source": source, "engine": scene.render.engine, "seed": seed,
                "armature": arm.name}  # fmt: skip
        return _write_clip(tmp, final, (scene, arm, camera), reference, targets, size,
                           lambda f, path: render_reference(scene, camera, f, size[0], size[1], path),
                           meta)  # fmt: skip
    finally:
        for thing in made:
            if isinstance(thing, bpy.types.Action):
                bpy.data.actions.remove(thing)
            else:
                data = thing.data
                bpy.data.objects.remove(thing)
                if data.users == 0:
                    blocks = bpy.data.armatures if isinstance(data, bpy.types.Armature) else bpy.data.cameras
                    blocks.remove(data)
        shutil.rmtree(tmp, ignore_errors=True)


def _bake_builtin_motion(scene: Any, arm: Any, motion: str, length: int, rng: random.Random) -> list[Any]:
    """Key the built-in `motion` on a temporary demo rig (walks and runs travel forward) and bake it onto
    `arm`; returns what was made (the rig, its action, the baked action)."""
    from .demo_scene import BONES, build_armature
    from .retarget import bake_retarget

    rig = build_armature(scene.collection, BONES, CHARACTER_SOURCE_RIG)
    low, high = MOTION_TRAVEL.get(motion, (0.0, 0.0)) if motion in ("walk", "run") else (0.0, 0.0)
    _key_motion(rig, motion, length, rng, 0.0, (0.0, -rng.uniform(low, high)))  # the rig faces -Y
    made = [rig, rig.animation_data.action]
    made.append(bake_retarget(rig, arm, range(1, length + 1), scene=scene, action_name=f"FP_{motion}"))
    return made


def _framing_camera(scene: Any, arm: Any, frame: int, rng: random.Random) -> Any:
    """A camera for a scene without one: in front of the character (within 60 degrees either side), at
    chest height, far enough that the character fills about 75 % of the frame height."""
    bpy = _bpy()
    from mathutils import Matrix, Vector

    scene.frame_set(frame)
    mw = arm.matrix_world
    points = [mw @ p for b in arm.pose.bones for p in (b.head, b.tail)]
    low = min(p.z for p in points)
    top = max(p.z for p in points)
    centre = sum(points, Vector((0.0, 0.0, 0.0))) / len(points)
    data = bpy.data.cameras.new("FP_DatasetCamera")
    camera = bpy.data.objects.new("FP_DatasetCamera", data)
    scene.collection.objects.link(camera)
    half_fov = math.atan(data.sensor_width / (2 * data.lens))
    distance = (top - low) / 0.75 / (2 * math.tan(half_fov))
    front = (mw.to_3x3() @ Vector((0.0, -1.0, 0.0))).normalized()  # Blender characters face -Y
    side = Matrix.Rotation(rng.uniform(-math.pi / 3, math.pi / 3), 3, "Z") @ front
    aim = Vector((centre.x, centre.y, low + 0.55 * (top - low)))
    camera.location = aim + side * distance
    camera.rotation_euler = (aim - camera.location).to_track_quat("-Z", "Y").to_euler()
    return camera


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
    """`python -m frameprompt_blender.blender.render_dataset ARGS` (the bpy module) or
    `blender -b --python-expr ... -- ARGS`: the process `frameprompt dataset render` starts."""
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    parser = argparse.ArgumentParser(prog="frameprompt dataset render")
    add_render_arguments(parser)
    try:
        folders = render_dataset(config_from_args(parser.parse_args(argv)))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"frameprompt dataset render: {error}", file=sys.stderr)
        return 2
    print(f"{len(folders)} clips in {folders[0].parent if folders else '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
