"""frameprompt submit: send a job to a running frameprompt server and write its frames and video.

The same outputs as `frameprompt generate` (OUT/frames/0000.png ... and OUT/video.mp4), but the model
runs in `frameprompt serve` (this machine or a GPU box), so scripts and render farms need no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from frameprompt.errors import FramePromptError, InputError
from frameprompt_blender.core.frame_names import frame_name
from frameprompt_blender.wire import protocol as P

IMAGE_SUFFIXES = (".png",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=P.DEFAULT_ADDRESS,
        help=f"address of `frameprompt serve` (default {P.DEFAULT_ADDRESS})",
    )
    parser.add_argument("--reference", required=True, help="reference image of the character (PNG)")
    parser.add_argument(
        "--pose", required=True, help="folder of OpenPose JSON (0000_keypoints.json, ...) or skeleton PNGs"
    )
    parser.add_argument("--out", required=True, help="output folder: frames/0000.png ... and video.mp4")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the server's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the server's)")
    parser.add_argument("--prompt", help="optional text prompt")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed at the end")
    parser.add_argument("--lora", help="name of a LoRA the server offers (see its hello / --lora-dir)")
    parser.add_argument("--width", type=int, help="output width (default: the reference's)")
    parser.add_argument("--height", type=int, help="output height (default: the reference's)")
    parser.add_argument("--fps", type=int, default=16, help="frame rate of video.mp4 (default 16)")
    parser.add_argument(
        "--curve-keys",
        type=Path,
        default=None,
        help="client key folder from `frameprompt keys --client NAME` (client.key_secret + server.key)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds without reaching the server before giving up (default %(default)s); "
        "a long job is fine as long as the server answers its heartbeats",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--previews",
        type=Path,
        default=None,
        metavar="DIR",
        help="save the live previews the server sends: DIR/step_0004/0000.png ... (one folder per preview)",
    )
    parser.add_argument(
        "--preview-mode",
        choices=("fast", "vae"),
        default="fast",
        help="with --previews: fast latent-to-RGB projection (default) or an accurate VAE decode",
    )


def read_pose_folder(path: Path) -> tuple[list[bytes], str, list[str]]:
    """(pose parts, pose format, part names) from a folder of OpenPose JSON or skeleton PNGs."""
    if not path.is_dir():
        raise InputError(
            f"pose folder {path} does not exist", "pass the pose/ folder that the Blender export wrote"
        )
    jsons = sorted(path.glob("*_keypoints.json"))
    if jsons:
        return (
            [p.read_bytes() for p in jsons],
            "openpose_json",
            [frame_name(i, ".json") for i in range(len(jsons))],
        )
    pngs = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not pngs:
        raise InputError(
            f"{path} holds no skeleton frames",
            "pass a folder of OpenPose JSON files (0000_keypoints.json, ...) or skeleton PNGs (0000.png, ...)",
        )
    return [p.read_bytes() for p in pngs], "png", [frame_name(i) for i in range(len(pngs))]


def run(args: argparse.Namespace) -> int:
    try:
        return _submit(args)
    except P.ProtocolError as error:
        print(f"frameprompt submit: {error.message} ({error.code})", file=sys.stderr)
        if error.hint:
            print(f"  fix: {error.hint}", file=sys.stderr)
        return 1
    except FramePromptError as error:
        print(f"frameprompt submit: {error}", file=sys.stderr)
        return 2


def _unavailable_hint(address: str) -> str:
    return (
        f"start it with `frameprompt serve --model PATH --bind {address}`, or check --server and the firewall"
    )


def _submit(args: argparse.Namespace) -> int:
    from frameprompt_blender.wire.client import FramePromptClient, ServerUnavailable

    reference_path = Path(args.reference)
    if not reference_path.is_file():
        raise InputError(f"reference image {reference_path} does not exist", "check the path")
    reference = reference_path.read_bytes()
    if not reference.startswith(b"\x89PNG"):
        raise InputError(f"{reference_path} is not a PNG file", "export the reference as PNG")
    poses, pose_format, _names = read_pose_folder(Path(args.pose))
    params: dict[str, Any] = {
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "prompt": args.prompt,
        "seed": args.seed,
        "lora": args.lora,
        "width": args.width,
        "height": args.height,
        "fps": args.fps,
    }
    params = {k: v for k, v in params.items() if v is not None}

    with FramePromptClient(args.server, curve_keys=args.curve_keys, timeout=args.timeout) as client:
        try:
            info = client.hello()
        except ServerUnavailable as exc:
            if exc.code == "server_unavailable":
                raise ServerUnavailable(
                    "server_unavailable",
                    f"no FramePrompt backend at {args.server}",
                    _unavailable_hint(args.server),
                ) from None
            raise
        # Raw frames cost the server nothing to encode; older servers only send PNG.
        result_format = "rgb8" if "rgb8" in (info.get("frame_formats") or []) else None
        preview = {"mode": args.preview_mode} if args.previews is not None else None
        job = client.submit(
            reference,
            poses,
            pose_format=pose_format,
            params=params,
            result_format=result_format,
            preview=preview,
        )
        result = _follow(job, len(poses), quiet=args.no_progress, previews=args.previews)

    frames = _to_images(result)
    from frameprompt.media import write_frames, write_video

    out = Path(args.out)
    write_frames(frames, out / "frames")
    video = write_video(frames, out / "video.mp4", fps=args.fps)
    meta = result.meta
    print(
        f"wrote {len(frames)} frames to {out / 'frames'} and {video} "
        f"(job {result.job_id}, seed {meta.get('seed')}, model {meta.get('model_s', 0):.1f}s)"
    )
    return 0


def _follow(job: Any, num_frames: int, quiet: bool, previews: Path | None = None) -> P.Result:
    """Show a progress bar fed by the job's progress events, save its previews under `previews`; return
    its result (or raise its error)."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="step", disable=quiet, file=sys.stderr, dynamic_ncols=True)
    try:
        for event in job.events():
            h = event.header
            if event.type == "accepted":
                bar.set_description(f"job {str(h.get('job_id'))[:8]} queued #{h.get('queue_position')}")
            elif event.type == "progress":
                phase, step, total = h.get("phase", ""), int(h.get("step") or 0), int(h.get("total") or 0)
                if phase == "queued":
                    bar.set_description(f"queued #{h.get('queue_position')}")
                    continue
                bar.set_description(phase)
                if total and bar.total != total:
                    bar.reset(total=total)
                if total:
                    bar.n = min(step, total)
                postfix = {}
                if h.get("eta_s") is not None:
                    postfix["eta"] = f"{float(h['eta_s']):.1f}s"
                if h.get("message"):
                    postfix["info"] = str(h["message"])[:40]
                bar.set_postfix(postfix, refresh=False)
                bar.refresh()
            elif event.type == "preview" and previews is not None:
                folder = previews / f"step_{int(h.get('step') or 0):04d}"
                folder.mkdir(parents=True, exist_ok=True)
                for i, data in enumerate(event.parts):
                    (folder / frame_name(i)).write_bytes(data)
            elif event.type == "result":
                bar.set_description("done")
                if bar.total:
                    bar.n = bar.total
                bar.refresh()
    finally:
        bar.close()
    return job.result()


def _to_images(result: P.Result) -> list[Any]:
    import PIL.Image

    if result.frame_format == "rgb8":
        assert result.width and result.height
        size = (result.width, result.height)
        return [PIL.Image.frombytes("RGB", size, bytes(f)) for f in result.frames]
    import io

    images = []
    for i, data in enumerate(result.frames):
        try:
            with PIL.Image.open(io.BytesIO(data)) as im:
                images.append(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001
            raise FramePromptError(f"frame {i} from the server is not a readable PNG: {exc}") from None
    return images
