"""Model workers: one thread per device, each with its own runner (the model, loaded once), fed job ids
from the shared bounded FIFO. A worker never touches the client-facing socket: it reports to the I/O loop
over its own inproc PUSH socket, as [kind, job_id, *protocol frames].

The work itself is injected: a `RunnerFactory` is called once per worker with the device name and returns
a `Runner`, called once per job with a `JobSpec` and a `RunContext`. The real one wraps the
FramePromptPipeline (`frameprompt.server.runners.PipelineRunner`); tests use tiny fakes.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import zmq

from frameprompt.errors import FramePromptError
from frameprompt.server.jobqueue import JobQueue
from frameprompt.server.store import JobStore
from frameprompt_blender.wire import protocol as P

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("frameprompt.server")

# Previews may take at most this share of a job's time so far: a preview that would exceed it is skipped,
# which keeps the cost of previews under 5% whatever a step and a preview cost on this machine.
PREVIEW_BUDGET = 0.03

OOM_HINT = (
    "the GPU ran out of memory: animate fewer frames per job, lower the resolution, "
    "or enable VAE tiling; the server has freed the memory and keeps serving"
)


class JobCancelled(Exception):
    """Raised inside a runner (through RunContext.check_cancelled) when the client cancelled the job."""


class LazyImages(Sequence):
    """A read-only list of images decoded on first access (and cached), with the decode time summed in
    `seconds`. The I/O loop has already checked each part's PNG header, chunk CRCs and size caps; pixels
    are decoded (with the decompression-bomb guard) only when a runner reads them, so that cost counts as
    model time, and a runner that never reads them (a precomputed-frames benchmark) never pays it."""

    def __init__(self, count: int, decode: Callable[[int], Image.Image]) -> None:
        self._decode = decode
        self._items: list[Image.Image | None] = [None] * count
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._items)))]
        item = self._items[index]
        if item is None:
            t0 = time.perf_counter()
            item = self._items[index] = self._decode(index % len(self._items))
            self.seconds += time.perf_counter() - t0
        return item


@dataclass
class JobSpec:
    """What a runner gets: images (decoded on first access) and validated parameters (the seed is set).

    `reference` and `poses` read like a PIL image and a list of PIL images; the worker passes lazy ones
    (see LazyImages), tests may pass plain images."""

    job_id: str
    reference_source: Any  # an Image, or a LazyImages of one
    poses: Sequence[Image.Image]
    params: P.JobParams
    device: str
    lora_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    result_format: str = "png"
    preview: dict[str, Any] | None = None

    @property
    def reference(self) -> Image.Image:
        src = self.reference_source
        return src[0] if isinstance(src, LazyImages) else src

    @property
    def num_frames(self) -> int:
        return len(self.poses)

    @property
    def decode_seconds(self) -> float:
        """Time spent decoding inputs so far (only for lazily decoded inputs)."""
        return sum(x.seconds for x in (self.reference_source, self.poses) if isinstance(x, LazyImages))


class Runner(Protocol):
    def __call__(self, job: JobSpec, ctx: RunContext) -> Sequence[Image.Image]: ...


RunnerFactory = Callable[[str], Runner]


class RunContext:
    """Handed to a runner with each job: report progress, send previews, and poll for cancellation at
    every step."""

    def __init__(
        self,
        job_id: str,
        device: str,
        cancel: threading.Event,
        emit: Callable[[list[bytes]], None],
        *,
        preview: dict[str, Any] | None = None,
        emit_preview: Callable[[list[bytes]], None] | None = None,
    ):
        self.job_id = job_id
        self.device = device
        self._cancel = cancel
        self._emit = emit
        self._phase = ""
        self._phase_start = time.monotonic()
        self.preview = preview if emit_preview is not None else None
        self._emit_preview = emit_preview
        self._started = time.monotonic()
        self.preview_seconds = 0.0
        self.previews_sent = 0
        self.previews_skipped = 0

    @property
    def preview_mode(self) -> str:
        """'off', 'fast' or 'vae' (protocol.PREVIEW_MODES): what the client asked for."""
        return str(self.preview["mode"]) if self.preview else "off"

    def maybe_preview(self, step: int, total: int, make: Callable[[str, int], Sequence[Any]]) -> bool:
        """Send a preview after `step` of `total` when one is due: every `every` steps and within
        PREVIEW_BUDGET of the job's time so far. `make(mode, max_side)` returns the frames (PIL images or
        (H, W, 3) uint8 arrays, at most max_side pixels a side) and is only called when a preview is sent.
        A failing preview is logged and never fails the job. True when one was sent."""
        if not self.preview or self._emit_preview is None:
            return False
        every = int(self.preview.get("every", 1))
        if step % every and step != total:
            return False
        now = time.monotonic()
        if self.preview_seconds > PREVIEW_BUDGET * (now - self._started):
            self.previews_skipped += 1
            return False
        try:
            frames = make(self.preview_mode, int(self.preview.get("max_side", 128)))
            parts = [_preview_png(f) for f in frames]
            self._emit_preview(P.build_preview(self.job_id, step, total, self.preview_mode, parts))
        except JobCancelled:
            raise
        except Exception:  # noqa: BLE001 - a preview is a courtesy; the job goes on without it
            log.exception("job %s: the preview after step %d failed", self.job_id, step)
            self.preview = None
            return False
        finally:
            self.preview_seconds += time.monotonic() - now
        self.previews_sent += 1
        return True

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(self.job_id)

    def progress(self, phase: str, step: int = 0, total: int = 0, message: str = "") -> None:
        """Report `step` of `total` in `phase`; an ETA is estimated from this phase's pace so far."""
        now = time.monotonic()
        if phase != self._phase:
            self._phase, self._phase_start = phase, now
        eta = None
        if total > 0 and 0 < step <= total:
            eta = (now - self._phase_start) / step * (total - step)
        self._emit(P.build_progress(self.job_id, phase, step, total, eta_s=eta, message=message))


class JobControl:
    """Cancel flags of live jobs, shared by the I/O loop (sets them) and the workers (read them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, threading.Event] = {}

    def flag(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._flags.setdefault(job_id, threading.Event())

    def cancel(self, job_id: str) -> None:
        self.flag(job_id).set()

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._flags.pop(job_id, None)


def _preview_png(frame: Any) -> bytes:
    """A small preview frame as PNG (fastest compression: it is sent once and thrown away)."""
    import numpy as np
    from PIL import Image

    im = Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    classes = [
        getattr(torch, "OutOfMemoryError", None),
        getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
    ]
    return any(c is not None and isinstance(exc, c) for c in classes)


def free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort
            pass


def decode_png(data: bytes, limits: P.Limits, what: str) -> Image.Image:
    """Decode a PNG with the decompression-bomb guard: header checks first, then Pillow with a pixel cap."""
    from PIL import Image

    P.check_png(data, limits, what)
    try:
        im = Image.open(io.BytesIO(data))
        if im.format != "PNG":
            raise P.ProtocolError("bad_image", f"{what} is not a PNG file")
        if im.width * im.height > limits.max_pixels:
            raise P.ProtocolError("image_too_large", f"{what} has more than {limits.max_pixels} pixels")
        im.load()
    except P.ProtocolError:
        raise
    except Image.DecompressionBombError as exc:
        raise P.ProtocolError("image_too_large", f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the sender's bad image
        raise P.ProtocolError("bad_image", f"{what} could not be decoded: {str(exc)[:200]}") from None
    return im.convert("RGB")


def pose_json_to_image(data: bytes, width: int, height: int, limits: P.Limits, what: str) -> Image.Image:
    """Draw one OpenPose JSON frame as a skeleton image (the shared drawing code of frameprompt_blender)."""
    from PIL import Image

    doc = P.check_pose_json(data, limits, what)
    try:
        from frameprompt_blender.core import openpose_draw, openpose_json
    except ImportError as exc:  # the drawing module is part of the project; this is a broken install
        raise FramePromptError(f"OpenPose drawing is unavailable: {exc}", "reinstall frameprompt") from None
    try:
        pose = openpose_json.pose_from_openpose_dict(doc, what, canvas_size=(width, height))
        array = openpose_draw.draw_pose(pose, width, height)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise P.ProtocolError("bad_pose", f"{what}: {str(exc)[:200]}") from None
    return Image.fromarray(array).convert("RGB")


def encode_frames(images: Sequence[Any], frame_format: str, limits: P.Limits) -> tuple[list[Any], int, int]:
    """A runner's output frames as protocol parts of `frame_format`, plus their (width, height).

    A runner may return PIL images, uint8 arrays of shape (H, W, 3), or PNG files (bytes). Nothing is
    converted that need not be: PNG bytes are checked (header, chunk CRCs, size caps; no pixel decode)
    and sent as they are for "png"; arrays are sent as buffers (no copy) for "rgb8"; PIL images are
    encoded once (PNG compress_level 1, all frames in parallel) or copied once (rgb8). Every frame
    must have the same size."""
    import numpy as np
    from PIL import Image

    from frameprompt.media import encode_pngs

    out: list[Any] = []  # for "png", PIL images stand in until all are encoded at once below
    sizes: set[tuple[int, int]] = set()
    for i, item in enumerate(images):
        what = f"output frame {i}"
        if isinstance(item, bytes | bytearray | memoryview):
            info = P.check_png(item, limits, what)
            sizes.add((info.width, info.height))
            if frame_format == "png":
                out.append(item)
            else:  # a PNG runner asked for raw frames: decode once
                out.append(np.asarray(decode_png(bytes(item), limits, what)))
        elif isinstance(item, np.ndarray):
            arr = item
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise FramePromptError(
                    f"{what} is a {arr.dtype} array of shape {arr.shape}, not (H, W, 3) uint8"
                )
            sizes.add((arr.shape[1], arr.shape[0]))
            out.append(Image.fromarray(arr) if frame_format == "png" else np.ascontiguousarray(arr))
        elif isinstance(item, Image.Image):
            im = item if item.mode == "RGB" else item.convert("RGB")
            sizes.add(im.size)
            out.append(im if frame_format == "png" else im.tobytes())
        else:
            raise FramePromptError(f"{what} is a {type(item).__name__}, not an image, array or PNG bytes")
    if len(sizes) > 1:
        raise FramePromptError(f"the model returned frames of different sizes: {sorted(sizes)}")
    pending = [i for i, frame in enumerate(out) if isinstance(frame, Image.Image)]
    for i, data in zip(pending, encode_pngs([out[i] for i in pending], compress_level=1), strict=True):
        out[i] = data
    width, height = sizes.pop() if sizes else (0, 0)
    return out, width, height


class Worker(threading.Thread):
    """One device: loads its runner, then runs queued jobs one at a time until stopped. The model is
    released on request (`request_release`) or after `idle_release_s` without a job, so another program
    gets the memory back, and loaded again when the next job starts."""

    def __init__(
        self,
        index: int,
        device: str,
        factory: RunnerFactory,
        queue: JobQueue,
        store: JobStore,
        control: JobControl,
        context: zmq.Context,
        events_address: str,
        limits: P.Limits,
        lora_paths: Callable[[], dict[str, str]],
        stop: threading.Event,
        idle_release_s: float | None = None,
    ) -> None:
        super().__init__(name=f"frameprompt-worker-{index}-{device}", daemon=True)
        self.device = device
        self.factory = factory
        self.queue = queue
        self.store = store
        self.control = control
        self.context = context
        self.events_address = events_address
        self.limits = limits
        self.lora_paths = lora_paths
        self.stop_event = stop
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.runner: Runner | None = None
        # the loaded model's capabilities, kept for hello while the model is released
        self.caps: dict[str, Any] = {}
        self.idle_release_s = idle_release_s
        self._release = threading.Event()
        self.current: str | None = None
        self._sock: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._storer: ThreadPoolExecutor | None = None

    # -- reporting to the I/O loop
    def _send(self, kind: bytes, job_id: str, frames: Sequence[bytes] = ()) -> None:
        with self._lock:
            assert self._sock is not None
            try:
                self._sock.send_multipart([kind, job_id.encode(), *frames], copy=False)
            except zmq.ZMQError as exc:  # the I/O loop has stopped; the state on disk is what counts
                log.warning("job %s: could not report %s to the I/O loop: %s", job_id, kind.decode(), exc)

    def run(self) -> None:
        self._sock = self.context.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, 2000)
        self._sock.setsockopt(zmq.SNDTIMEO, 5000)  # never block forever once the I/O loop is gone
        self._sock.connect(self.events_address)
        self._storer = ThreadPoolExecutor(1, f"{self.name}-store", initializer=_lower_thread_priority)
        try:
            try:
                self._load()
            except BaseException as exc:  # noqa: BLE001 - reported to the server, which fails to start
                self.load_error = exc
                log.error("worker %s: could not load the model: %s", self.device, exc)
                return
            finally:
                self.ready.set()
            log.info("worker %s ready", self.device)
            idle_since = time.monotonic()
            while not self.stop_event.is_set():
                job_id = self.queue.get(timeout=0.25)
                if job_id is None:
                    idle = time.monotonic() - idle_since
                    if self.runner is not None and (
                        self._release.is_set() or (self.idle_release_s and idle >= self.idle_release_s)
                    ):
                        self._unload("on request" if self._release.is_set() else f"idle for {idle:.0f} s")
                    self._release.clear()
                    continue
                self._release.clear()
                self.current = job_id
                try:
                    self._run_job(job_id)
                finally:
                    self.current = None
                    self.control.discard(job_id)
                    idle_since = time.monotonic()
        finally:
            self._storer.shutdown()
            self._unload("")
            with self._lock:
                self._sock.close()

    @property
    def model_loaded(self) -> bool:
        return self.runner is not None

    def request_release(self) -> None:
        """Free the model once the running job (if any) is done; the next job loads it again."""
        self._release.set()

    def _load(self) -> None:
        self.runner = self.factory(self.device)
        self.caps = describe(self.runner)

    def _unload(self, why: str) -> None:
        runner, self.runner = self.runner, None
        if runner is None:
            return
        close = getattr(runner, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001
                log.exception("worker %s: runner.close() failed", self.device)
        del runner, close
        free_memory()
        if why:
            log.info("worker %s: model released (%s)", self.device, why)

    def _fail(self, job_id: str, state: str, code: str, message: str, hint: str | None = None) -> None:
        err = P.ProtocolError(code, message, hint)
        try:
            self.store.set_state(job_id, state, error=err.fields())
        except Exception:  # noqa: BLE001 - a full disk must not kill the worker
            log.exception("job %s: could not record state %s", job_id, state)
        self._send(b"final", job_id, P.error_frames(err.code, err.message, err.hint, job_id=job_id))

    def _store_result(self, job_id: str, frames: Sequence[Any], fmt: str, meta: dict[str, Any]) -> None:
        t0 = time.monotonic()
        try:
            self.store.write_outputs(job_id, frames, fmt)
            self.store.set_state(
                job_id, "done", meta={**meta, "persist_s": round(time.monotonic() - t0, 4)}, error=None
            )
        except Exception as exc:  # noqa: BLE001 - a full disk must not kill the worker
            log.exception("job %s: the result was sent but could not be saved", job_id)
            err = P.ProtocolError(
                "storage_error",
                f"the result was delivered but could not be saved on the server: {exc}",
                "free disk space in the server's --jobs-dir; re-submit the job to get it again",
            )
            with contextlib.suppress(Exception):
                self.store.set_state(job_id, "failed", error=err.fields())
        self._send(b"stored", job_id)

    def _run_job(self, job_id: str) -> None:
        cancel = self.control.flag(job_id)
        rec = self.store.get(job_id)
        preview = P.check_preview(rec.request.get("preview")) if rec is not None else None
        ctx = RunContext(
            job_id,
            self.device,
            cancel,
            lambda frames: self._send(b"progress", job_id, frames),
            preview=preview,
            emit_preview=lambda frames: self._send(b"preview", job_id, frames),
        )
        started = time.monotonic()
        try:
            spec = self._begin_job(job_id, ctx)
            if self.runner is None:  # released (on request or idle): load it again for this job
                ctx.progress("loading", message="loading the model")
                self._load()
            images, model_s = self._run_model(spec, ctx)
            self._deliver(spec, ctx, images, model_s, started)
        except JobCancelled:
            self._fail_cancelled(job_id)
        except P.ProtocolError as exc:
            log.info("job %s rejected: %s", job_id, exc.message)
            self._fail(job_id, "failed", exc.code, exc.message, exc.hint)
        except FramePromptError as exc:
            log.warning("job %s failed: %s", job_id, exc.message)
            self._fail(job_id, "failed", exc.code, exc.message, exc.hint or None)
        except BaseException as exc:  # noqa: BLE001 - the worker must survive anything a job does
            if is_out_of_memory(exc):
                log.warning("job %s: out of memory on %s: %s", job_id, self.device, str(exc)[:200])
                # The traceback's frames still hold the job's tensors; drop this reference before freeing.
                del exc
                self._recover_from_oom(job_id)
            elif isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            else:
                self._fail_crashed(job_id, exc)

    def _begin_job(self, job_id: str, ctx: RunContext) -> JobSpec:
        """Mark the job running and load its inputs; a job cancelled while queued never starts."""
        ctx.check_cancelled()
        self.store.set_state(job_id, "running", durable=False, device=self.device, started=time.time())
        self._send(b"started", job_id)
        ctx.progress("preparing")
        spec = self._load_spec(job_id)
        ctx.check_cancelled()
        return spec

    def _run_model(self, spec: JobSpec, ctx: RunContext) -> tuple[list[Any], float]:
        """The runner's frames and the seconds it took; the runner reports progress and polls `ctx`."""
        t0 = time.monotonic()
        assert self.runner is not None
        images = list(self.runner(spec, ctx))
        model_s = time.monotonic() - t0
        ctx.check_cancelled()
        if len(images) != spec.num_frames:
            raise FramePromptError(
                f"the model returned {len(images)} frames for {spec.num_frames} poses",
                "check the server log",
            )
        return images, model_s

    def _deliver(
        self, spec: JobSpec, ctx: RunContext, images: Sequence[Any], model_s: float, started: float
    ) -> None:
        """Encode the frames, send them to the client, then store them."""
        job_id, fmt = spec.job_id, spec.result_format
        ctx.progress("saving", 0, len(images))
        t1 = time.monotonic()
        frames, width, height = encode_frames(images, fmt, self.limits)
        t2 = time.monotonic()
        meta = self._result_meta(spec, len(frames), width, height, model_s, t2 - t1, t2 - started)
        # The result goes out first and is made durable while it travels: writing ~100 MB with fsync
        # would otherwise sit between the model and the client. The job becomes "done" only once its
        # outputs are on disk; a crash in between leaves it "interrupted" (re-submittable), while the
        # client already holds the frames. Fetches that arrive meanwhile are answered on "stored".
        result = P.build_result(job_id, frames, meta, frame_format=fmt, width=width, height=height)
        self._send(b"final", job_id, result)
        log.info(
            "job %s done: %d frames in %.2fs (model %.2fs)", job_id, len(frames), meta["total_s"], model_s
        )
        assert self._storer is not None
        self._storer.submit(self._store_result, job_id, frames, fmt, meta).result()

    def _result_meta(
        self,
        spec: JobSpec,
        num_frames: int,
        width: int,
        height: int,
        model_s: float,
        encode_s: float,
        total_s: float,
    ) -> dict[str, Any]:
        return {
            "seed": spec.params.seed,
            "num_frames": num_frames,
            "width": width,
            "height": height,
            "steps": spec.params.steps,
            "device": self.device,
            "frame_format": spec.result_format,
            # model_s: the runner's call, including decoding the inputs it read (decode_s of it)
            "model_s": round(model_s, 4),
            "decode_s": round(spec.decode_seconds, 4),
            "encode_s": round(encode_s, 4),
            "total_s": round(total_s, 4),
        }

    def _fail_cancelled(self, job_id: str) -> None:
        # Stopping the server cancels running jobs too; those are re-submittable, not cancelled by the user.
        if self.stop_event.is_set():
            log.info("job %s interrupted by the server stopping", job_id)
            self._fail(job_id, "interrupted", "interrupted", "the server stopped while this job was running")
        else:
            log.info("job %s cancelled", job_id)
            self._fail(job_id, "cancelled", "cancelled", "the job was cancelled")

    def _recover_from_oom(self, job_id: str) -> None:
        """Free the failed job's memory and let the runner reset, so the worker keeps serving."""
        free_memory()
        recover = getattr(self.runner, "recover", None)
        if callable(recover):
            try:
                recover()
            except Exception:  # noqa: BLE001
                log.exception("runner.recover() failed")
        self._fail(job_id, "failed", "out_of_memory", f"out of memory on {self.device}", OOM_HINT)

    def _fail_crashed(self, job_id: str, exc: BaseException) -> None:
        log.error("job %s crashed:\n%s", job_id, "".join(traceback.format_exception(exc)))
        self._fail(
            job_id,
            "failed",
            "internal_error",
            f"the job crashed: {type(exc).__name__}: {str(exc)[:300]}",
        )

    def _load_spec(self, job_id: str) -> JobSpec:
        rec = self.store.get(job_id)
        assert rec is not None
        params = P.parse_params(rec.request.get("params"), self.limits)
        if params.seed is None:
            params.seed = secrets.randbits(62)
        reference_png, poses = self.store.read_inputs(job_id)
        # Header, CRCs and size caps again (cheap, no pixel decode): the files came from disk.
        info = P.check_png(reference_png, self.limits, "reference image")
        for name, data in poses:
            if rec.request.get("pose_format") != "openpose_json":
                P.check_png(data, self.limits, f"pose {name}")
        width = params.width or info.width
        height = params.height or info.height
        json_poses = rec.request.get("pose_format") == "openpose_json"
        limits = self.limits

        def decode_pose(i: int) -> Image.Image:
            name, data = poses[i]
            if json_poses:
                return pose_json_to_image(data, width, height, limits, f"pose {name}")
            return decode_png(data, limits, f"pose {name}")

        reference = LazyImages(1, lambda _i: decode_png(reference_png, limits, "reference image"))
        lora_path = None
        if params.lora:
            lora_path = self.lora_paths().get(params.lora)
            if lora_path is None:
                raise P.ProtocolError("unknown_lora", f"the server has no LoRA named {params.lora!r}")
        fmt = rec.request.get("result_format", "png")
        if fmt not in P.FRAME_FORMATS:
            fmt = "png"
        return JobSpec(
            job_id,
            reference,
            LazyImages(len(poses), decode_pose),
            params,
            self.device,
            lora_path,
            {},
            fmt,
            P.check_preview(rec.request.get("preview")),
        )


def _lower_thread_priority() -> None:
    """Storing a result is background work: on Linux (where nice is per thread) the thread that writes it
    yields the CPU to the I/O loop and ZeroMQ, which are sending the same result to the client."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def describe(runner: Any) -> dict[str, Any]:
    """The runner's capabilities for hello (model name, window, resolutions), if it offers them."""
    caps = getattr(runner, "capabilities", None)
    if callable(caps):
        try:
            out = caps()
            json.dumps(out)
            return dict(out)
        except Exception:  # noqa: BLE001
            log.exception("runner.capabilities() failed")
    return {}
