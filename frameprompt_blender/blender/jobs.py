"""One animation job at a time: submit, progress, cancel, result -> frames on disk -> Sequencer strip.

The protocol client (``core.client.FramePromptClient``) owns its ZeroMQ socket in a background thread
and puts events on a ``queue.Queue``. In the UI a ``bpy.app.timers`` function drains that queue on the
main thread (the only thread allowed to touch ``bpy``), updates :class:`JobState` and tags the
regions for redraw. In background mode (``blender -b``, the bpy module) timers never fire, so
:meth:`JobManager.run_blocking` drains the same queue in a loop and prints progress to stdout.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from ..core.errors import FramePromptError
from ..core.frame_names import frame_name
from .export import ExportResult, FramePromptUserError, JobSpec

TICK_S = 0.1

# states
IDLE, SUBMITTING, QUEUED, RUNNING, CANCELLING = "idle", "submitting", "queued", "running", "cancelling"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
ACTIVE_STATES = frozenset({SUBMITTING, QUEUED, RUNNING, CANCELLING})


class JobFailed(FramePromptError):
    """The backend or the transport failed a job; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message, hint, code=code)


@dataclass
class JobState:
    """What the panel shows about the current (or last) job."""

    state: str = IDLE
    job_id: str = ""
    phase: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    message: str = ""
    error_code: str = ""
    job_dir: str = ""
    scene: str = ""
    frame_start: int = 1
    num_frames: int = 0
    strip: str = ""
    frames: list[str] = field(default_factory=list)
    started: float = 0.0
    last_event: float = 0.0
    keep_inputs: bool = True
    timeout_s: float = 1800.0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def factor(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def eta_text(self) -> str:
        eta = self.eta_s
        if eta is None and self.total and self.step:
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.step * (self.total - self.step)
        if eta is None:
            return ""
        m, s = divmod(int(round(eta)), 60)
        return f"ETA {m}:{s:02d}"

    def progress_text(self) -> str:
        parts = [self.phase or self.state]
        if self.total:
            parts.append(f"{self.step}/{self.total}")
        eta = self.eta_text()
        if eta and self.state == RUNNING:
            parts.append(eta)
        return "  ".join(parts)


def check_online_access(address: str) -> None:
    """Refuse a non-loopback backend address while Blender's online access is off."""
    from ..wire.protocol import is_loopback_address

    try:
        loopback = is_loopback_address(address)
    except ValueError as exc:
        raise FramePromptUserError(f"Backend address: {exc}") from None
    if not loopback and not bpy.app.online_access:
        raise FramePromptUserError(
            f"Backend {address} is on another machine but online access is off: enable "
            "Preferences > System > Network > Allow Online Access, or run the backend on this machine "
            "(tcp://127.0.0.1:5555)"
        )


def _curve_keys(settings: Any) -> str | None:
    """The CurveZMQ key folder (``client.key_secret`` + ``server.key`` from ``frameprompt keys``) or None."""
    return bpy.path.abspath(settings.curve_keys_dir) if settings.curve_keys_dir else None


def _tag_redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "SEQUENCE_EDITOR", "PREFERENCES"}:
                area.tag_redraw()


class JobManager:
    """Holds the client and the state of the current job. One per Blender session (:data:`MANAGER`)."""

    def __init__(self) -> None:
        self.client: Any = None
        self._client_key: tuple | None = None
        self.job = JobState()
        self.backend: dict[str, Any] = {}
        self.backend_error: str = ""
        self._tick_fn = self._tick  # one bound method, so timers.is_registered/unregister find it
        self._cancel_requested = False
        self.handle: Any = None  # the client's JobHandle of the current job
        self.checking = False
        self._hello_result: tuple[Any, BaseException | None] | None = None
        self.log_to_stdout = bool(bpy.app.background)

    # ------------------------------------------------------------------ client
    def client_for(self, settings: Any) -> Any:
        check_online_access(settings.server_address)
        key = (settings.server_address, settings.curve_keys_dir, settings.connect_timeout)
        if self.client is not None and self._client_key == key:
            return self.client
        self.close_client()
        from ..wire.client import FramePromptClient

        self.client = FramePromptClient(
            settings.server_address,
            curve_keys=_curve_keys(settings),
            timeout=settings.connect_timeout,
            emit_events=True,  # drained by the add-on's timer
        )
        self._client_key = key
        return self.client

    def close_client(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None
                self._client_key = None

    def test_connection(self, settings: Any) -> dict[str, Any]:
        """Blocking hello (bounded by the connect timeout). Fills :attr:`backend`."""
        try:
            client = self.client_for(settings)
            info = client.hello()
        except FramePromptUserError as exc:
            self.backend, self.backend_error = {}, str(exc)
            raise
        except Exception as exc:
            self._set_backend(None, exc, settings.server_address)
            raise JobFailed(getattr(exc, "code", "server_unavailable"), self.backend_error) from None
        self._set_backend(info, None, settings.server_address)
        return self.backend

    def ensure_model_size(self, settings: Any) -> Any:
        """The model's sizes (`protocol.ModelSize`) for the "Model size" preset: those of the last hello,
        else asked now with a blocking hello (bounded by the connect timeout), as the batch entry does
        before exporting. None when the backend reports none (an older server, a runner without a model).
        Raises what :meth:`test_connection` raises (backend absent, online access off)."""
        from .properties import backend_model_size

        model = backend_model_size()
        if model is None:
            self.test_connection(settings)
            model = backend_model_size()
        return model

    def test_connection_async(self, settings: Any) -> None:
        """UI version of :meth:`test_connection`: the hello waits in a worker thread, a timer picks up
        the answer, so the UI never freezes on an absent backend."""
        client = self.client_for(settings)  # may raise FramePromptUserError (online access)
        self.checking = True
        self._hello_result = None
        address = settings.server_address

        def worker() -> None:
            try:
                self._hello_result = (client.hello(), None)
            except Exception as exc:
                self._hello_result = (None, exc)

        threading.Thread(target=worker, name="frameprompt-hello", daemon=True).start()

        def poll() -> float | None:
            if self._hello_result is None:
                return 0.2
            info, exc = self._hello_result
            self._set_backend(info, exc, address)
            self.checking = False
            _tag_redraw()
            return None

        bpy.app.timers.register(poll, first_interval=0.2)

    def _set_backend(self, info: Any, exc: BaseException | None, address: str) -> None:
        from .properties import set_backend_model_size

        if exc is not None or not isinstance(info, dict):
            set_backend_model_size(None)
            self.backend = {}
            self.backend_error = _describe(exc, address) if exc else "the backend sent no hello"
            self.close_client()
            return
        self.backend = dict(info)
        self.backend_error = ""
        set_backend_model_size(self.backend)
        loras = self.backend.get("loras") or []
        from .properties import set_backend_loras

        set_backend_loras([lo if isinstance(lo, str) else str(lo.get("name", "")) for lo in loras])

    def backend_status_line(self) -> str:
        if self.checking:
            return "Backend: checking..."
        if self.backend_error:
            return "Backend: not connected"
        if not self.backend:
            return "Backend: not checked (Test Connection)"
        b = self.backend
        model = b.get("model") or b.get("model_name") or "?"
        if isinstance(model, dict):
            model = model.get("name") or model.get("path") or "?"
        devices = b.get("devices") or b.get("device") or "?"
        if isinstance(devices, list | tuple):
            devices = ", ".join(str(d.get("name", d) if isinstance(d, dict) else d) for d in devices) or "?"
        return f"Backend: connected · {Path(str(model)).name} · {devices}"

    # ------------------------------------------------------------------ submit
    def _log(self, msg: str) -> None:
        if self.log_to_stdout:
            print(f"frameprompt: {msg}", flush=True)

    def _start(self, spec: JobSpec, export: ExportResult, settings: Any, strip_scene: str) -> None:
        if self.job.active:
            raise FramePromptUserError("A job is already running: wait for it or press Cancel")
        client = self.client_for(settings)
        reference = export.reference.read_bytes()
        poses = [p.read_bytes() for p in export.skeleton_files]
        self.job = JobState(
            state=SUBMITTING,
            job_dir=str(export.job_dir),
            scene=strip_scene,
            frame_start=spec.frame_start,
            num_frames=spec.num_frames,
            started=time.monotonic(),
            last_event=time.monotonic(),
            keep_inputs=settings.keep_inputs,
            timeout_s=settings.job_timeout,
            message="submitting",
        )
        self._cancel_requested = False
        self._log(
            f"submitting {spec.num_frames} frames {spec.width}x{spec.height} to {settings.server_address}"
        )
        self.handle = client.submit(reference, poses, pose_format="png", params=spec.params())

    def submit(self, spec: JobSpec, export: ExportResult, settings: Any, strip_scene: str) -> None:
        """Non-blocking submit for the UI: events are drained by a timer."""
        try:
            self._start(spec, export, settings, strip_scene)
        except Exception as exc:
            self._fail(exc, settings.server_address)
            raise
        if not bpy.app.timers.is_registered(self._tick_fn):
            bpy.app.timers.register(self._tick_fn, first_interval=TICK_S)

    def run_blocking(self, spec: JobSpec, export: ExportResult, settings: Any, strip_scene: str) -> JobState:
        """Submit and wait (background mode): returns the final state; raises JobFailed on failure."""
        self._start(spec, export, settings, strip_scene)
        try:
            while self.job.active:
                self._drain(block_s=0.5)
                self._check_timeout()
        except KeyboardInterrupt:
            self.cancel()
            deadline = time.monotonic() + 10
            while self.job.active and time.monotonic() < deadline:
                self._drain(block_s=0.5)
            raise
        if self.job.state == FAILED:
            raise JobFailed(self.job.error_code or "model_error", self.job.message)
        if self.job.state == CANCELLED:
            raise JobFailed("cancelled", self.job.message)
        return self.job

    def cancel(self) -> None:
        if not self.job.active:
            return
        self._cancel_requested = True
        self.job.state = CANCELLING
        self.job.message = "cancelling"
        self._log("cancelling")
        try:
            if self.handle is not None:
                self.handle.cancel()  # before 'accepted' the client cancels as soon as the id arrives
            elif self.client is not None and self.job.job_id:
                self.client.cancel(self.job.job_id)
            else:
                self._finish(CANCELLED, "Cancelled before the job was sent")
        except Exception as exc:  # the transport is gone: nothing more will arrive
            self._finish(CANCELLED, f"Cancelled ({exc})")

    # ------------------------------------------------------------------ events
    def _tick(self) -> float | None:
        try:
            self._drain(block_s=0.0)
            self._check_timeout()
        except Exception as exc:  # never let an exception kill the timer silently
            self._fail(exc, "")
        _tag_redraw()
        if self.job.active:
            return TICK_S
        return None

    def _check_timeout(self) -> None:
        if self.job.active and time.monotonic() - self.job.last_event > self.job.timeout_s:
            self._finish(
                FAILED,
                f"No message from the backend for {self.job.timeout_s:.0f} s: it may have stopped. "
                "Check the server window, then press Animate again",
                code="timeout",
            )

    def _drain(self, block_s: float) -> None:
        client = self.client
        if client is None:
            return
        events: queue.Queue = client.events
        first = True
        while True:
            try:
                ev = events.get(timeout=block_s) if (first and block_s > 0) else events.get_nowait()
            except queue.Empty:
                return
            first = False
            self.handle_event(ev)

    def handle_event(self, ev: Any) -> None:
        """Apply one client event to :attr:`job` (main thread only: results touch ``bpy.data``)."""
        kind, h, parts = _unpack_event(ev)
        job_id = h.get("job_id") or ""
        if self._ignores(ev, kind, job_id):
            return
        self.job.last_event = time.monotonic()
        if kind == "accepted":
            self._on_accepted(job_id)
        elif kind == "progress":
            self._on_progress(job_id, h)
        elif kind == "result":
            self._on_result(job_id, parts)
        elif kind == "error":
            self._on_error(h)
        elif kind == "status":
            self._on_status(h)
        elif kind == "hello":
            self._set_backend(h, None, "")

    def _ignores(self, ev: Any, kind: str, job_id: str) -> bool:
        """True for events that must not touch the current job (nor reset its timeout)."""
        handle = getattr(ev, "job", None)
        if handle is not None and self.handle is not None and handle is not self.handle:
            return True  # an earlier job's late message
        if kind in ("connected", "disconnected", "heartbeat"):
            return True  # transport chatter: says nothing about the job's progress
        if job_id and self.job.job_id and job_id != self.job.job_id:
            return True
        # A job message with nothing waiting for it (e.g. after a timeout) must not revive the job.
        return not self.job.active and kind in ("accepted", "progress", "result", "error", "status")

    def _on_accepted(self, job_id: str) -> None:
        job = self.job
        job.job_id = job_id
        job.state = QUEUED
        job.message = "queued"
        self._log(f"job {job_id} accepted")

    def _on_progress(self, job_id: str, h: dict[str, Any]) -> None:
        job = self.job
        if not job.job_id:
            job.job_id = job_id  # no 'accepted' seen yet: adopt the id the progress carries
        if job.state != CANCELLING:  # a progress message still in flight must not undo a cancel
            job.state = RUNNING if h.get("phase") not in (None, "queued") else QUEUED
        job.phase = str(h.get("phase") or "")
        job.step, job.total = int(h.get("step") or 0), int(h.get("total") or 0)
        job.eta_s = h.get("eta_s")
        job.message = h.get("message") or job.phase
        if job.total:
            self._log(f"{job.phase} {job.step}/{job.total} {job.eta_text()}".rstrip())
        elif job.phase:
            self._log(job.phase)

    def _on_error(self, h: dict[str, Any]) -> None:
        code = str(h.get("code") or "model_error")
        # After a cancel the backend may already have forgotten the job: that is the cancel succeeding.
        if code == "cancelled" or (self._cancel_requested and code in ("unknown_job", "interrupted")):
            self._finish(CANCELLED, "Cancelled: no frames were imported; press Animate to run it again")
            return
        msg = str(h.get("message") or "the backend reported an error")
        hint = str(h.get("hint") or "")
        self._finish(FAILED, msg + (f". Fix: {hint}" if hint else ""), code=code)

    def _on_status(self, h: dict[str, Any]) -> None:
        st = h.get("state")
        if st == "cancelled":
            self._finish(CANCELLED, "Cancelled: no frames were imported")
        elif st in ("failed", "interrupted"):
            self._finish(FAILED, str(h.get("message") or f"job {st}"), code=st)

    def _on_result(self, job_id: str, parts: list[bytes]) -> None:
        """Frames to disk, then a Sequencer strip in the job's scene; the job is done only once both are."""
        job = self.job
        if self._cancel_requested:
            self._finish(CANCELLED, "Cancelled: the result that arrived afterwards was discarded")
            return
        if not parts:
            self._finish(FAILED, "The backend returned no frames", code="model_error")
            return
        out = Path(job.job_dir) / "frames"
        paths = _write_frames(out, parts)
        job.frames = [str(p) for p in paths]
        self._log(f"received {len(paths)} frames -> {out}")
        scene = bpy.data.scenes.get(job.scene)
        if scene is None:
            self._finish(FAILED, f"Scene '{job.scene}' is gone; the frames are in {out}", code="no_scene")
            return
        from .sequencer import import_image_sequence

        strip = import_image_sequence(
            scene,
            paths,
            name=f"FramePrompt {job_id[:8] if job_id else Path(job.job_dir).name}"[:63],
            frame_start=job.frame_start,
            metadata={"frameprompt_job": job_id, "frameprompt_dir": job.job_dir},
        )
        job.strip = strip.name
        job.step = job.total = max(job.total, 1)
        _remember_result(scene, job_id, out, strip)
        if not job.keep_inputs:
            _remove_inputs(Path(job.job_dir))
        self._finish(DONE, f"Done: {len(paths)} frames in strip '{strip.name}' (channel {strip.channel})")

    def _finish(self, state: str, message: str, code: str = "") -> None:
        if state in (DONE, FAILED, CANCELLED):
            self.handle = None
        self.job.state = state
        self.job.message = message
        self.job.error_code = code
        self._cancel_requested = False
        self._log(message)

    def _fail(self, exc: BaseException, address: str) -> None:
        code = getattr(exc, "code", "") or ("bad_input" if isinstance(exc, FramePromptUserError) else "")
        self._finish(FAILED, _describe(exc, address), code=str(code))

    def shutdown(self) -> None:
        """Stop the timer and the client thread (add-on disabled, file closed)."""
        if bpy.app.timers.is_registered(self._tick_fn):
            bpy.app.timers.unregister(self._tick_fn)
        if self.job.active:
            self._finish(CANCELLED, "Stopped: the file was closed or the add-on disabled")
        self.close_client()


def _write_frames(out: Path, parts: list[bytes]) -> list[Path]:
    """The result's PNGs as ``out/0000.png ...``, in the order the backend sent them."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(parts):
        p = out / frame_name(i)
        p.write_bytes(data)
        paths.append(p)
    return paths


def _remember_result(scene: Any, job_id: str, out: Path, strip: Any) -> None:
    """Store the result on the scene's settings, saved with the file, so Show Result works after a reload."""
    settings = getattr(scene, "frameprompt", None)
    if settings is not None:
        settings.last_job_id = job_id
        settings.last_result_dir = str(out)
        settings.last_strip = strip.name
        settings.last_strip_scene = scene.name


def _remove_inputs(job_dir: Path) -> None:
    """Delete the exported inputs (keep_inputs off); the generated frames stay."""
    for sub in ("pose", "skeleton"):
        shutil.rmtree(job_dir / sub, ignore_errors=True)
    (job_dir / "reference.png").unlink(missing_ok=True)


def _unpack_event(ev: Any) -> tuple[str, dict[str, Any], list[bytes]]:
    """(type, header, parts) of a client event (a protocol Message, a Result, or a dict)."""
    if isinstance(ev, dict):
        return str(ev.get("type", "")), ev, list(ev.get("parts") or ev.get("frames") or [])
    if hasattr(ev, "header"):
        h = dict(ev.header)
        return str(getattr(ev, "type", h.get("type", ""))), h, list(getattr(ev, "parts", []) or [])
    if hasattr(ev, "frames") and hasattr(ev, "job_id"):  # protocol.Result
        return "result", {"job_id": ev.job_id, "meta": getattr(ev, "meta", {})}, list(ev.frames)
    return str(getattr(ev, "type", "")), dict(getattr(ev, "__dict__", {})), []


def _describe(exc: BaseException, address: str) -> str:
    code = getattr(exc, "code", "")
    if code in ("server_unavailable", "timeout") or isinstance(exc, TimeoutError | ConnectionError):
        return (
            f"Backend not reachable at {address}: start it with `frameprompt serve --model PATH "
            f"--bind {address or 'tcp://127.0.0.1:5555'}` or fix the address in the add-on preferences"
        )
    if code == "auth_failed":
        return str(getattr(exc, "message", exc)) + ". Fix: check the CurveZMQ key files in the preferences"
    return str(exc)


MANAGER = JobManager()
