"""frameprompt demo: the whole path headless, on the built-in demo scene.

Two processes, as in a studio: Blender (the bpy module, `python -m frameprompt_blender.batch
--demo-scene`) builds the demo character and its walk, exports the skeleton frames and a rendered
reference, and sends them to a `frameprompt serve` process; the result comes back as N frames, an
image strip in the Sequencer, a saved .blend and an MP4. Torch is only ever loaded by the server,
bpy only by the Blender process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    parser.add_argument("--model", help="model folder for the server (default: the embedded default model)")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="use a tiny random-weight model: checks the plumbing only, the frames are noise",
    )
    parser.add_argument("--frames", type=int, default=8, help="N frames to animate (multiple of 4)")
    parser.add_argument("--width", type=int, help="default: the embedded model's training width, else 128")
    parser.add_argument("--height", type=int, help="default: the embedded model's training height, else 128")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_for_demo(args: argparse.Namespace, out: Path) -> str | None:
    if args.model:
        return str(args.model)
    from frameprompt.loading import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "model_index.json").is_file() and not args.untrained:
        return None  # the server's default
    if not args.untrained:
        print(
            "frameprompt demo: the embedded default model is not installed in this build; running with an "
            "UNTRAINED tiny model, so the animation path runs end to end but the frames are noise. "
            "Pass --model PATH to a Wan2.1 I2V checkpoint for real results.",
            file=sys.stderr,
        )
    path = out / "untrained-model"
    if not (path / "model_index.json").is_file():
        # Built in a child process: this process is Blender's and never loads torch.
        code = "import sys; from frameprompt.testing import tiny_pipeline_dir; tiny_pipeline_dir(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return str(path)


def _default_size(model: str | None) -> tuple[int, int]:
    """The embedded model was trained at one size (64x64): the demo uses it unless told otherwise."""
    if model is None:
        from frameprompt.loading import DEFAULT_MODEL_DIR

        info = DEFAULT_MODEL_DIR / "frameprompt_training.json"
        if info.is_file():
            data = json.loads(info.read_text())
            return int(data["width"]), int(data["height"])
    return 128, 128


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = _model_for_demo(args, out)
    width, height = _default_size(model)
    args.width = args.width or width
    args.height = args.height or height
    address = f"tcp://127.0.0.1:{_free_port()}"
    command = [
        sys.executable,
        "-m",
        "frameprompt.cli",
        "serve",
        "--bind",
        address,
        "--jobs-dir",
        str(out / "jobs"),
    ]
    if model:
        command += ["--model", model]
    log = (out / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        return _animate(args, out, address, server)
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
        if server.poll() is None:
            server.kill()
        log.close()


def _animate(args: argparse.Namespace, out: Path, address: str, server: subprocess.Popen) -> int:
    started = time.perf_counter()
    command = [sys.executable, "-m", "frameprompt_blender.batch", "--demo-scene", "--server", address]
    command += ["--out", str(out), "--frames", str(args.frames), "--start", "2", "--reference-frame", "1"]
    command += ["--width", str(args.width), "--height", str(args.height), "--steps", str(args.steps)]
    command += ["--seed", str(args.seed), "--save-blend", str(out / "demo.blend"), "--render-mp4"]
    command += ["--timeout", "120"]
    blender = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    lines = blender.stdout.splitlines()
    summary = max((i for i, line in enumerate(lines) if line == "{"), default=len(lines))
    print("\n".join(lines[:summary]))  # the Blender process's progress lines; its JSON summary follows
    if blender.returncode != 0 or summary == len(lines):
        print(
            f"frameprompt demo: failed (Blender process above)\n  server log: {out / 'server.log'}",
            file=sys.stderr,
        )
        return 1
    paths = json.loads("\n".join(lines[summary:]))
    paths["grid"] = str(_write_grid(out))
    print(f"frameprompt demo: done in {time.perf_counter() - started:.0f}s")
    for key in ("frames_dir", "video", "blend", "grid"):
        print(f"  {key}: {paths.get(key)}")
    return 0


def _write_grid(out: Path) -> Path:
    """out/grid.png: the reference and the skeletons on top, the generated frames below them."""
    import PIL.Image

    from frameprompt.media import contact_sheet

    reference = PIL.Image.open(out / "reference.png")
    skeletons = [PIL.Image.open(p) for p in sorted((out / "skeleton").glob("*.png"))]
    frames = [PIL.Image.open(p) for p in sorted((out / "frames").glob("*.png"))]
    blank = PIL.Image.new("RGB", reference.size)
    scale = max(1, 256 // max(reference.size))
    path = out / "grid.png"
    contact_sheet([[reference, *skeletons], [blank, *frames]], scale).save(path)
    return path
