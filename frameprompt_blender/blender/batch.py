"""Headless batch entry: export -> backend -> result frames -> Sequencer strip -> saved .blend (-> MP4).

From a shell, with the bpy module (pip install bpy) or inside Blender::

    python -m frameprompt_blender.batch SCENE.blend --server tcp://127.0.0.1:5555 --out DIR
    blender -b SCENE.blend --python-expr "import frameprompt_blender.blender.batch as b; b.main()" \\
        -- --server tcp://127.0.0.1:5555 --out DIR [--frames 16] [--start 1] [--render-mp4]

Without ``--server`` the batch starts a local backend (``frameprompt serve`` on a free loopback port, from
``--backend-python`` or the environment found automatically, as the panel's local mode does) and stops it
at the end. ``--export-only`` writes just the job folder (``DIR/reference.png``, ``DIR/pose/``, ``DIR/skeleton/``)
and needs no server. Without ``--width/--height`` an export has the scene's render size (resolution x
percentage), and an animation the camera's aspect at the pixel count of the server's model (its native
size, from hello), within the largest size it takes; without ``--start/--frames`` the scene's frame
range. ``--mocap FILE`` imports a BVH or
FBX clip first. On any failure the message goes to stderr and the exit code is non-zero.

From Python (bpy imported, a scene built or loaded)::

    from frameprompt_blender.blender.batch import run_batch
    paths = run_batch(bpy.context.scene, server_address="tcp://127.0.0.1:5555", out_dir="out")
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import bpy

from .export import FramePromptUserError, JobSpec, export_job
from .jobs import JobFailed, JobManager
from .preferences import DEFAULT_ADDRESS, Settings
from .sequencer import find_strip, strip_range


def _resolve_scene(scene: Any) -> Any:
    if scene is None:
        return bpy.context.scene
    if isinstance(scene, str):
        found = bpy.data.scenes.get(scene)
        if found is None:
            names = ", ".join(s.name for s in bpy.data.scenes)
            raise FramePromptUserError(f"No scene named '{scene}' (scenes: {names})")
        return found
    return scene


def _resolve_object(scene: Any, obj: Any, kind: str) -> Any:
    if obj is not None and not isinstance(obj, str):
        return obj
    if isinstance(obj, str):
        found = bpy.data.objects.get(obj)
        if found is None or found.type != kind:
            raise FramePromptUserError(f"No {kind.lower()} object named '{obj}' in the file")
        return found
    if kind == "CAMERA":
        if scene.camera is None:
            raise FramePromptUserError(
                f"Scene '{scene.name}' has no camera: add one and make it the scene camera, or pass --camera NAME"
            )
        return scene.camera
    found = [o for o in scene.objects if o.type == kind]
    if len(found) == 1:
        return found[0]
    if not found:
        seen = ", ".join(f"{o.name} ({o.type.lower()})" for o in scene.objects) or "none"
        raise FramePromptUserError(
            f"Scene '{scene.name}' has no armature (objects: {seen}): the character needs a rig; import one "
            "(File > Import > Motion Capture (.bvh) or FBX) or pass --mocap FILE"
        )
    names = ", ".join(o.name for o in found)
    raise FramePromptUserError(f"Scene '{scene.name}' has several armatures ({names}): pass --armature NAME")


def _default_num_frames(scene: Any, start: int) -> int:
    return max(1, scene.frame_end - start + 1)


def scene_render_size(scene: Any) -> tuple[int, int]:
    """The scene's render size in pixels: resolution x percentage, as Blender computes it."""
    r = scene.render
    return r.resolution_x * r.resolution_percentage // 100, r.resolution_y * r.resolution_percentage // 100


def _output_size(
    scene: Any, width: int | None, height: int | None, export_only: bool, say: Any, model: Any = None
) -> tuple[int, int, bool]:
    """(width, height, scene_resolution): explicit sizes as given; else for an export the scene's render
    size, exact (the skeleton then lines up with the scene camera's own render); for the model, with
    `model` (the server's hello `model_size`) the camera's aspect at the model's native pixel count in
    its size multiples and within its largest size, as the panel's "Model size" does; without (an older
    server) the scene's render size rounded to multiples of 16, as the panel's "Scene resolution" does."""
    if (width is None) != (height is None):
        raise FramePromptUserError(
            "Pass both --width and --height, or neither to use the scene's render size"
        )
    if width is not None and height is not None:
        return int(width), int(height), False
    w, h = scene_render_size(scene)
    if export_only:
        say(f"frameprompt: size {w}x{h}, the scene's render resolution")
        return w, h, True
    if model is not None:
        from .properties import model_output_size

        mw, mh = model_output_size(scene, model) or (w, h)
        say(
            f"frameprompt: size {mw}x{mh}: the camera's aspect at the model's native "
            f"{model.native_width}x{model.native_height} pixels (at most {model.max_width}x{model.max_height})"
        )
        return mw, mh, False
    w16, h16 = max(16, round(w / 16) * 16), max(16, round(h / 16) * 16)
    if (w16, h16) == (w, h):
        say(f"frameprompt: size {w}x{h}, the scene's render resolution")
        return w, h, True
    say(f"frameprompt: size {w16}x{h16}: the scene's {w}x{h} rounded to multiples of 16 for the model")
    return w16, h16, False


def render_sequencer_mp4(
    scene: Any, out_path: Path, frame_start: int, frame_end: int, width: int, height: int
) -> Path:
    """Render the scene's Sequencer over [frame_start, frame_end] to an H.264 MP4."""
    r = scene.render
    im = r.image_settings
    if hasattr(im, "media_type"):  # 5.0+
        im.media_type = "VIDEO"
    im.file_format = "FFMPEG"
    r.ffmpeg.format = "MPEG4"
    r.ffmpeg.codec = "H264"
    r.ffmpeg.constant_rate_factor = "HIGH"
    r.use_sequencer = True
    r.resolution_x, r.resolution_y, r.resolution_percentage = int(width), int(height), 100
    scene.frame_start, scene.frame_end = int(frame_start), int(frame_end)
    r.use_file_extension = False
    r.filepath = str(out_path)
    bpy.ops.render.render(animation=True, scene=scene.name)
    if not out_path.is_file():
        raise RuntimeError(f"rendering the Sequencer to {out_path} wrote no file")
    return out_path


def run_batch(
    scene: Any = None,
    *,
    server_address: str | None = DEFAULT_ADDRESS,
    out_dir: str | Path,
    armature: Any = None,
    camera: Any = None,
    frame_start: int | None = None,
    num_frames: int | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int = 20,
    seed: int = 0,
    guidance: float = 5.0,
    prompt: str = "",
    lora: str = "",
    reference_image: str = "",
    reference_frame: int | None = None,
    save_blend_path: str | Path | None = None,
    save_blend: bool = True,
    render_mp4: bool = False,
    export_only: bool = False,
    connect_timeout: float = 10.0,
    job_timeout: float = 3600.0,
    curve_keys_dir: str = "",
    backend_python: str = "",
    backend_model: str = "",
    backend_args: str = "",
    preview_mode: str = "OFF",
    log: Any = print,
) -> dict[str, Any]:
    """Animate ``scene`` headless and return the paths written.

    Writes ``out_dir/reference.png``, ``out_dir/pose/``, ``out_dir/skeleton/`` and (unless
    ``export_only``) ``out_dir/frames/0000.png ...``, adds an image strip at ``frame_start`` on the first
    free Sequencer channel, saves ``save_blend_path`` (default ``out_dir/<scene name>.blend``; pass
    ``save_blend=False`` to skip) and with ``render_mp4`` renders ``out_dir/<scene name>.mp4``.

    Without ``width``/``height`` the size is, for ``export_only``, the scene's render resolution x
    percentage; else the scene camera's aspect at the model's native pixel count, rounded to the model's
    size multiple and within its largest size, as the server's hello reports them (``model_size``; an
    older server: the scene's render size rounded to multiples of 16). Without
    ``frame_start``/``num_frames``, the scene's frame range.

    ``server_address=None`` starts a local backend (``backend_python``: its Python environment, empty =
    found automatically; ``backend_model``, ``backend_args``: its ``--model`` and more ``frameprompt serve``
    options) and stops it before returning. ``preview_mode`` "FAST"/"VAE" writes live previews to
    ``out_dir/previews/``.

    Returns ``{"job_dir", "reference", "pose_dir", "skeleton_dir", "frames", "frames_dir", "strip",
    "blend", "video"}`` (absent outputs are None). Raises FramePromptUserError (bad scene or settings)
    or JobFailed (backend absent, backend error, cancelled).
    """
    say = log or (lambda *_: None)
    scene = _resolve_scene(scene)
    arm = _resolve_object(scene, armature, "ARMATURE")
    cam = _resolve_object(scene, camera, "CAMERA")
    start = int(scene.frame_start if frame_start is None else frame_start)
    n = int(_default_num_frames(scene, start) if num_frames is None else num_frames)
    manager: JobManager | None = None
    settings: Settings | None = None
    model = None
    if not export_only:
        settings = Settings(
            backend_mode="REMOTE" if server_address else "LOCAL",
            python_env=backend_python,
            local_model=backend_model,
            local_args=backend_args,
            idle_timeout=0.0,
            preview_mode=preview_mode,
            server_address=server_address or DEFAULT_ADDRESS,
            curve_keys_dir=curve_keys_dir,
            connect_timeout=connect_timeout,
            job_timeout=job_timeout,
            keep_inputs=True,
        )
        manager = JobManager()
        manager.log_to_stdout = log is not None
    try:
        if manager is not None and settings is not None and width is None and height is None:
            # the size comes from the server's model: ask it before exporting
            from ..wire.protocol import ModelSize

            model = ModelSize.from_hello(manager.test_connection(settings))
        width, height, scene_resolution = _output_size(scene, width, height, export_only, say, model)
        out = Path(out_dir).resolve()
        spec = JobSpec(
            scene=scene.name,
            armature=arm.name,
            camera=cam.name,
            frame_start=start,
            num_frames=n,
            width=width,
            height=height,
            scene_resolution=scene_resolution,
            reference_source="IMAGE" if reference_image else "RENDER",
            reference_frame=reference_frame,
            reference_image=str(reference_image),
            prompt=prompt,
            seed=int(seed),
            steps=int(steps),
            guidance=float(guidance),
            lora=lora,
        )
        export = export_job(spec, out, log=lambda m: say(f"frameprompt: {m}"))
        for w in export.warnings:
            say(f"frameprompt: warning: {w}")
        result: dict[str, Any] = {
            "job_dir": str(out),
            "reference": str(export.reference),
            "pose_dir": str(export.pose_dir),
            "skeleton_dir": str(export.skeleton_dir),
            "frames": [],
            "frames_dir": None,
            "strip": None,
            "blend": None,
            "video": None,
        }
        if export_only or manager is None or settings is None:
            return result

        state = manager.run_blocking(spec, export, settings, scene.name)
        result["frames"] = list(state.frames)
        result["frames_dir"] = str(out / "frames")
        result["strip"] = state.strip

        if save_blend:
            blend = Path(save_blend_path) if save_blend_path else out / f"{_safe(scene.name)}.blend"
            blend = blend.resolve()
            blend.parent.mkdir(parents=True, exist_ok=True)
            bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=False)
            strip = find_strip(scene, state.strip)
            if (
                strip is not None
            ):  # store the frames relative to the new .blend: the pair can be moved together
                with contextlib.suppress(ValueError):
                    strip.directory = bpy.path.relpath(str(out / "frames")) + "/"
                bpy.ops.wm.save_mainfile()
            result["blend"] = str(blend)
            say(f"frameprompt: saved {blend}")

        if render_mp4:
            strip = find_strip(scene, state.strip)
            s0, s1 = strip_range(strip)
            video = out / f"{_safe(scene.name)}.mp4"
            render_sequencer_mp4(scene, video, s0, s1 - 1, width, height)
            result["video"] = str(video)
            say(f"frameprompt: rendered {video}")
        return result
    finally:
        if manager is not None:
            manager.close_client()
        if settings is not None and settings.backend_mode == "LOCAL":
            from .local_backend import stop_local_backend

            stop_local_backend()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "scene"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m frameprompt_blender.batch",
        description="Animate a Blender scene with a FramePrompt backend, headless.",
    )
    p.add_argument("blend", nargs="?", help="scene .blend to open (omit inside `blender -b SCENE.blend`)")
    p.add_argument(
        "--demo-scene",
        action="store_true",
        help="instead of a .blend: the built-in demo (a held-out character walking across the frame; "
        "reference at frame 1, animation from frame 2)",
    )
    p.add_argument(
        "--server",
        default=None,
        help="backend address, e.g. tcp://127.0.0.1:5555 (default: start a local backend for this run)",
    )
    p.add_argument(
        "--backend-python",
        default="",
        help="local backend: the Python environment with frameprompt (default: found automatically)",
    )
    p.add_argument("--backend-model", default="", help="local backend: its --model folder")
    p.add_argument("--backend-args", default="", help="local backend: more `frameprompt serve` options")
    p.add_argument(
        "--previews",
        choices=("off", "fast", "vae"),
        default="off",
        help="write live previews to OUT/previews/ (default off)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scene", help="scene name (default: the active scene)")
    p.add_argument("--armature", help="armature object name (default: the scene's only armature)")
    p.add_argument("--camera", help="camera object name (default: the scene camera)")
    p.add_argument(
        "--mocap",
        metavar="FILE",
        help="import this .bvh or .fbx first (Blender's importers) and animate it; the scene's frame range "
        "becomes the clip's",
    )
    p.add_argument(
        "--mocap-onto",
        action="store_true",
        help="put the clip's animation onto the armature (--armature, or the scene's only one) instead of "
        "importing its own armature: as it is when the armature has the bones it animates, else retargeted "
        "(bones paired by their role in the body)",
    )
    p.add_argument("--mocap-scale", type=float, default=1.0, help="importer scale (BVH in cm: 0.01)")
    p.add_argument("--start", type=int, help="first frame (default: the scene start)")
    p.add_argument("--frames", type=int, help="number of frames N, any count (default: the scene range)")
    p.add_argument(
        "--width",
        type=int,
        help="output width (default: the camera's aspect at the model's native pixel count; "
        "--export-only: the scene's render size)",
    )
    p.add_argument(
        "--height",
        type=int,
        help="output height (default: the camera's aspect at the model's native pixel count; "
        "--export-only: the scene's render size)",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--prompt", default="")
    p.add_argument("--lora", default="")
    p.add_argument("--reference-image", default="", help="use this image instead of rendering the scene")
    p.add_argument("--reference-frame", type=int, help="frame rendered as the reference (default: --start)")
    p.add_argument("--render-mp4", action="store_true", help="also render the Sequencer to DIR/<scene>.mp4")
    p.add_argument("--export-only", action="store_true", help="write only the job folder; no server needed")
    p.add_argument("--no-save", action="store_true", help="do not save DIR/<scene>.blend")
    p.add_argument("--save-blend", help="save the .blend here instead of DIR/<scene>.blend")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the backend to answer")
    p.add_argument(
        "--job-timeout", type=float, default=3600.0, help="seconds without progress before giving up"
    )
    p.add_argument("--keys", default="", help="CurveZMQ key folder from `frameprompt keys --client NAME`")
    return p


def _script_args(argv: list[str] | None) -> list[str]:
    if argv is not None:
        return list(argv)
    if "--" in sys.argv:  # blender -b ... --python-expr ... -- ARGS
        return sys.argv[sys.argv.index("--") + 1 :]
    return sys.argv[1:]


def run(argv: list[str] | None = None) -> int:
    """Parse arguments, run the batch, print a JSON summary; returns the exit code."""
    args = build_parser().parse_args(_script_args(argv))
    try:
        if args.demo_scene:
            from .render_dataset import stage_demo_shot

            # the demo stages its own scene at this size, which the batch then reads back
            stage_demo_shot(args.frames or 8, args.width or 480, args.height or 832)
        elif args.blend:
            path = Path(args.blend)
            if not path.is_file():
                raise FramePromptUserError(f"{path} not found")
            bpy.ops.wm.open_mainfile(filepath=str(path.resolve()))
        armature = args.armature
        if args.mocap:
            from .mocap import import_mocap

            scene = _resolve_scene(args.scene)
            onto = _resolve_object(scene, args.armature, "ARMATURE") if args.mocap_onto else None
            armature = import_mocap(args.mocap, scene, onto=onto, scale=args.mocap_scale).name
        paths = run_batch(
            args.scene,
            server_address=args.server,
            out_dir=args.out,
            armature=armature,
            camera=args.camera,
            frame_start=args.start,
            num_frames=args.frames,
            width=args.width,
            height=args.height,
            steps=args.steps,
            seed=args.seed,
            guidance=args.guidance,
            prompt=args.prompt,
            lora=args.lora,
            reference_image=args.reference_image,
            reference_frame=args.reference_frame,
            save_blend=not args.no_save and not args.export_only,
            save_blend_path=args.save_blend,
            render_mp4=args.render_mp4,
            export_only=args.export_only,
            connect_timeout=args.timeout,
            job_timeout=args.job_timeout,
            curve_keys_dir=args.keys,
            backend_python=args.backend_python,
            backend_model=args.backend_model,
            backend_args=args.backend_args,
            preview_mode=args.previews.upper(),
        )
    except (FramePromptUserError, JobFailed) as exc:
        print(f"frameprompt: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:
        print(f"frameprompt: error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(paths, indent=1), flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Entry for ``blender -b ... --python-expr "...; b.main()" -- ARGS``: exits with the batch's code."""
    rc = run(argv)
    sys.stdout.flush()
    sys.exit(rc)


if __name__ == "__main__":
    main()
