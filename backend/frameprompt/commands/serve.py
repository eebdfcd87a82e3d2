"""frameprompt serve: run the ZeroMQ backend server that Blender talks to."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from frameprompt.errors import FramePromptError
from frameprompt_blender.wire.protocol import DEFAULT_ADDRESS, DEFAULT_LIMITS, Limits


def default_jobs_dir() -> Path:
    env = os.environ.get("FRAMEPROMPT_JOBS_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "frameprompt" / "jobs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model folder (default: the embedded default model)")
    parser.add_argument(
        "--bind", default=DEFAULT_ADDRESS, help=f"ZeroMQ address to listen on (default {DEFAULT_ADDRESS})"
    )
    parser.add_argument(
        "--jobs-dir",
        type=Path,
        default=None,
        help="where jobs are kept (default: %(default)s → "
        "$FRAMEPROMPT_JOBS_DIR or ~/.local/state/frameprompt/jobs)",
    )
    parser.add_argument(
        "--curve-keys",
        type=Path,
        default=None,
        help="server key folder from `frameprompt keys` (KEYS/server): encrypt and authenticate clients",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --bind without CurveZMQ keys (trusted networks only)",
    )
    parser.add_argument(
        "--devices",
        default=None,
        help="comma-separated devices, one worker each (default: every CUDA GPU, else cpu)",
    )
    parser.add_argument(
        "--queue-size", type=int, default=64, help="jobs waiting at most (default %(default)s)"
    )
    parser.add_argument("--max-frames", type=int, default=DEFAULT_LIMITS.max_frames)
    parser.add_argument("--max-width", type=int, default=DEFAULT_LIMITS.max_width)
    parser.add_argument("--max-height", type=int, default=DEFAULT_LIMITS.max_height)
    parser.add_argument("--max-message-mb", type=float, default=DEFAULT_LIMITS.max_message_bytes / 2**20)
    parser.add_argument(
        "--window-frames",
        type=int,
        default=None,
        help="frames per generation window (default 40); longer jobs run window by window",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="frames each window carries over from the previous one (default 8)",
    )
    parser.add_argument(
        "--lora-dir", type=Path, default=None, help="folder of LoRAs clients may pick by name"
    )
    parser.add_argument("--steps", type=int, default=None, help="default denoising steps (pipeline runner)")
    from frameprompt.commands.generate import add_speed_memory_arguments

    add_speed_memory_arguments(parser)  # --cache is the default of jobs that do not choose one
    parser.add_argument(
        "--keep-days", type=float, default=7.0, help="delete finished jobs older than this at start"
    )
    parser.add_argument(
        "--runner",
        default="pipeline",
        help="'pipeline' (the model), 'echo' (no model, for testing clients) or module:callable",
    )
    parser.add_argument(
        "--runner-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the runner (VALUE parsed as JSON when it can be)",
    )
    parser.add_argument(
        "--no-fsync", action="store_true", help="skip fsync of job files (faster, less durable)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="free the model's memory after S seconds without a job; the next job loads it again",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        metavar="PID",
        help="stop when process PID exits (a server started by Blender leaves no orphan holding the "
        "port or the GPU)",
    )
    parser.add_argument("--log-level", default="INFO")


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (signal 0 on POSIX; on Windows os.kill would terminate it)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) == 0x102  # WAIT_TIMEOUT: still running
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def watch_parent(pid: int, stop: threading.Event, interval: float = 0.5) -> threading.Thread:
    """A daemon thread that sets `stop` once process `pid` is gone, or once this process was re-parented
    (its parent died and the pid may be reused)."""
    started_by_it = os.name != "nt" and os.getppid() == pid

    def watch() -> None:
        while not stop.wait(interval):
            if not process_alive(pid) or (started_by_it and os.getppid() != pid):
                print(f"frameprompt: parent process {pid} is gone; stopping", file=sys.stderr, flush=True)
                stop.set()

    thread = threading.Thread(target=watch, name="frameprompt-parent-watch", daemon=True)
    thread.start()
    return thread


def _runner_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise FramePromptError(f"--runner-option {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _speed_memory_options(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """--cache and the memory flags as PipelineRunner options (a bad --cache fails here, at start)."""
    from frameprompt.inference.step_cache import parse_step_cache

    if args.cache is not None:
        options.setdefault("step_cache", str(parse_step_cache(args.cache) or "none"))
    for flag in ("fp8", "vae_tiling", "vae_slicing", "compile"):
        if getattr(args, flag):
            options.setdefault(flag, True)
    if args.offload:
        options.setdefault("offload", args.offload)
    if args.lora_dir is not None:  # jobs name several LoRAs from it (params.loras)
        options.setdefault("lora_dir", str(args.lora_dir))


def _default_devices(runner: str) -> list[str]:
    if runner != "pipeline":
        return ["cpu"]
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from frameprompt.server import Server, ServerConfig, ServerError, resolve_runner_factory

    try:
        options = _runner_options(args.runner_option)
        if args.runner == "pipeline" and args.steps:
            options.setdefault("default_steps", args.steps)
        if args.runner == "pipeline" and args.window_frames:
            options.setdefault("window_frames", args.window_frames)
        if args.runner == "pipeline" and args.overlap is not None:
            options.setdefault("overlap_frames", args.overlap)
        if args.runner == "pipeline":
            _speed_memory_options(args, options)
        factory = resolve_runner_factory(args.runner, args.model, **options)
        devices = (
            [d.strip() for d in args.devices.split(",") if d.strip()]
            if args.devices
            else _default_devices(args.runner)
        )
        limits = Limits(
            max_message_bytes=int(args.max_message_mb * 2**20),
            max_frames=args.max_frames,
            max_width=args.max_width,
            max_height=args.max_height,
            max_pixels=args.max_width * args.max_height,
        )
        config = ServerConfig(
            bind=args.bind,
            jobs_dir=args.jobs_dir or default_jobs_dir(),
            devices=devices,
            queue_size=args.queue_size,
            limits=limits,
            curve_keys=args.curve_keys,
            insecure=args.insecure,
            lora_dir=args.lora_dir,
            keep_days=args.keep_days,
            fsync=not args.no_fsync,
            window_frames=args.window_frames,
            long_animation=args.runner == "pipeline",
            idle_release_s=args.idle_timeout if args.idle_timeout and args.idle_timeout > 0 else None,
        )
        server = Server(config, factory)
        server.start()
    except (FramePromptError, ServerError, ValueError) as exc:
        print(f"frameprompt serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, stop)
    try:
        print(
            f"frameprompt: listening on {server.address} (jobs in {config.jobs_dir}); loading the model on "
            f"{', '.join(devices)} ...",
            flush=True,
        )
        try:
            while not server.ready and not stop.is_set():  # a parent gone while loading: stop now
                try:
                    server.wait_ready(0.5)
                except TimeoutError:
                    continue
            if stop.is_set():
                return 0
        except Exception as exc:  # noqa: BLE001 - FramePromptError says what to do; others at least say what
            print(f"frameprompt serve: the model did not load: {exc}", file=sys.stderr)
            return 1
        print(f"frameprompt: ready on {server.address}", flush=True)
        while not stop.is_set() and not server.wait(0.5):
            pass
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
