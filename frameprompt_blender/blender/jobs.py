"""One animation job at a time: submit, progress, cancel, result -> frames on disk -> Sequencer strip.

The protocol client (``core.client.FramePromptClient``) owns its ZeroMQ socket in a background thread
and puts events on a ``queue.Queue``. In the UI a ``bpy.app.timers`` function drains that queue on the
main thread (the only thread allowed to touch ``bpy``), updates :class:`JobState` and tags the
regions for redraw. In background mode (``blender -b``, the bpy module) timers never fire, so
:meth:`JobManager.run_blocking` drains the same queue in a loop and prints progress to stdout.

In local mode the backend is a ``frameprompt serve`` the add-on starts (``local_backend``). Live previews
go to ``<job>/previews/`` and the panel. A job submitted from a saved .blend is listed in a sidecar file
next to it (``<file>.blend.frameprompt-jobs.json``) until its result is imported, so closing the file or
a crash loses nothing: opening the file again re-attaches the job (:meth:`JobManager.reattach`) and
imports its result, or submits it again from the kept inputs when the backend lost it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
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
    # the latest live preview: its step of `preview_total`, and its frames on disk
    preview_step: int = 0
    preview_total: int = 0
    preview_frames: list[str] = field(default_factory=list)
    previews_received: int = 0
    # what a re-attached or re-submitted job needs: the submit's params and where the backend is
    params: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)
    reattached: bool = False

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
        self._deferred = False  # the job waits for the local backend to listen
        self._settings: Any = None
        self._reattach_queue: list[dict[str, Any]] = []
        self.checking = False
        self._hello_result: tuple[Any, BaseException | None] | None = None
        self.log_to_stdout = bool(bpy.app.background)

    # ------------------------------------------------------------------ client
    def resolve(self, settings: Any, wait_s: float | None = 120.0) -> Any:
        """`settings` with the address of the backend to talk to: in local mode the local server, started
        now if needed (waiting up to `wait_s` for it to listen; None: not waiting)."""
        if getattr(settings, "backend_mode", "REMOTE") != "LOCAL":
            return settings
        from .local_backend import BackendOptions, local_backend

        backend = local_backend()
        options = BackendOptions(
            settings.python_env, settings.local_model, settings.idle_timeout, settings.local_args
        )
        address = backend.start(options)
        if wait_s is not None:
            backend.wait_listening(wait_s)
        return replace(settings, server_address=address, curve_keys_dir="")

    def client_for(self, settings: Any) -> Any:
        settings = self.resolve(settings)
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
            if getattr(settings, "backend_mode", "REMOTE") == "LOCAL":
                from .local_backend import local_backend

                local_backend().wait_ready(settings.job_timeout)  # the hello then has the model's size
            info = client.hello()
            settings = self.resolve(settings, None)
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
        address = self.resolve(settings, None).server_address

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

    def release_model(self, settings: Any) -> dict[str, Any]:
        """Ask the backend to free its model's memory (it loads it again for the next job)."""
        if getattr(settings, "backend_mode", "REMOTE") == "LOCAL":
            from .local_backend import local_backend

            if not local_backend().running:
                return {"workers": 0}
        try:
            return dict(self.client_for(settings).release_model())
        except Exception as exc:
            raise JobFailed(getattr(exc, "code", "server_unavailable"), _describe(exc, "")) from None

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

    def _start(
        self, spec: JobSpec, export: ExportResult, settings: Any, strip_scene: str, wait: bool = True
    ) -> None:
        if self.job.active:
            raise FramePromptUserError("A job is already running: wait for it or press Cancel")
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
            params=dict(spec.params()),
            backend=_backend_entry(settings),
        )
        self._cancel_requested = False
        self._settings = settings
        local = getattr(settings, "backend_mode", "REMOTE") == "LOCAL"
        if local and not wait:
            from .local_backend import STARTING, local_backend

            self.resolve(settings, None)
            if local_backend().state == STARTING:  # the tick sends it once the server listens
                self.job.message = "starting the local backend"
                self._deferred = True
                return
        self._send_job(settings)

    def _send_job(self, settings: Any) -> None:
        self._deferred = False
        job = self.job
        client = self.client_for(settings)
        folder = Path(job.job_dir)
        reference = (folder / "reference.png").read_bytes()
        poses = [p.read_bytes() for p in sorted((folder / "skeleton").glob("*.png"))]
        self._log(f"submitting {len(poses)} frames to {client.address}")
        self.handle = client.submit(
            reference, poses, pose_format="png", params=job.params, preview=_preview_request(settings)
        )

    def submit(self, spec: JobSpec, export: ExportResult, settings: Any, strip_scene: str) -> None:
        """Non-blocking submit for the UI: events are drained by a timer."""
        try:
            self._start(spec, export, settings, strip_scene, wait=False)
        except Exception as exc:
            self._fail(exc, settings.server_address)
            raise
        if not bpy.app.timers.is_registered(self._tick_fn):
            bpy.app.timers.register(self._tick_fn, first_interval=TICK_S)

    def run_blocking(self, spec: JobSpec, export: ExportResult, settings: Any, strip_scene: str) -> JobState:
        """Submit and wait (background mode): returns the final state; raises JobFailed on failure."""
        try:
            self._start(spec, export, settings, strip_scene)
        except Exception as exc:
            self._fail(exc, settings.server_address)
            raise
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
            if self._deferred:
                self._send_deferred()
            self._drain(block_s=0.0)
            self._check_timeout()
        except Exception as exc:  # never let an exception kill the timer silently
            self._fail(exc, "")
        _tag_redraw()
        if self.job.active:
            return TICK_S
        return None

    def _send_deferred(self) -> None:
        from .local_backend import FAILED as BACKEND_FAILED
        from .local_backend import STARTING, local_backend

        backend = local_backend()
        if backend.state == STARTING:
            self.job.message = "starting the local backend"
            self.job.last_event = time.monotonic()
            return
        if backend.state == BACKEND_FAILED:
            self._deferred = False
            tail = " | ".join(backend.log_tail(3))
            self._finish(FAILED, f"The local backend failed ({backend.error}): {tail}", code="backend_failed")
            return
        self._send_job(self._settings)

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
        elif kind == "preview":
            self._on_preview(h, parts)
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
        return not self.job.active and kind in (
            "accepted",
            "progress",
            "preview",
            "result",
            "error",
            "status",
        )

    def _on_accepted(self, job_id: str) -> None:
        job = self.job
        job.job_id = job_id
        job.state = QUEUED
        job.message = "queued"
        self._log(f"job {job_id} accepted")
        remember_pending(job)

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

    def _on_preview(self, h: dict[str, Any], parts: list[bytes]) -> None:
        """The latest preview to ``<job>/previews/`` (replacing the last one) and to the panel."""
        job = self.job
        out = Path(job.job_dir) / "previews"
        job.preview_frames = [str(p) for p in _write_frames(out, parts)]
        for stale in sorted(out.glob("*.png"))[len(parts) :]:
            stale.unlink(missing_ok=True)
        job.preview_step, job.preview_total = int(h.get("step") or 0), int(h.get("total") or 0)
        job.previews_received += 1
        from . import previews

        previews.show(job)
        self._log(f"preview after step {job.preview_step}/{job.preview_total} -> {out}")

    def _on_error(self, h: dict[str, Any]) -> None:
        code = str(h.get("code") or "model_error")
        if self.job.reattached and code in ("interrupted", "unknown_job") and _has_inputs(self.job):
            # the backend lost the job (it stopped with Blender): the exported inputs are kept, send again
            self._log(f"the backend lost job {self.job.job_id} ({code}); submitting it again")
            forget_pending(self.job)
            self.job.reattached = False
            self.job.job_id = ""
            self.job.state, self.job.message = SUBMITTING, "submitting again: the backend had lost the job"
            self._send_job(self._settings)
            return
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

    def _finish(self, state: str, message: str, code: str = "", forget: bool = True) -> None:
        if state in (DONE, FAILED, CANCELLED):
            self.handle = None
            self._deferred = False
            if forget:
                forget_pending(self.job)
        self.job.state = state
        self.job.message = message
        self.job.error_code = code
        self._cancel_requested = False
        self._log(message)
        if state in (DONE, FAILED, CANCELLED) and forget and self._reattach_queue:
            entry = self._reattach_queue.pop(0)
            self.reattach(entry, self._settings)

    def _fail(self, exc: BaseException, address: str) -> None:
        code = getattr(exc, "code", "") or ("bad_input" if isinstance(exc, FramePromptUserError) else "")
        self._finish(FAILED, _describe(exc, address), code=str(code))

    def shutdown(self) -> None:
        """Stop the timer and the client thread (add-on disabled, file closed)."""
        if bpy.app.timers.is_registered(self._tick_fn):
            bpy.app.timers.unregister(self._tick_fn)
        self._reattach_queue.clear()
        if self.job.active:
            # the job goes on on the backend and stays listed next to its .blend, to be re-attached
            self._finish(CANCELLED, "Stopped: the file was closed or the add-on disabled", forget=False)
        self.close_client()

    # ------------------------------------------------------------------ re-attach
    def reattach_pending(self, blend_path: str, settings: Any) -> int:
        """Re-attach the jobs listed next to `blend_path` (opened again after a close or a crash); in
        background mode wait for each. Returns how many were listed."""
        entries = read_pending(blend_path)
        if not entries:
            return 0
        self._reattach_queue = list(entries[1:])
        self.reattach(entries[0], settings)
        if bpy.app.background:
            while self.job.active:
                self._drain(block_s=0.5)
                self._check_timeout()
        return len(entries)

    def reattach(self, entry: dict[str, Any], settings: Any) -> None:
        """Follow a job submitted earlier (maybe by another Blender process): its result is imported as
        if it had just arrived."""
        backend = dict(entry.get("backend") or {})
        if backend.get("mode") == "LOCAL":
            settings = replace(settings, backend_mode="LOCAL")
        else:
            settings = replace(
                settings,
                backend_mode="REMOTE",
                server_address=str(backend.get("address") or settings.server_address),
                curve_keys_dir=str(backend.get("curve_keys_dir") or ""),
            )
        self._settings = settings
        self.job = JobState(
            state=QUEUED,
            job_id=str(entry["job_id"]),
            job_dir=str(entry["job_dir"]),
            scene=str(entry["scene"]),
            frame_start=int(entry["frame_start"]),
            num_frames=int(entry["num_frames"]),
            started=time.monotonic(),
            last_event=time.monotonic(),
            keep_inputs=bool(entry.get("keep_inputs", True)),
            timeout_s=settings.job_timeout,
            message=f"re-attached to job {str(entry['job_id'])[:8]}",
            params=dict(entry.get("params") or {}),
            backend=backend,
            reattached=True,
        )
        self._cancel_requested = False
        self._log(f"re-attaching job {self.job.job_id}")
        try:
            self.handle = self.client_for(settings).fetch(self.job.job_id)
        except Exception as exc:
            self._fail(exc, settings.server_address)
            return
        if not bpy.app.background and not bpy.app.timers.is_registered(self._tick_fn):
            bpy.app.timers.register(self._tick_fn, first_interval=TICK_S)


def _preview_request(settings: Any) -> dict[str, Any] | None:
    mode = str(getattr(settings, "preview_mode", "OFF")).lower()
    return None if mode == "off" else {"mode": mode, "every": 1, "max_side": 128}


def _backend_entry(settings: Any) -> dict[str, Any]:
    """Where a job runs, as the sidecar file keeps it: the local backend (whatever its port then) or an
    address."""
    if getattr(settings, "backend_mode", "REMOTE") == "LOCAL":
        return {"mode": "LOCAL"}
    return {"mode": "REMOTE", "address": settings.server_address, "curve_keys_dir": settings.curve_keys_dir}


def _has_inputs(job: JobState) -> bool:
    folder = Path(job.job_dir)
    return (folder / "reference.png").is_file() and any((folder / "skeleton").glob("*.png"))


def pending_path(blend_path: str) -> Path:
    """The sidecar file that lists a .blend's unfinished jobs."""
    return Path(blend_path + ".frameprompt-jobs.json")


def read_pending(blend_path: str) -> list[dict[str, Any]]:
    """The unfinished jobs listed next to `blend_path` (none for an unsaved file or an unreadable list)."""
    if not blend_path:
        return []
    path = pending_path(blend_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        print(f"frameprompt: cannot read the job list {path}: {exc}", flush=True)
        return []
    jobs = data.get("jobs") if isinstance(data, dict) else None
    return [j for j in jobs or [] if isinstance(j, dict) and j.get("job_id") and j.get("job_dir")]


def _write_pending(blend_path: str, entries: list[dict[str, Any]]) -> None:
    path = pending_path(blend_path)
    if not entries:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:  # replaced atomically: a crash leaves the old list
        json.dump({"jobs": entries}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def remember_pending(job: JobState) -> None:
    """List an accepted job next to the saved .blend it came from (nothing for an unsaved file)."""
    blend = bpy.data.filepath
    if not blend or not job.job_id:
        return
    entries = [e for e in read_pending(blend) if e.get("job_id") != job.job_id]
    entries.append(
        {
            "job_id": job.job_id,
            "job_dir": job.job_dir,
            "scene": job.scene,
            "frame_start": job.frame_start,
            "num_frames": job.num_frames,
            "keep_inputs": job.keep_inputs,
            "params": job.params,
            "backend": job.backend,
            "submitted": time.time(),
        }
    )
    try:
        _write_pending(blend, entries)
    except OSError as exc:
        print(f"frameprompt: cannot list job {job.job_id} next to {blend}: {exc}", flush=True)


def forget_pending(job: JobState) -> None:
    blend = bpy.data.filepath
    if not blend or not job.job_id:
        return
    entries = read_pending(blend)
    kept = [e for e in entries if e.get("job_id") != job.job_id]
    if len(kept) != len(entries):
        try:
            _write_pending(blend, kept)
        except OSError as exc:
            print(f"frameprompt: cannot update the job list next to {blend}: {exc}", flush=True)


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
