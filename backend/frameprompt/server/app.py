"""The server: a ROUTER socket served by one I/O thread that never runs inference, a bounded FIFO of jobs,
and one worker thread per device. See docs/protocol.md for the messages.

    server = Server(ServerConfig(bind="tcp://127.0.0.1:5555", jobs_dir="jobs"), runner_factory)
    server.start()          # binds (raises on a refused or busy address), starts the workers
    server.wait_ready()     # the model is loaded on every device (raises the load error)
    server.wait()           # until stop() (or Ctrl-C in the caller)
    server.stop()
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

import frameprompt
from frameprompt.server.jobqueue import JobQueue, QueueFull
from frameprompt.server.security import (
    ServerKeys,
    apply_server_keys,
    check_bind,
    load_server_keys,
    start_authenticator,
)
from frameprompt.server.store import JobRecord, JobStore
from frameprompt.server.worker import JobControl, RunnerFactory, Worker
from frameprompt_blender.wire import protocol as P

log = logging.getLogger("frameprompt.server")


@dataclass
class ServerConfig:
    bind: str = P.DEFAULT_ADDRESS
    jobs_dir: str | Path = "frameprompt-jobs"
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    queue_size: int = 64
    limits: P.Limits = P.DEFAULT_LIMITS
    curve_keys: str | Path | None = None
    insecure: bool = False
    lora_dir: str | Path | None = None
    keep_days: float | None = None
    fsync: bool = True
    # Frames the model makes in one window (advertised in hello); None = unknown. Jobs longer than this are
    # refused with too_many_frames until long animation is supported (long_animation=True lifts that).
    window_frames: int | None = None
    long_animation: bool = False
    stop_grace_s: float = 10.0
    # Free the model after this many seconds without a job (None: keep it); the next job loads it again.
    idle_release_s: float | None = None


class ServerError(RuntimeError):
    pass


class Server:
    def __init__(self, config: ServerConfig, runner_factory: RunnerFactory) -> None:
        if not config.devices:
            raise ValueError("at least one device is needed")
        self.config = config
        self.limits = config.limits
        self.runner_factory = runner_factory
        self.store = JobStore(config.jobs_dir, fsync=config.fsync)
        self.queue = JobQueue(config.queue_size)
        self.control = JobControl()
        self.context: zmq.Context | None = None
        self.workers: list[Worker] = []
        self.address: str | None = None  # the bound endpoint (a tcp://...:* bind resolves to the real port)
        self._events_address = f"inproc://frameprompt-events-{uuid.uuid4().hex}"
        self._workers_stop = threading.Event()
        self._shutdown = threading.Event()
        self._bound = threading.Event()
        self._bind_error: BaseException | None = None
        self._io_thread: threading.Thread | None = None
        self._auth: Any = None
        self._keys: ServerKeys | None = None
        self._subscribers: dict[str, set[bytes]] = {}
        self._last_progress: dict[str, dict[str, Any]] = {}
        self._router: zmq.Socket | None = None
        self.stats = {"received": 0, "rejected": 0, "accepted": 0}

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        cfg = self.config
        if cfg.curve_keys is not None:
            self._keys = load_server_keys(cfg.curve_keys)
        check_bind(cfg.bind, curve=self._keys is not None, insecure=cfg.insecure)
        interrupted = self.store.recover(cfg.keep_days)
        if interrupted:
            log.warning(
                "%d job(s) were interrupted by the last shutdown: %s",
                len(interrupted),
                ", ".join(interrupted),
            )
        self.context = zmq.Context()
        if self._keys is not None:
            self._auth = start_authenticator(self.context, self._keys)
        self._io_thread = threading.Thread(target=self._io_main, name="frameprompt-io", daemon=True)
        self._io_thread.start()
        self._bound.wait(10)
        if self._bind_error is not None or self.address is None:
            self._cleanup_context()
            raise ServerError(f"cannot listen on {cfg.bind}: {self._bind_error or 'timeout'}")
        for i, device in enumerate(cfg.devices):
            w = Worker(
                i,
                device,
                self.runner_factory,
                self.queue,
                self.store,
                self.control,
                self.context,
                self._events_address,
                self.limits,
                self.lora_paths,
                self._workers_stop,
                cfg.idle_release_s,
            )
            w.start()
            self.workers.append(w)
        log.info("FramePrompt server listening on %s (%s)", self.address, ", ".join(cfg.devices))

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every worker has loaded its model; raise the first load error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for w in self.workers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not w.ready.wait(left):
                raise TimeoutError(f"the model on {w.device} did not load within {timeout}s")
            if w.load_error is not None:
                raise w.load_error

    @property
    def ready(self) -> bool:
        return bool(self.workers) and all(w.ready.is_set() and w.load_error is None for w in self.workers)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (True) or `timeout` passed (False)."""
        if self._io_thread is None:
            return True
        self._io_thread.join(timeout)
        return not self._io_thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop: queued jobs become 'interrupted', running ones are cancelled and marked 'interrupted'."""
        self._shutdown.set()
        if self._io_thread is not None:
            self._io_thread.join((timeout or self.config.stop_grace_s) + 5)
        self._workers_stop.set()
        self._cleanup_context()

    def _cleanup_context(self) -> None:
        if self._auth is not None:
            try:
                self._auth.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping the authenticator failed")
            self._auth = None
        ctx, self.context = self.context, None
        if ctx is not None:
            io_done = self._io_thread is None or not self._io_thread.is_alive()
            if io_done and not any(w.is_alive() for w in self.workers):
                ctx.term()
            # else: a stuck worker still holds a socket; the process exit reclaims the context.

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ info
    def lora_paths(self) -> dict[str, str]:
        d = self.config.lora_dir
        if d is None:
            return {}
        out = {}
        try:
            for p in sorted(Path(d).iterdir()):
                name = p.stem if p.suffix == ".safetensors" else p.name
                if (p.suffix == ".safetensors" or (p.is_dir() and any(p.glob("*.safetensors")))) and _safe(
                    name
                ):
                    out[name] = str(p)
        except OSError:
            log.warning("cannot read the LoRA folder %s", d)
        return out

    def _runner_caps(self) -> dict[str, Any]:
        for w in self.workers:
            if w.caps:
                return dict(w.caps)
        return {}

    def model_size(self, caps: dict[str, Any] | None = None) -> P.ModelSize | None:
        """The loaded model's sizes (its runner's `model_size`), the largest clamped to this server's
        limits; None while no model is loaded or for a runner that says nothing (e.g. echo)."""
        caps = self._runner_caps() if caps is None else caps
        ms = P.ModelSize.from_dict(caps.get("model_size"))
        if ms is None:
            return None
        m, lim = ms.size_multiple, self.limits
        max_w = max(m, min(ms.max_width, lim.max_width) // m * m)
        max_h = max(m, min(ms.max_height, lim.max_height) // m * m)
        nw, nh = ms.native_width, ms.native_height
        if nw > max_w or nh > max_h:
            nw, nh = P.fit_size(nw / nh, nw * nh, m, max_w, max_h)
        window = ms.window_frames or self.config.window_frames
        return P.ModelSize(nw, nh, max_w, max_h, m, window)

    def capabilities(self) -> dict[str, Any]:
        caps = self._runner_caps()
        model_size = self.model_size(caps)
        caps.pop("model_size", None)
        lim = self.limits
        return {
            "server": "frameprompt",
            "version": frameprompt.__version__,
            "protocol": P.PROTOCOL_VERSION,
            "revision": P.PROTOCOL_REVISION,
            "frame_formats": list(P.FRAME_FORMATS),
            "model": caps.pop("model", None),
            "ready": self.ready,
            # revision 4: false once `release` or the idle timeout freed the model (the next job loads it)
            "model_loaded": bool(self.workers) and all(w.model_loaded for w in self.workers),
            "idle_release_s": self.config.idle_release_s,
            "devices": list(self.config.devices),
            "loras": sorted(self.lora_paths()),
            "max_frames": lim.max_frames,
            "max_width": lim.max_width,
            "max_height": lim.max_height,
            "resolutions": caps.pop("resolutions", None),
            "window_frames": self.config.window_frames,
            # revision 3: native/largest size, size multiple, window; null while no model is loaded
            "model_size": model_size.to_dict() if model_size is not None else None,
            "long_animation": self.config.long_animation,
            "pose_formats": list(P.POSE_FORMATS),
            "queue_size": self.config.queue_size,
            "queue_length": len(self.queue),
            "limits": lim.to_dict(),
            "model_info": caps,
            "secure": self._keys is not None,
        }

    # --------------------------------------------------------------------------------------- I/O loop
    def _io_main(self) -> None:
        assert self.context is not None
        router = self.context.socket(zmq.ROUTER)
        events = self.context.socket(zmq.PULL)
        try:
            router.setsockopt(zmq.LINGER, 1000)
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            # libzmq drops a connection whose single frame exceeds this; smaller oversize messages get an
            # error reply (message_too_large) from decode().
            router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes + 65536)
            router.setsockopt(zmq.SNDHWM, 10000)
            if self._keys is not None:
                apply_server_keys(router, self._keys)
            events.bind(self._events_address)
            router.bind(self.config.bind)
            self.address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._bind_error = exc
            router.close(0)
            events.close(0)
            self._bound.set()
            return
        self._router = router
        self._bound.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(events, zmq.POLLIN)
        try:
            while not self._shutdown.is_set():
                try:
                    ready = dict(poller.poll(200))
                    if events in ready:
                        self._drain_events(events)
                    if router in ready:
                        for _ in range(100):  # bounded, so worker events are not starved
                            try:
                                frames = router.recv_multipart(zmq.NOBLOCK)
                            except zmq.Again:
                                break
                            self._handle_request(frames)
                except zmq.ZMQError:
                    raise
                except Exception:  # noqa: BLE001 - one bad event must not stop the server
                    log.exception("error in the I/O loop; continuing")
            self._shutdown_sequence(events)
        except Exception:  # noqa: BLE001 - log, then let stop() clean up
            log.exception("the I/O loop crashed")
        finally:
            self._workers_stop.set()
            router.close(linger=1000)
            events.close(0)
            self._router = None

    def _send(self, identity: bytes, frames: list[Any]) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart([identity, *frames], copy=False)  # pyzmq copies small frames
        except zmq.ZMQError as exc:  # the peer is gone or its queue is full: drop, as ROUTER does
            log.warning("could not send to client %s: %s", identity.hex()[:16], exc)

    def _publish(self, job_id: str, frames: list[Any]) -> None:
        for identity in list(self._subscribers.get(job_id, ())):
            self._send(identity, frames)

    def _handle_request(self, frames: list[bytes]) -> None:
        self.stats["received"] += 1
        identity, body = frames[0], frames[1:]
        try:
            msg = P.decode(body, expect=P.CLIENT_TYPES, limits=self.limits)
            handler = getattr(self, f"_on_{msg.type}")
            handler(identity, msg)
        except P.ProtocolError as exc:
            self.stats["rejected"] += 1
            log.info("rejected a message from client %s: %s (%s)", identity.hex()[:16], exc.message, exc.code)
            self._send(
                identity,
                P.error_frames(exc.code, exc.message, exc.hint, req=P.request_id(body) if body else None),
            )
        except Exception as exc:  # noqa: BLE001 - the server keeps serving after anything
            self.stats["rejected"] += 1
            log.exception("error handling a message from client %s", identity.hex()[:16])
            req = P.request_id(body) if body else None
            self._send(
                identity, P.error_frames("internal_error", f"{type(exc).__name__}: {str(exc)[:200]}", req=req)
            )

    def _reply(
        self, identity: bytes, msg: P.Message, msg_type: str, fields: dict[str, Any], parts: Any = ()
    ) -> None:
        if msg.req is not None:
            fields = {**fields, "req": msg.req}
        self._send(identity, P.encode(msg_type, fields, parts))

    # ------------------------------------------------------------------------------------- handlers
    def _on_hello(self, identity: bytes, msg: P.Message) -> None:
        self._reply(identity, msg, "hello", self.capabilities())

    def _on_release(self, identity: bytes, msg: P.Message) -> None:
        for w in self.workers:
            w.request_release()
        busy = sum(1 for w in self.workers if w.current is not None)
        self._reply(identity, msg, "released", {"workers": len(self.workers), "after_running_jobs": busy})
        log.info("model release requested (%d worker(s) busy finish their job first)", busy)

    def _on_heartbeat(self, identity: bytes, msg: P.Message) -> None:
        states = {}
        for job_id in P.parse_heartbeat(msg):
            rec = self.store.get(job_id)
            states[job_id] = rec.state if rec is not None else "unknown"
        self._reply(
            identity, msg, "heartbeat", {"jobs": states, "queue_length": len(self.queue), "time": time.time()}
        )

    def _on_submit(self, identity: bytes, msg: P.Message) -> None:
        sub = P.parse_submit(msg, self.limits)
        n = sub.num_frames
        if self.config.window_frames and n > self.config.window_frames and not self.config.long_animation:
            raise P.ProtocolError(
                "too_many_frames",
                f"{n} frames requested; this server animates at most {self.config.window_frames} per job",
                "split the animation into shorter jobs",
            )
        model_size = self.model_size()
        if model_size is not None:  # refuse now a size the model would fail on after its preparation
            p, ref = sub.params, sub.reference_info
            if p.width and p.height:
                model_size_check = (p.width, p.height)
            elif ref is not None:  # the runner's default: the reference image's size
                model_size_check = (ref.width, ref.height)
            else:
                model_size_check = None
            if model_size_check is not None:
                P.check_model_size(*model_size_check, model_size)
        if sub.params.lora is not None and sub.params.lora not in self.lora_paths():
            raise P.ProtocolError(
                "unknown_lora",
                f"the server has no LoRA named {sub.params.lora!r}",
                "available: " + (", ".join(sorted(self.lora_paths())) or "none"),
            )
        if len(self.queue) >= self.queue.maxsize:
            raise P.ProtocolError("queue_full", f"{len(self.queue)} jobs are already waiting")
        rec = self.store.create(sub)
        self._subscribers[rec.job_id] = {identity}
        try:
            position = self.queue.put(rec.job_id)
        except QueueFull as exc:
            self._subscribers.pop(rec.job_id, None)
            self.store.set_state(rec.job_id, "failed", error=P.ProtocolError("queue_full", str(exc)).fields())
            raise P.ProtocolError("queue_full", str(exc)) from None
        self.stats["accepted"] += 1
        self._reply(
            identity, msg, "accepted", {"job_id": rec.job_id, "queue_position": position, "num_frames": n}
        )
        log.info("job %s accepted: %d frames, queue position %d", rec.job_id, n, position)

    def _status_fields(self, job_id: str) -> dict[str, Any]:
        rec = self.store.get(job_id)
        if rec is None:
            raise P.ProtocolError("unknown_job", f"no job {job_id}")
        fields: dict[str, Any] = {
            "job_id": job_id,
            "state": rec.state,
            "num_frames": rec.status.get("num_frames"),
        }
        position = self.queue.position(job_id)
        if position is not None:
            fields["queue_position"] = position
        for key in ("error", "meta", "created", "updated", "device"):
            if rec.status.get(key) is not None:
                fields[key] = rec.status[key]
        if job_id in self._last_progress and not rec.terminal:
            fields["progress"] = self._last_progress[job_id]
        return fields

    def _on_status(self, identity: bytes, msg: P.Message) -> None:
        self._reply(identity, msg, "status", self._status_fields(P.parse_job_request(msg)))

    def _on_cancel(self, identity: bytes, msg: P.Message) -> None:
        job_id = P.parse_job_request(msg)
        rec = self.store.get(job_id)
        if rec is None:
            raise P.ProtocolError("unknown_job", f"no job {job_id}")
        if not rec.terminal:
            if self.queue.remove(job_id):
                err = P.ProtocolError("cancelled", "the job was cancelled before it started")
                self.store.set_state(job_id, "cancelled", error=err.fields())
                self._finish(job_id, P.error_frames(err.code, err.message, err.hint, job_id=job_id))
                log.info("job %s cancelled while queued", job_id)
            else:
                self.control.cancel(job_id)
                log.info("job %s: cancel requested", job_id)
        fields = self._status_fields(job_id)
        fields["cancel_requested"] = True
        self._reply(identity, msg, "status", fields)

    def _on_fetch(self, identity: bytes, msg: P.Message) -> None:
        job_id = P.parse_job_request(msg)
        rec = self.store.get(job_id)
        if rec is None:
            raise P.ProtocolError("unknown_job", f"no job {job_id}")
        if rec.terminal:
            self._send(identity, self._stored_answer(rec, msg.req))
        else:  # still queued or running: the result will follow on this connection
            self._subscribers.setdefault(job_id, set()).add(identity)
            self._reply(identity, msg, "status", self._status_fields(job_id))

    def _stored_answer(self, rec: JobRecord, req: str | None = None) -> list[Any]:
        """A finished job's result read back from the job store, or its error."""
        if rec.state == "done":
            meta = rec.status.get("meta") or {}
            fmt = meta.get("frame_format", "png")
            fmt = fmt if fmt in P.FRAME_FORMATS else "png"
            return P.build_result(
                rec.job_id,
                self.store.read_outputs(rec.job_id, fmt),
                meta,
                req=req,
                frame_format=fmt,
                width=meta.get("width"),
                height=meta.get("height"),
            )
        err = rec.status.get("error") or {}
        code = err.get("code") or ("interrupted" if rec.state == "interrupted" else rec.state)
        message = err.get("message") or f"the job is {rec.state}"
        return P.error_frames(code, message, err.get("hint"), req=req, job_id=rec.job_id)

    # ---------------------------------------------------------------------------------- worker events
    def _finish(self, job_id: str, frames: list[Any]) -> None:
        self._publish(job_id, frames)
        self._subscribers.pop(job_id, None)
        self._last_progress.pop(job_id, None)
        self.control.discard(job_id)

    def _drain_events(self, events: zmq.Socket) -> None:
        for _ in range(1000):
            try:
                kind, job_bytes, *frames = events.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            kind_b, job_id = kind.bytes, job_bytes.bytes.decode()
            if kind_b == b"progress":
                with contextlib.suppress(P.ProtocolError):
                    self._last_progress[job_id] = P.decode_header(frames[0].bytes)
                self._publish(job_id, frames)
            elif kind_b == b"preview":
                self._publish(job_id, frames)
            elif kind_b == b"final":
                self._finish(job_id, frames)
            elif kind_b == b"stored":  # the result is on disk: answer the fetches that came meanwhile
                late = self._subscribers.pop(job_id, set())
                rec = self.store.get(job_id)
                if late and rec is not None:
                    answer = self._stored_answer(rec)
                    for identity in late:
                        self._send(identity, answer)
            elif kind_b == b"started":
                for position, waiting in enumerate(self.queue.snapshot(), start=1):
                    self._publish(waiting, P.build_progress(waiting, "queued", queue_position=position))

    def _shutdown_sequence(self, events: zmq.Socket) -> None:
        log.info("stopping: queued jobs become interrupted, running jobs are stopped")
        for job_id in self.queue.close():
            err = P.ProtocolError("interrupted", "the server stopped before this job started")
            self.store.set_state(job_id, "interrupted", error=err.fields())
            self._finish(job_id, P.error_frames(err.code, err.message, err.hint, job_id=job_id))
        self._workers_stop.set()
        for w in self.workers:
            if w.current is not None:
                self.control.cancel(w.current)
        deadline = time.monotonic() + self.config.stop_grace_s
        while any(w.is_alive() for w in self.workers) and time.monotonic() < deadline:
            if events.poll(100):
                self._drain_events(events)
        self._drain_events(events)


def _safe(name: str) -> bool:
    try:
        P.check_name(name)
    except P.ProtocolError:
        return False
    return True
