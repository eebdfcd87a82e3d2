"""The backend server in-process, over real loopback sockets, with fake runners (no model needed)."""

from __future__ import annotations

import io
import json
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from frameprompt.errors import InputError
from frameprompt.server import (
    EchoRunner,
    InsecureBindError,
    JobStore,
    Server,
    ServerConfig,
    atomic_write,
    check_bind,
    create_keys,
)
from frameprompt.server.worker import JobSpec, RunContext
from PIL import Image

from frameprompt_blender.wire import protocol as P
from frameprompt_blender.wire.client import FramePromptClient, RemoteError, ServerUnavailable

LOOPBACK = "tcp://127.0.0.1:*"


def png(size: tuple[int, int] = (16, 16), color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class FakeRunner:
    """Steps with an optional delay; the prompt picks a failure: oom, crash, input, wrong_count."""

    def __init__(self, device: str, step_delay: float = 0.0, steps: int = 3) -> None:
        self.device, self.step_delay, self.steps = device, step_delay, steps
        self.calls = 0

    def capabilities(self) -> dict[str, Any]:
        return {"model": "fake", "resolutions": [[16, 16]]}

    def __call__(self, job: JobSpec, ctx: RunContext) -> list[Image.Image]:
        self.calls += 1
        prompt = job.params.prompt or ""
        if prompt == "oom":
            import torch

            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if prompt == "crash":
            raise RuntimeError("boom")
        if prompt == "input":
            raise InputError("the skeleton is empty", "draw a skeleton")
        steps = job.params.steps or self.steps
        for i in range(steps):
            ctx.check_cancelled()
            if self.step_delay:
                time.sleep(self.step_delay)
            ctx.progress("denoising", i + 1, steps)
        n = job.num_frames - (1 if prompt == "wrong_count" else 0)
        return [Image.blend(job.reference, p.resize(job.reference.size), 0.5) for p in job.poses[:n]]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(factory: Callable[[str], Any] | None = None, **overrides: Any) -> Server:
        overrides.setdefault("jobs_dir", tmp_path / "jobs")
        cfg = ServerConfig(bind=LOOPBACK, fsync=False, stop_grace_s=3.0, **overrides)
        server = Server(cfg, factory or (lambda device: FakeRunner(device)))
        server.start()
        servers.append(server)
        server.wait_ready(10)
        return server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., FramePromptClient]]:
    made: list[FramePromptClient] = []

    def make(address: str, **kw: Any) -> FramePromptClient:
        kw.setdefault("timeout", 3.0)
        kw.setdefault("heartbeat_interval", 0.2)
        c = FramePromptClient(address, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class Raw:
    """A bare DEALER for sending arbitrary (malformed) frames."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def ask(self, frames: list[bytes], timeout: float = 3.0) -> list[bytes]:
        self.sock.send_multipart(frames)
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError(f"no reply to {frames[:1]!r}")
        return self.sock.recv_multipart()

    def header(self, frames: list[bytes], timeout: float = 3.0) -> dict[str, Any]:
        return json.loads(self.ask(frames, timeout)[0])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def raw() -> Iterator[Callable[[str], Raw]]:
    made: list[Raw] = []

    def make(address: str) -> Raw:
        r = Raw(address)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def submit(client: FramePromptClient, n: int = 2, **params: Any):
    return client.submit(png(), [png(color=(0, 9 * i, 0)) for i in range(n)], **params)


# ------------------------------------------------------------------------------------------- basics


def wait_done(client: FramePromptClient, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The result is sent before it is stored: wait until the job is "done" on disk."""
    deadline = time.monotonic() + timeout
    while (status := client.status(job_id))["state"] != "done" and time.monotonic() < deadline:
        time.sleep(0.02)
    return status


def test_round_trip_progress_in_order_and_outputs_on_disk(make_server, clients) -> None:
    server = make_server()
    client = clients(server.address)
    info = client.hello()
    assert info["model"] == "fake" and info["protocol"] == P.PROTOCOL_VERSION and info["ready"]
    assert info["devices"] == ["cpu"] and info["max_frames"] == P.DEFAULT_LIMITS.max_frames
    assert info["resolutions"] == [[16, 16]] and "png" in info["pose_formats"]

    job = submit(client, 3, steps=5, seed=11)
    events = list(job.events(timeout=10))
    types = [e.type for e in events]
    assert types[0] == "accepted" and types[-1] == "result"
    progress = [e.header for e in events if e.type == "progress"]
    phases = [p["phase"] for p in progress]
    assert phases == sorted(phases, key=P.PHASES.index)  # phases never go back
    steps = [p["step"] for p in progress if p["phase"] == "denoising"]
    assert steps == [1, 2, 3, 4, 5]
    assert all(p["total"] == 5 and p["eta_s"] >= 0 for p in progress if p["phase"] == "denoising")

    result = job.result()
    assert result.meta["seed"] == 11 and len(result.frames) == 3
    assert Image.open(io.BytesIO(result.frames[0])).size == (16, 16)
    assert wait_done(client, job.job_id)["meta"]["persist_s"] >= 0
    outputs = sorted((server.store.outputs_dir(job.job_id)).iterdir())
    assert [p.name for p in outputs] == ["0000.png", "0001.png", "0002.png"]
    # fetch again, as after a reconnect
    again = client.fetch(job.job_id).result(5)
    assert again.frames == result.frames


def test_events_reach_the_ui_queue(make_server, clients) -> None:
    server = make_server()
    client = clients(server.address, emit_events=True)
    job = submit(client, 1)
    job.result(10)
    seen = []
    while not client.events.empty():
        seen.append(client.events.get_nowait())
    job_events = [e.type for e in seen if e.job is job]
    assert job_events[0] == "accepted" and job_events[-1] == "result" and "progress" in job_events


def test_cancel_mid_job_and_while_queued(make_server, clients) -> None:
    server = make_server(lambda d: FakeRunner(d, step_delay=0.05))
    client = clients(server.address)
    running = submit(client, 1, steps=200)
    waiting = submit(client, 1, steps=200)
    for ev in running.events(timeout=5):
        if ev.type == "progress" and ev.header.get("step", 0) >= 2:
            break
    assert waiting.job_id is not None or waiting.wait(0) is False
    t0 = time.monotonic()
    running.cancel()
    with pytest.raises(RemoteError) as info:
        running.result(5)
    assert info.value.code == "cancelled" and time.monotonic() - t0 < 2
    assert running.progress["step"] < 200
    # the second job started after the first was cancelled; cancel it too
    waiting.cancel()
    with pytest.raises(RemoteError, match="cancelled"):
        waiting.result(5)
    assert client.status(running.job_id)["state"] == "cancelled"

    # a job cancelled while still queued never starts
    server2 = make_server(
        lambda d: FakeRunner(d, step_delay=0.05), jobs_dir=server.config.jobs_dir.parent / "j2"
    )
    c2 = clients(server2.address)
    first = submit(c2, 1, steps=40)
    queued = submit(c2, 1, steps=40)
    for ev in queued.events(timeout=5):
        if ev.type == "accepted":
            break
    c2.cancel(queued.job_id)
    with pytest.raises(RemoteError, match="cancelled"):
        queued.result(5)
    assert c2.status(queued.job_id)["error"]["message"].endswith("before it started")
    first.cancel()
    with pytest.raises(RemoteError):
        first.result(5)


def test_queue_is_bounded(make_server, clients) -> None:
    server = make_server(lambda d: FakeRunner(d, step_delay=0.05), queue_size=1)
    client = clients(server.address)
    jobs = [submit(client, 1, steps=100)]
    for ev in jobs[0].events(timeout=5):  # wait until the worker holds it
        if ev.type == "progress":
            break
    jobs.append(submit(client, 1, steps=100))
    jobs.append(submit(client, 1, steps=100))
    with pytest.raises(RemoteError) as info:
        jobs[2].result(5)
    assert info.value.code == "queue_full"
    assert jobs[1].state in ("queued", "submitting")
    for j in jobs[:2]:
        j.cancel() if j.job_id else None
    for j in jobs[:2]:
        j.wait(5)


def test_twenty_clients_times_five_jobs(make_server, clients) -> None:
    server = make_server(queue_size=200, devices=["cpu:0", "cpu:1"])
    results: dict[str, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one_client(k: int) -> None:
        try:
            c = clients(server.address, timeout=20)
            handles = [submit(c, 2, seed=k * 10 + i, steps=1) for i in range(5)]
            for h in handles:
                r = h.result(60)
                with lock:
                    results[h.job_id] = len(r.frames)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[:3]
    assert len(results) == 100 and set(results.values()) == {2}
    deadline = time.monotonic() + 10  # results are sent first, then stored
    while len(done := [j for j in server.store.job_ids() if server.store.get(j).state == "done"]) < 100:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(done) == 100
    assert {w.device for w in server.workers} == {"cpu:0", "cpu:1"}


# ----------------------------------------------------------------------------- bad input and faults


def test_every_bad_message_gets_a_coded_error_and_the_server_keeps_serving(make_server, raw, clients) -> None:
    limits = P.Limits(
        max_message_bytes=200_000, max_frames=4, max_width=64, max_height=64, max_pixels=64 * 64
    )
    server = make_server(limits=limits)
    r = raw(server.address)
    good_header = json.loads(P.build_submit(png(), [png()])[0])

    def submit_with(binary: list[bytes], **changes: Any) -> list[bytes]:
        header = {**good_header, **changes}
        return [json.dumps(header).encode(), *binary]

    bomb = raw_png(50_000, 50_000, zlib.compress(b"\0" * 100_000, 9))
    cases: list[tuple[list[bytes], str]] = [
        ([b""], "bad_message"),
        ([b"\x00\x01garbage"], "bad_message"),
        ([b'{"v": 1}'], "unknown_type"),
        ([b'{"v": 2, "type": "hello", "req": "old"}'], "unsupported_version"),
        ([b'{"v": 1, "type": "frobnicate"}'], "unknown_type"),
        ([b'{"v": 1, "type": "hello"}', b"x" * 150_000, b"y" * 150_000], "message_too_large"),
        (P.build_submit(png(), [png()] * 5, limits=P.Limits()), "too_many_frames"),
        (P.build_submit(png((128, 16)), [png()], limits=P.Limits()), "resolution_too_large"),
        (submit_with([bomb, png()]), "resolution_too_large"),
        (submit_with([png(), b"\x89PNG\r\n\x1a\nnope"]), "bad_image"),
        (
            submit_with(
                [png(), png()], parts=[good_header["parts"][0], {"name": "../../evil.png", "role": "pose"}]
            ),
            "bad_name",
        ),
        (submit_with([png(), png()], params={"steps": -3}), "bad_request"),
        (submit_with([png(), png()], params={"lora": "nope"}), "unknown_lora"),
        (submit_with([png(), png()], params={"num_frames": 2}), "bad_request"),
        ([b'{"v": 1, "type": "fetch", "job_id": "../../etc"}'], "bad_name"),
        ([b'{"v": 1, "type": "status", "job_id": "ffffffffffffffff"}'], "unknown_job"),
        ([b'{"v": 1, "type": "cancel"}'], "bad_name"),
        ([b'{"v": 1, "type": "heartbeat", "jobs": "x"}'], "bad_request"),
    ]
    for frames, code in cases:
        reply = r.header(frames)
        assert reply["type"] == "error", (frames[0][:80], reply)
        assert reply["code"] == code, (frames[0][:80], reply)
        assert reply["message"] and reply["hint"]
    assert r.header([b'{"v": 2, "type": "hello", "req": "old"}'])["req"] == "old"
    # one frame far above the cap: libzmq drops that connection (no reply is possible); others go on
    r.sock.send_multipart([b'{"v": 1, "type": "hello"}', b"z" * 1_000_000])
    assert not r.sock.poll(500)
    # and a valid job still completes
    client = clients(server.address)
    assert len(submit(client, 2).result(10).frames) == 2
    assert server.stats["rejected"] >= len(cases)


def test_decode_failures_in_the_worker_are_job_errors(make_server, clients, raw) -> None:
    # A PNG whose header is fine but whose pixel data is not: caught when the worker decodes it.
    server = make_server()
    r = raw(server.address)
    broken = raw_png(16, 16, zlib.compress(b"\x07" * 10))
    frames = P.build_submit(png(), [png()])
    header = json.loads(frames[0])
    accepted = r.header([frames[0], frames[1], broken])
    assert accepted["type"] == "accepted"
    job_id = accepted["job_id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg = json.loads(r.sock.recv_multipart()[0]) if r.sock.poll(5000) else {}
        if msg.get("type") == "error":
            break
    assert msg["code"] == "bad_image" and msg["job_id"] == job_id and header["type"] == "submit"
    client = clients(server.address)
    assert client.status(job_id)["state"] == "failed"


def test_out_of_memory_gives_a_hint_and_the_worker_recovers(make_server, clients) -> None:
    server = make_server()
    client = clients(server.address)
    with pytest.raises(RemoteError) as info:
        submit(client, 1, prompt="oom").result(20)
    assert info.value.code == "out_of_memory"
    assert "fewer frames" in info.value.hint and "resolution" in info.value.hint
    assert len(submit(client, 1).result(10).frames) == 1


@pytest.mark.parametrize(
    ("prompt", "code"),
    [("crash", "internal_error"), ("input", "bad_input"), ("wrong_count", "frameprompt_error")],
)
def test_runner_failures_are_reported_and_survived(make_server, clients, prompt: str, code: str) -> None:
    server = make_server()
    client = clients(server.address)
    with pytest.raises(RemoteError) as info:
        submit(client, 2, prompt=prompt).result(10)
    assert info.value.code == code
    assert len(submit(client, 1).result(10).frames) == 1


def test_model_load_failure_is_raised_by_wait_ready(tmp_path) -> None:
    from frameprompt.errors import ModelNotFoundError

    def factory(device: str):
        raise ModelNotFoundError("no model at /nowhere", "download it")

    server = Server(ServerConfig(bind=LOOPBACK, jobs_dir=tmp_path), factory)
    server.start()
    try:
        with pytest.raises(ModelNotFoundError):
            server.wait_ready(5)
    finally:
        server.stop()


def _fuzz_case(rng: random.Random, valid: list[bytes]) -> list[bytes]:
    """A random mutation of a valid submit or a random envelope."""
    kind = rng.randrange(6)
    frames = [bytearray(f) for f in valid]
    if kind == 0:  # flip bytes anywhere
        f = rng.randrange(len(frames))
        for _ in range(rng.randint(1, 8)):
            if frames[f]:
                frames[f][rng.randrange(len(frames[f]))] = rng.randrange(256)
    elif kind == 1:  # truncate a frame
        f = rng.randrange(len(frames))
        frames[f] = frames[f][: rng.randrange(len(frames[f]) + 1)]
    elif kind == 2:  # drop or duplicate frames
        if rng.random() < 0.5 and len(frames) > 1:
            del frames[rng.randrange(len(frames))]
        else:
            frames.append(frames[rng.randrange(len(frames))])
    elif kind == 3:  # mutate a header field
        header = json.loads(bytes(frames[0]))
        key = rng.choice(["v", "type", "params", "parts", "pose_format", "req", "job_id"])
        header[key] = rng.choice(
            [None, -1, 0, 1, 2**70, "", "../x", [], {}, [1, 2], {"a": "b"}, 1.5, True, "x" * 999]
        )
        frames[0] = bytearray(json.dumps(header).encode())
    elif kind == 4:  # random header JSON
        value = rng.choice([[], {}, "s", 1, None, {"v": 1, "type": rng.choice(sorted(P.CLIENT_TYPES))}])
        frames = [bytearray(json.dumps(value).encode())]
    else:  # random bytes
        frames = [bytearray(rng.randbytes(rng.randint(0, 64))) for _ in range(rng.randint(1, 3))]
    return [bytes(f) for f in frames]


def test_fuzzed_messages_are_answered_or_dropped_and_the_server_survives(make_server, raw, clients) -> None:
    server = make_server(limits=P.Limits(max_frames=4, max_width=64, max_height=64, max_pixels=4096))
    valid = P.build_submit(png(), [png(), png()], params={"steps": 1})
    rng = random.Random(1234)
    r = raw(server.address)
    answered = 0
    for _ in range(250):
        frames = _fuzz_case(rng, valid)
        r.sock.send_multipart(frames)
        if r.sock.poll(2000):
            while r.sock.poll(0):
                r.sock.recv_multipart()
            answered += 1
    assert answered == 250  # every mutated message got a reply (error, accepted, ...)
    client = clients(server.address)
    assert len(submit(client, 2).result(20).frames) == 2


@pytest.mark.timeout(180)
def test_hypothesis_fuzzing_of_headers(make_server, raw, clients) -> None:
    hypothesis = pytest.importorskip(
        "hypothesis", reason="hypothesis is not installed (pip install -e '.[test]')"
    )
    from hypothesis import HealthCheck
    from hypothesis import strategies as st

    server = make_server()
    r = raw(server.address)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    )
    headers = st.fixed_dictionaries(
        {"v": st.sampled_from([1, 1, 1, 0, 2, "1"]), "type": st.sampled_from(sorted(P.CLIENT_TYPES) + ["x"])},
        optional={
            "req": st.text(max_size=70),
            "job_id": st.text(max_size=70),
            "params": json_values,
            "parts": json_values,
        },
    )

    # Bounded: 150 examples, each answered within the 3 s socket timeout of Raw.ask (no per-example
    # deadline: a shared CI core must not turn a slow example into a flaky failure).
    @hypothesis.settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @hypothesis.given(header=headers, parts=st.lists(st.binary(max_size=64), max_size=3))
    def check(header: dict, parts: list[bytes]) -> None:
        reply = r.header([json.dumps(header).encode(), *parts])
        assert reply["type"] in ("error", "hello", "status", "heartbeat", "accepted", "released")
        if reply["type"] == "error":
            assert reply["code"] in P.ERROR_HINTS

    check()
    client = clients(server.address)
    assert len(submit(client, 1).result(10).frames) == 1


# -------------------------------------------------------------------------------------- persistence


def test_restart_keeps_results_and_reports_interrupted_jobs(tmp_path, make_server, clients) -> None:
    jobs_dir = tmp_path / "persist"
    server = make_server(jobs_dir=jobs_dir)
    client = clients(server.address)
    done = submit(client, 2)
    frames = done.result(10).frames
    server.stop()
    client.close()

    # simulate a crash mid-job: a job whose state says running, and a half-written job folder
    store = JobStore(jobs_dir, fsync=False)
    sub = P.parse_submit(P.decode(P.build_submit(png(), [png()])))
    crashed = store.create(sub)
    store.set_state(crashed.job_id, "running")
    (jobs_dir / ".tmp-deadbeef").mkdir()
    (jobs_dir / crashed.job_id / "outputs.tmp").mkdir()
    # and an accepted job whose state.json (not fsynced at submit) was lost: its job.zip keeps it
    lost_state = store.create(sub)
    (jobs_dir / lost_state.job_id / "state.json").write_bytes(b"")

    server2 = make_server(jobs_dir=jobs_dir)
    c2 = clients(server2.address)
    assert c2.fetch(done.job_id).result(5).frames == frames
    status = c2.status(crashed.job_id)
    assert status["state"] == "interrupted" and status["error"]["code"] == "interrupted"
    with pytest.raises(RemoteError) as info:
        c2.fetch(crashed.job_id).result(5)
    assert info.value.code == "interrupted" and "again" in info.value.hint
    assert not (jobs_dir / ".tmp-deadbeef").exists()
    assert not (jobs_dir / crashed.job_id / "outputs.tmp").exists()
    assert c2.status(lost_state.job_id)["state"] == "interrupted"


def test_graceful_stop_interrupts_queued_and_running_jobs(make_server, clients) -> None:
    server = make_server(lambda d: FakeRunner(d, step_delay=0.05))
    # the stop waits for the running job to end before it answers: on a loaded machine that can take
    # longer than the fixture's 3 s silence limit, which this test is not about
    client = clients(server.address, timeout=30.0)
    running = submit(client, 1, steps=500)
    queued = submit(client, 1, steps=500)
    for ev in running.events(timeout=5):
        if ev.type == "progress" and ev.header.get("phase") == "denoising":
            break
    assert queued.job_id or queued.wait(1) is False
    server.stop()
    for job in (running, queued):
        with pytest.raises(RemoteError) as info:
            job.result(30)  # the answers are sent; on a loaded machine the client may read them late
        assert info.value.code == "interrupted"
    store = JobStore(server.config.jobs_dir)
    assert {store.get(j.job_id).state for j in (running, queued)} == {"interrupted"}


def test_atomic_write_replaces_whole_files(tmp_path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left


# ----------------------------------------------------------------------------------------- security


def test_non_loopback_bind_is_refused_without_keys(tmp_path) -> None:
    for address in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.20:5555"):
        with pytest.raises(InsecureBindError) as info:
            check_bind(address, curve=False, insecure=False)
        assert "--curve-keys" in info.value.hint
        check_bind(address, curve=True, insecure=False)
        check_bind(address, curve=False, insecure=True)
    check_bind("tcp://127.0.0.1:5555", curve=False, insecure=False)
    server = Server(ServerConfig(bind="tcp://0.0.0.0:0", jobs_dir=tmp_path), EchoRunner)
    with pytest.raises(InsecureBindError):
        server.start()  # refused before any socket exists
    assert server.context is None


def test_curve_keys_admit_known_clients_and_reject_others(tmp_path, make_server, clients) -> None:
    create_keys(tmp_path / "keys", ["blender"])
    create_keys(tmp_path / "other", ["mallory"])  # a key pair the server never heard of
    server = make_server(curve_keys=tmp_path / "keys" / "server")
    assert server.capabilities()["secure"] is True

    good = clients(server.address, curve_keys=tmp_path / "keys" / "blender")
    assert good.hello()["server"] == "frameprompt"
    assert len(submit(good, 1).result(10).frames) == 1

    # mallory knows the right server key but her own key is not authorized
    import shutil

    shutil.copy(tmp_path / "keys" / "server" / "server.key", tmp_path / "other" / "mallory" / "server.key")
    bad = clients(server.address, curve_keys=tmp_path / "other" / "mallory", timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        bad.hello()
    assert info.value.code == "auth_failed" and "authorized_clients" in info.value.hint
    assert time.monotonic() - t0 < 3
    job = submit(bad, 1)
    with pytest.raises(ServerUnavailable):
        job.result(5)

    plain = clients(server.address, timeout=1.0)  # no encryption at all
    with pytest.raises(ServerUnavailable) as info:
        plain.hello()
    assert info.value.code == "server_unavailable"


def test_openpose_json_poses_are_drawn_by_the_worker(make_server, clients) -> None:
    pytest.importorskip("frameprompt_blender.core.openpose_json", reason="openpose_json is not written yet")
    pytest.importorskip("frameprompt_blender.core.openpose_draw", reason="openpose_draw is not written yet")
    seen: list[tuple[int, int]] = []

    def factory(device: str):
        def run(job: JobSpec, ctx: RunContext) -> list[Image.Image]:
            seen.extend(p.size for p in job.poses)
            return [p.copy() for p in job.poses]

        return run

    server = make_server(factory)
    client = clients(server.address)
    keypoints = []
    for i in range(18):
        keypoints += [4.0 + i, 4.0 + i, 1.0]
    pose = json.dumps(
        {"people": [{"pose_keypoints_2d": keypoints}], "canvas_width": 32, "canvas_height": 24}
    ).encode()
    result = client.submit(png((32, 24)), [pose, pose], pose_format="openpose_json").result(10)
    assert seen == [(32, 24), (32, 24)]
    drawn = Image.open(io.BytesIO(result.frames[0]))
    assert drawn.getbbox() is not None  # something was drawn
    bad = client.submit(
        png((32, 24)), [b'{"people": [{"pose_keypoints_2d": "x"}]}'], pose_format="openpose_json"
    )
    with pytest.raises(RemoteError) as info:
        bad.result(10)
    assert info.value.code in ("bad_pose", "bad_input")


def test_rgb8_results_and_png_passthrough(make_server, clients) -> None:
    import numpy as np

    encoded: list[bytes] = []

    def factory(device: str):
        def run(job: JobSpec, ctx: RunContext) -> list:
            if job.params.prompt == "png":  # already-encoded frames are sent as they are
                encoded[:] = [png((8, 6), (i, 2, 3)) for i in range(job.num_frames)]
                return list(encoded)
            return [np.full((6, 8, 3), i, np.uint8) for i in range(job.num_frames)]

        return run

    server = make_server(factory)
    client = clients(server.address)
    assert client.hello()["frame_formats"] == ["png", "rgb8"]
    result = client.submit(png(), [png(), png()], result_format="rgb8").result(10)
    assert (result.frame_format, result.width, result.height) == ("rgb8", 8, 6)
    assert result.frames[1] == bytes([1]) * (8 * 6 * 3)
    wait_done(client, result.job_id)
    assert sorted(p.name for p in server.store.outputs_dir(result.job_id).iterdir()) == [
        "0000.rgb",
        "0001.rgb",
    ]
    again = client.fetch(result.job_id).result(5)  # from disk, same format
    assert again.frame_format == "rgb8" and again.frames == result.frames

    # a client that does not ask (revision 1) gets PNG: arrays encoded, PNG bytes not re-encoded
    plain = client.submit(png(), [png(), png()]).result(10)
    assert plain.frame_format == "png" and Image.open(io.BytesIO(plain.frames[1])).getpixel((0, 0)) == (
        1,
        1,
        1,
    )
    passthrough = client.submit(png(), [png(), png()], prompt="png").result(10)
    assert passthrough.frames == encoded
    assert passthrough.meta["decode_s"] == 0.0  # this runner never read its inputs: nothing decoded


def test_png_results_are_encoded_in_parallel_in_order() -> None:
    import numpy as np
    from frameprompt.media import encode_pngs, png_bytes
    from frameprompt.server.worker import encode_frames

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(9)]
    images = [Image.fromarray(a) if i % 2 else a for i, a in enumerate(arrays)]  # PIL and arrays mixed
    frames, width, height = encode_frames(images, "png", P.Limits())
    assert (width, height) == (32, 24)
    for frame, expected in zip(frames, arrays, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(frame))), expected)
    pil = [Image.fromarray(a) for a in arrays]
    assert encode_pngs(pil, compress_level=1) == [png_bytes(im, compress_level=1) for im in pil]


def test_the_result_travels_while_it_is_stored_and_a_fetch_meanwhile_gets_it(make_server, clients) -> None:
    server = make_server()
    release = threading.Event()
    write_outputs = server.store.write_outputs

    def slow_write(*args: Any, **kw: Any) -> None:
        assert release.wait(10)
        write_outputs(*args, **kw)

    server.store.write_outputs = slow_write  # type: ignore[method-assign]
    client, other = clients(server.address), clients(server.address)
    result = submit(client, 2).result(10)  # arrives although nothing is on disk yet
    assert client.status(result.job_id)["state"] == "running"
    late = other.fetch(result.job_id)  # answered once the outputs are stored
    time.sleep(0.2)
    assert late.state != "done"
    release.set()
    assert late.result(10).frames == result.frames
    assert wait_done(client, result.job_id)["state"] == "done"


def test_a_result_that_cannot_be_stored_is_delivered_and_the_job_says_why(make_server, clients) -> None:
    server = make_server()
    write_outputs = server.store.write_outputs
    calls = []

    def disk_full(*args: Any, **kw: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        write_outputs(*args, **kw)

    server.store.write_outputs = disk_full  # type: ignore[method-assign]
    client = clients(server.address)
    result = submit(client, 2).result(10)
    assert len(result.frames) == 2  # the client has its frames
    deadline = time.monotonic() + 10
    while (status := client.status(result.job_id))["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status["error"]["code"] == "storage_error" and "disk space" in status["error"]["hint"]
    with pytest.raises(RemoteError) as info:
        client.fetch(result.job_id).result(5)
    assert info.value.code == "storage_error"
    assert len(submit(client, 1).result(10).frames) == 1  # and the server keeps serving
