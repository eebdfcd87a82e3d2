"""The FramePrompt client: a ZeroMQ DEALER owned by one background thread, events handed out via a queue.

No bpy, no torch. Used by the Blender add-on (a main-thread timer drains `client.events`), by the
`frameprompt submit` command and by tests:

    client = FramePromptClient("tcp://127.0.0.1:5555")
    info = client.hello()                                    # server capabilities (blocks, raises on no server)
    job = client.submit("ref.png", ["pose/0000.png", ...], steps=30, seed=1)
    for event in job.events():                               # accepted, progress..., then result or error
        print(event.type, event.header)
    result = job.result()                                    # Result(frames=[png bytes...], meta={...}) or raises
    client.close()

ZeroMQ sockets are not thread-safe, so the socket lives in a single thread; public methods only put
commands on a queue and wake that thread. Liveness: ZMTP heartbeats close a silent connection, and a job
whose server cannot be reached for `timeout` seconds fails with code 'server_unavailable' and the
message "no FramePrompt backend at <address>; start it with `frameprompt serve ...`".
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import queue
import socket as pysocket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol as P

log = logging.getLogger("frameprompt.client")

# What the client accepts from a server: results can be large; the server's own limits still apply to it.
_RECEIVE_LIMITS = P.Limits(max_message_bytes=2**40, max_header_bytes=64 * 2**20)
# Structural checks only before the server's limits are known (hello); the server enforces its caps.
_LOOSE_LIMITS = P.Limits(
    max_message_bytes=2**40,
    max_frames=2**20,
    max_width=2**16,
    max_height=2**16,
    max_pixels=2**32,
    max_pose_json_bytes=2**30,
    max_prompt_chars=2**20,
    max_steps=2**20,
)


class ServerUnavailable(P.ProtocolError):
    """No server answered (code 'server_unavailable'), or it refused our key (code 'auth_failed')."""


class RemoteError(P.ProtocolError):
    """An error message sent by the server."""


@dataclass(frozen=True)
class CurveKeys:
    """A client's CurveZMQ keys (Z85 bytes): its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> CurveKeys:
        """Load `client.key_secret` and `server.key` from a folder written by `frameprompt keys`."""
        import zmq.auth

        d = Path(directory).expanduser()
        try:
            public, secret = zmq.auth.load_certificate(str(d / "client.key_secret"))
            server_public, _ = zmq.auth.load_certificate(str(d / "server.key"))
        except (OSError, ValueError) as exc:
            raise P.ProtocolError(
                "auth_failed",
                f"cannot read CurveZMQ keys in {d}: {exc}",
                "pass the folder `frameprompt keys --client NAME` wrote (client.key_secret + server.key)",
            ) from None
        if not secret:
            raise P.ProtocolError("auth_failed", f"{d / 'client.key_secret'} holds no secret key")
        return cls(public, secret, server_public)


@dataclass
class ClientEvent:
    """One thing that happened: a server message (`accepted`, `progress`, `result`, `error`, `status`,
    `hello`, `heartbeat`) or a connection change (`connected`, `disconnected`)."""

    type: str
    header: dict[str, Any]
    parts: list[bytes] = field(default_factory=list)
    job: JobHandle | None = None

    @property
    def job_id(self) -> str | None:
        return self.header.get("job_id") or (self.job.job_id if self.job else None)

    @property
    def error(self) -> P.ProtocolError | None:
        if self.type != "error":
            return None
        h = self.header
        cls = RemoteError if h.get("remote", True) else ServerUnavailable
        return cls(str(h.get("code", "internal_error")), str(h.get("message", "")), h.get("hint"))

    @property
    def terminal(self) -> bool:
        return self.type in ("result", "error") and self.job is not None


class JobHandle:
    """A submitted (or fetched) job, updated by the client thread. Poll `state`/`progress` from a UI timer,
    or block on `wait()`, `result()` or `events()`."""

    def __init__(self, client: FramePromptClient, req: str, job_id: str | None = None) -> None:
        self._client = client
        self.req = req
        self.job_id = job_id
        self.state = "submitting" if job_id is None else "fetching"
        self.queue_position: int | None = None
        self.progress: dict[str, Any] = {}
        # the latest live preview (revision 4): {"step", "total", "mode", "frames": [PNG bytes]}
        self.preview: dict[str, Any] | None = None
        self.previews_received = 0
        self.error: P.ProtocolError | None = None
        self._result: P.Result | None = None
        self._done = threading.Event()
        self._events: queue.Queue[ClientEvent] = queue.Queue()
        self._refetch_sent = False
        self._cancel_on_accept = False

    def __repr__(self) -> str:
        return f"<JobHandle {self.job_id or self.req} {self.state}>"

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> P.Result:
        """The frames, once done. Raises the job's error (RemoteError / ServerUnavailable) or TimeoutError."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.job_id or self.req} not finished after {timeout}s")
        if self.error is not None:
            raise self.error
        assert self._result is not None
        return self._result

    def events(self, timeout: float | None = None) -> Iterator[ClientEvent]:
        """This job's events in order, ending with its result or error. `timeout`: the longest wait for the
        next event (TimeoutError after it)."""
        while True:
            if self._done.is_set() and self._events.empty():
                return
            try:
                ev = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event for job {self.job_id or self.req} in {timeout}s") from None
            yield ev
            if ev.terminal:
                return

    def cancel(self) -> None:
        """Ask the server to cancel; the job then ends with error code 'cancelled' (unless already done)."""
        if self.job_id is not None:
            self._client.cancel(self.job_id)
        else:
            self._client._call("cancel_pending", self)

    # -- called by the client thread
    def _push(self, ev: ClientEvent) -> None:
        h = ev.header
        if ev.type == "accepted":
            self.job_id = h.get("job_id")
            self.state = "queued"
            self.queue_position = h.get("queue_position")
        elif ev.type == "progress":
            self.progress = dict(h)
            if h.get("phase") == "queued":
                self.queue_position = h.get("queue_position")
            else:
                self.state, self.queue_position = "running", None
        elif ev.type == "preview":
            self.preview = {
                "step": h.get("step"),
                "total": h.get("total"),
                "mode": h.get("mode"),
                "frames": list(ev.parts),
            }
            self.previews_received += 1
        elif ev.type == "status":
            self.state = h.get("state", self.state)
            self.queue_position = h.get("queue_position")
        elif ev.type == "result":
            try:
                self._result = P.result_from_parts(h, ev.parts)
            except P.ProtocolError as exc:  # a malformed result is this job's error
                ev = ClientEvent("error", {**exc.fields(), "job_id": h.get("job_id")}, job=self)
                self.error = ev.error
                self.state = "failed"
            else:
                self.state = "done"
        elif ev.type == "error":
            self.error = ev.error
            code = h.get("code")
            self.state = code if code in ("cancelled", "interrupted") else "failed"
        self._events.put(ev)
        if ev.type in ("result", "error"):
            self._done.set()


class FramePromptClient:
    """Talks to one FramePrompt server. Thread-safe: every method may be called from any thread.

    address: tcp://HOST:PORT of `frameprompt serve`.
    curve_keys: None (plain), a folder from `frameprompt keys` (client.key_secret + server.key), or CurveKeys.
    timeout: seconds a request or job may go without reaching the server before it fails.
    heartbeat_interval: seconds between heartbeats while jobs or requests are outstanding.
    emit_events: also put every event, of all jobs, on `self.events` (a queue.Queue) for a UI timer to
        drain. Off by default: an undrained queue would keep every result's frames alive.
    """

    def __init__(
        self,
        address: str = P.DEFAULT_ADDRESS,
        curve_keys: str | os.PathLike | CurveKeys | None = None,
        timeout: float = 10.0,
        *,
        heartbeat_interval: float = 1.0,
        emit_events: bool = False,
    ) -> None:
        P.address_host(address)  # raises ValueError on a malformed address
        self.address = address
        self.timeout = float(timeout)
        self.heartbeat_interval = max(0.02, float(heartbeat_interval))
        # A connected server that sends nothing at all (not even heartbeat replies) for this long is hung.
        self.stall_timeout = max(3 * self.timeout, 30.0)
        self.keys = (
            CurveKeys.from_dir(curve_keys) if isinstance(curve_keys, str | os.PathLike) else curve_keys
        )
        self.events: queue.Queue[ClientEvent] = queue.Queue()
        self.emit_events = emit_events
        self.server_info: dict[str, Any] | None = None
        self.connected = False
        self._limits: P.Limits = _LOOSE_LIMITS
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._wake_r, self._wake_w = pysocket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_lock = threading.Lock()
        self._closed = threading.Event()
        # state below is owned by the client thread
        # req -> (kind, Future | JobHandle, sent at, own timeout or None)
        self._requests: dict[str, tuple[str, Any, float, float | None]] = {}
        self._jobs: dict[str, JobHandle] = {}
        self._outbox: list[tuple[list[bytes], str | None]] = []
        self._ever_connected = False
        self._down_since: float | None = time.monotonic()
        self._last_rx = time.monotonic()
        self._handshake_error: str | None = None
        self._auth_error: str | None = None
        self._thread = threading.Thread(target=self._main, name="frameprompt-client", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ public API
    def hello(self, timeout: float | None = None) -> dict[str, Any]:
        """Server capabilities: model, devices, loras, max_frames, max_width/height, limits, ... (blocks)."""
        info = self._request("hello", P.build_hello(self._new_req(), "frameprompt-client"), timeout)
        self.server_info = info
        with contextlib.suppress(Exception):
            self._limits = P.Limits.from_dict(info.get("limits") or {})
        return info

    @property
    def model_size(self) -> P.ModelSize | None:
        """The model's sizes from the last hello (`model_size`, protocol revision 3), or None (no hello yet,
        an older server, or no model loaded)."""
        return P.ModelSize.from_hello(self.server_info)

    def release_model(self, timeout: float | None = None) -> dict[str, Any]:
        """Ask the server to free its model's memory (revision 4; after the running job, if any); the
        next job loads it again. Raises RemoteError('unknown_type') from an older server."""
        return self._request("released", P.build_release(self._new_req()), timeout)

    def status(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The job's state on the server: {'state', 'queue_position', 'progress', 'error', 'meta', ...}."""
        return self._request("status", P.build_job_request("status", job_id, self._new_req()), timeout)

    def submit(
        self,
        reference: bytes | str | os.PathLike,
        poses: Sequence[bytes | str | os.PathLike],
        *,
        pose_format: str | None = None,
        params: P.JobParams | Mapping[str, Any] | None = None,
        result_format: str | None = None,
        preview: Mapping[str, Any] | None = None,
        **param_fields: Any,
    ) -> JobHandle:
        """Send a job; returns at once with a JobHandle (its job_id arrives with the `accepted` event).

        reference: PNG bytes or a path. poses: one per frame, PNG (skeleton image) or OpenPose JSON, as
        bytes or paths. pose_format: 'png' or 'openpose_json' (default: guessed from the first pose).
        params / keyword fields: num_frames, width, height, steps, guidance_scale, seed, prompt, lora,
        lora_scale, fps, options (see protocol.JobParams). Raises ProtocolError on invalid input.
        result_format: None/'png' (PNG frames) or 'rgb8' (raw RGB frames, protocol revision 2: cheaper for
        the server; a server that does not offer it answers with PNG). Check `Result.frame_format`.
        preview: None or {"mode": "fast" | "vae", "every": steps, "max_side": pixels} (revision 4): the
        handle's `preview` then holds the latest small PNG frames of the current estimate.
        """
        ref = _read(reference)
        pose_data = [_read(p) for p in poses]
        if pose_format is None:
            first = pose_data[0] if pose_data else b""
            pose_format = "png" if first.startswith(b"\x89PNG") else "openpose_json"
        merged = params.to_dict() if isinstance(params, P.JobParams) else dict(params or {})
        merged.update({k: v for k, v in param_fields.items() if v is not None})
        req = self._new_req()
        frames = P.build_submit(
            ref,
            pose_data,
            pose_format=pose_format,
            params=merged,
            req=req,
            limits=self._limits,
            result_format=result_format,
            preview=preview,
        )
        handle = JobHandle(self, req)
        self._call("submit", (frames, handle))
        return handle

    def fetch(self, job_id: str) -> JobHandle:
        """Re-attach to a job (e.g. after a reconnect or restart): the handle gets its result or error;
        if it is still running, its progress follows."""
        req = self._new_req()
        frames = P.build_job_request("fetch", job_id, req)
        handle = JobHandle(self, req, job_id)
        self._call("fetch", (frames, handle))
        return handle

    def cancel(self, job_id: str) -> None:
        """Ask the server to cancel `job_id`. The job's handle then ends with error 'cancelled'."""
        self._call("send", P.build_job_request("cancel", job_id, self._new_req()))

    def close(self, timeout: float = 2.0) -> None:
        """Stop the client thread; unfinished handles fail with code 'closed'."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._fail_leftover_commands()  # a call that raced with close()
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> FramePromptClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- plumbing
    def _new_req(self) -> str:
        return f"{self._prefix}-{next(self._ids)}"

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _call(self, kind: str, arg: Any) -> None:
        if self._closed.is_set():
            raise P.ProtocolError("closed", "the FramePrompt client is closed")
        self._commands.put((kind, arg))
        self._wake()

    def _request(self, kind: str, frames: list[bytes], timeout: float | None) -> dict[str, Any]:
        fut: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._call("request", (frames, kind, fut, timeout))
        limit = (timeout if timeout is not None else self.timeout) + 5.0  # the thread answers first
        try:
            return fut.result(limit)
        except concurrent.futures.TimeoutError:
            raise ServerUnavailable("timeout", f"no answer from {self.address} in {limit:.0f}s") from None

    def _unavailable_error(self, lost: bool) -> ServerUnavailable:
        if self._auth_error:
            return ServerUnavailable(
                "auth_failed", f"the server at {self.address} rejected this client's key"
            )
        detail = f" (last handshake failed: {self._handshake_error})" if self._handshake_error else ""
        if lost:
            msg = f"lost the connection to the FramePrompt backend at {self.address} for {self.timeout:g}s{detail}"
        else:
            msg = f"no FramePrompt backend at {self.address}{detail}"
        return ServerUnavailable(
            "server_unavailable",
            msg,
            f"start it with `frameprompt serve --bind {self.address}`"
            + (" and check the CurveZMQ keys" if self.keys else "")
            + ", or check the address and firewall",
        )

    # --------------------------------------------------------------------------- the client thread
    def _main(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        monitor = None
        try:
            sock.setsockopt(zmq.ROUTING_ID, f"fp-{uuid.uuid4().hex}".encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a server that is not there (no stale jobs)
            sock.setsockopt(zmq.RCVHWM, 100000)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            ivl = int(self.heartbeat_interval * 1000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, max(ivl, 100))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(int(self.timeout * 1000), 3 * ivl))
            sock.setsockopt(zmq.HEARTBEAT_TTL, max(int(self.timeout * 1000), 3 * ivl))
            if self.keys is not None:
                sock.curve_secretkey = self.keys.secret
                sock.curve_publickey = self.keys.public
                sock.curve_serverkey = self.keys.server_public
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED
                | zmq.EVENT_DISCONNECTED
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            )
            sock.connect(self.address)
            self._loop(sock, monitor)
        except Exception:  # noqa: BLE001 - fail every waiter with the reason rather than hang them
            log.exception("the FramePrompt client thread crashed")
            self._fail_all(
                P.ProtocolError("internal_error", "the FramePrompt client thread crashed"), remote=False
            )
        finally:
            self._closed.set()
            self._fail_all(P.ProtocolError("closed", "the FramePrompt client was closed"), remote=False)
            self._fail_leftover_commands()
            if monitor is not None:
                with contextlib.suppress(Exception):
                    sock.disable_monitor()
                monitor.close(0)
            sock.close(0)
            ctx.term()

    def _loop(self, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_heartbeat = time.monotonic()
        while not self._closed.is_set():
            wait_ms = 50 if self._outbox else int(self.heartbeat_interval * 1000)
            ready = dict(poller.poll(max(10, min(wait_ms, 250))))
            if self._wake_r.fileno() in ready:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            self._take_commands()
            if monitor in ready:
                self._on_monitor(monitor)
            if sock in ready:
                for _ in range(1000):
                    try:
                        raw = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(_frames_from(raw))
            self._flush(sock)
            now = time.monotonic()
            busy = bool(self._requests or self._jobs)
            if busy and now >= next_heartbeat:
                next_heartbeat = now + self.heartbeat_interval
                if self.connected:
                    self._outbox.append((P.build_heartbeat(list(self._jobs)), None))
                    self._flush(sock)
            self._check_timeouts(now, busy)

    def _fail_leftover_commands(self) -> None:
        err = P.ProtocolError("closed", "the FramePrompt client was closed")
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "request" and not arg[2].done():
                arg[2].set_exception(err)
            elif kind in ("submit", "fetch") and not arg[1].done():
                arg[1]._push(ClientEvent("error", {**err.fields(), "remote": False}, job=arg[1]))

    def _take_commands(self) -> None:
        while True:
            try:
                kind, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            now = time.monotonic()
            if not (self._requests or self._jobs):
                self._last_rx = max(self._last_rx, now)  # the silence clock starts when there is work
                if self._down_since is not None:
                    self._down_since = max(self._down_since, now)
            if kind == "request":
                frames, rkind, fut, timeout = arg
                req = str(P.decode_header(frames[0]).get("req"))
                self._requests[req] = (rkind, fut, now, timeout)
                self._outbox.append((frames, req))
            elif kind in ("submit", "fetch"):
                frames, handle = arg
                self._requests[handle.req] = (kind, handle, now, None)
                if handle.job_id is not None:
                    self._jobs[handle.job_id] = handle
                self._outbox.append((frames, handle.req))
            elif kind == "send":
                self._outbox.append((arg, None))
            elif kind == "cancel_pending":  # cancel before 'accepted': cancel as soon as the id arrives
                arg._cancel_on_accept = True

    def _flush(self, sock: zmq.Socket) -> None:
        while self._outbox:
            frames, _req = self._outbox[0]
            try:
                sock.send_multipart(frames, zmq.NOBLOCK, copy=False)  # pyzmq copies small frames
            except zmq.Again:
                return  # no connection yet (IMMEDIATE): keep it until one exists or the request times out
            self._outbox.pop(0)

    def _on_monitor(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            try:
                ev = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            event = ev["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected, self._ever_connected, self._down_since = True, True, None
                self._auth_error = self._handshake_error = None
                self._last_rx = time.monotonic()
                self._emit(ClientEvent("connected", {"address": self.address}))
            elif event == zmq.EVENT_DISCONNECTED:
                if self.connected:
                    self._emit(ClientEvent("disconnected", {"address": self.address}))
                self.connected = False
                if self._down_since is None:
                    self._down_since = time.monotonic()
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._auth_error = f"status {ev.get('value')}"
                err = self._unavailable_error(lost=False)
                self._fail_all(err, remote=False)
            else:
                self._handshake_error = "CurveZMQ keys do not match" if self.keys else "protocol mismatch"

    def _check_timeouts(self, now: float, busy: bool) -> None:
        if not busy:
            return
        if self._down_since is not None and now - self._down_since > self.timeout:
            self._fail_all(self._unavailable_error(lost=self._ever_connected), remote=False)
            self._outbox.clear()
        elif self.connected and now - self._last_rx > self.stall_timeout:
            self._fail_all(
                ServerUnavailable("timeout", f"the backend at {self.address} stopped answering"), remote=False
            )
        # hello/status answer at once when the server is there: they have their own deadline
        for req, (_kind, target, sent, timeout) in list(self._requests.items()):
            if isinstance(target, concurrent.futures.Future) and now - sent > (timeout or self.timeout):
                self._requests.pop(req, None)
                if not target.done():
                    err = (
                        ServerUnavailable(
                            "timeout", f"no answer from {self.address} in {timeout or self.timeout:g}s"
                        )
                        if self.connected
                        else self._unavailable_error(lost=self._ever_connected)
                    )
                    target.set_exception(err)

    def _fail_all(self, err: P.ProtocolError, remote: bool) -> None:
        header = {**err.fields(), "remote": remote}
        for _req, (_kind, target, _sent, _t) in list(self._requests.items()):
            if isinstance(target, concurrent.futures.Future):
                if not target.done():
                    target.set_exception(err)
            elif not target.done():
                self._deliver(target, ClientEvent("error", {**header, "job_id": target.job_id}, job=target))
        for handle in list(self._jobs.values()):
            if not handle.done():
                self._deliver(handle, ClientEvent("error", {**header, "job_id": handle.job_id}, job=handle))
        self._requests.clear()
        self._jobs.clear()

    def _emit(self, ev: ClientEvent) -> None:
        if self.emit_events:
            self.events.put(ev)

    def _deliver(self, handle: JobHandle, ev: ClientEvent) -> None:
        handle._push(ev)
        self._emit(ev)
        if handle.done():
            for req, entry in list(self._requests.items()):
                if entry[1] is handle:
                    self._requests.pop(req, None)
            if handle.job_id is not None:
                self._jobs.pop(handle.job_id, None)

    def _on_message(self, frames: list[bytes]) -> None:
        self._last_rx = time.monotonic()
        try:
            msg = P.decode(frames, expect=P.SERVER_TYPES, limits=_RECEIVE_LIMITS)
        except P.ProtocolError as exc:
            log.warning("dropped a message from the server: %s", exc)
            return
        h, req, job_id = msg.header, msg.req, msg.job_id
        pending = self._requests.get(req) if req else None
        if msg.type == "heartbeat":
            self._on_heartbeat(h)
            return
        if req is not None and pending is not None and isinstance(pending[1], concurrent.futures.Future):
            self._requests.pop(req, None)
            fut = pending[1]
            if msg.type == "error":
                fut.set_exception(RemoteError(str(h.get("code")), str(h.get("message", "")), h.get("hint")))
            else:
                fut.set_result(h)
            self._emit(ClientEvent(msg.type, h, msg.parts))
            return
        handle = self._jobs.get(job_id) if job_id else None
        if handle is None and pending is not None:
            handle = pending[1]
        if handle is None:
            self._emit(ClientEvent(msg.type, h, msg.parts))
            return
        if msg.type == "accepted":
            self._requests.pop(handle.req, None)
            self._jobs[h["job_id"]] = handle
        elif msg.type == "status" and pending is not None:
            self._requests.pop(handle.req, None)  # a fetch of an unfinished job: now tracked by job id
        self._deliver(handle, ClientEvent(msg.type, h, msg.parts, handle))
        if msg.type == "accepted" and getattr(handle, "_cancel_on_accept", False):
            self._outbox.append((P.build_job_request("cancel", h["job_id"], self._new_req()), None))

    def _on_heartbeat(self, h: dict[str, Any]) -> None:
        states = h.get("jobs")
        if not isinstance(states, dict):
            return
        for job_id, state in states.items():
            handle = self._jobs.get(job_id)
            if handle is None or handle.done() or handle._refetch_sent:
                continue
            if state in P.TERMINAL_STATES or state == "unknown":
                # the final message was lost (reconnect, restart): ask for it again
                handle._refetch_sent = True
                req = self._new_req()
                self._requests[req] = ("fetch", handle, time.monotonic(), None)
                self._outbox.append((P.build_job_request("fetch", job_id, req), req))


def _frames_from(raw: list[zmq.Frame]) -> list[Any]:
    """Received frames as bytes; rgb8 result frames (revision 2) as zero-copy memoryviews instead, since
    they are large and only ever read. PNG frames stay bytes, as revision-1 callers expect."""
    head = raw[0].bytes
    zero_copy = len(raw) > 1 and b'"rgb8"' in head
    return [head] + [f.buffer if zero_copy and len(f) > 65536 else f.bytes for f in raw[1:]]


def _read(item: bytes | str | os.PathLike) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    return Path(item).read_bytes()
