"""The DEALER client (frameprompt_blender.wire.client) against an in-process echo server."""

from __future__ import annotations

import gc
import io
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from frameprompt.server import EchoRunner, Server, ServerConfig
from PIL import Image

from frameprompt_blender.wire import protocol as P
from frameprompt_blender.wire.client import CurveKeys, FramePromptClient, RemoteError


def png(color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    cfg = ServerConfig(
        bind="tcp://127.0.0.1:*", jobs_dir=tmp_path / "jobs", fsync=False, limits=P.Limits(max_frames=8)
    )
    s = Server(cfg, lambda device: EchoRunner(device, step_delay=0.02))
    s.start()
    s.wait_ready(10)
    yield s
    s.stop()


@pytest.fixture
def client(server: Server) -> Iterator[FramePromptClient]:
    c = FramePromptClient(server.address, timeout=3.0, heartbeat_interval=0.1, emit_events=True)
    yield c
    c.close()


def test_client_module_has_no_bpy_or_torch() -> None:
    code = "import sys, frameprompt_blender.wire.client as c\nassert 'torch' not in sys.modules and 'bpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_submit_from_paths_and_ui_style_draining(client: FramePromptClient, tmp_path: Path) -> None:
    (tmp_path / "ref.png").write_bytes(png())
    poses = []
    for i in range(3):
        poses.append(tmp_path / f"{i:04d}.png")
        poses[-1].write_bytes(png((i * 50, 0, 0)))
    job = client.submit(tmp_path / "ref.png", poses, steps=2, seed=4)
    assert job.state in ("submitting", "queued", "running")
    seen = []
    deadline = time.monotonic() + 10
    while not job.done() and time.monotonic() < deadline:  # what a bpy.app.timers callback does
        while not client.events.empty():
            seen.append(client.events.get_nowait())
        time.sleep(0.01)
    while not client.events.empty():
        seen.append(client.events.get_nowait())
    assert job.state == "done" and job.result().meta["seed"] == 4
    kinds = [e.type for e in seen if e.job is job]
    assert kinds[0] == "accepted" and kinds[-1] == "result"
    assert any(e.type == "connected" for e in seen)
    assert job.progress["phase"] in ("denoising", "saving")


def test_one_client_from_many_threads(client: FramePromptClient) -> None:
    handles = []
    lock = threading.Lock()

    def work(k: int) -> None:
        for i in range(3):
            h = client.submit(png((k, i, 0)), [png()], steps=1)
            with lock:
                handles.append(h)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(handles) == 12
    assert all(len(h.result(20).frames) == 1 for h in handles)
    assert len({h.job_id for h in handles}) == 12


def test_cancel_before_accepted(client: FramePromptClient) -> None:
    job = client.submit(png(), [png()], steps=500)
    job.cancel()  # no job id yet: cancelled as soon as it arrives
    with pytest.raises(RemoteError) as info:
        job.result(10)
    assert info.value.code == "cancelled" and job.state == "cancelled"


def test_local_validation_fails_fast(client: FramePromptClient) -> None:
    with pytest.raises(P.ProtocolError) as info:
        client.submit(b"not a png", [png()])
    assert info.value.code == "bad_image"
    with pytest.raises(P.ProtocolError, match="unknown parameter"):
        client.submit(png(), [png()], stepz=3)
    client.hello()  # now the server's limits are known (max_frames=8)
    with pytest.raises(P.ProtocolError) as info:
        client.submit(png(), [png()] * 9)
    assert info.value.code == "too_many_frames"


def test_server_errors_reach_the_handle(client: FramePromptClient) -> None:
    job = client.submit(png(), [png()], lora="missing")
    with pytest.raises(RemoteError) as info:
        job.result(5)
    assert info.value.code == "unknown_lora" and job.state == "failed"
    with pytest.raises(RemoteError) as info:
        client.status("0123456789abcdef")
    assert info.value.code == "unknown_job"
    with pytest.raises(RemoteError, match="unknown_job"):
        client.fetch("0123456789abcdef").result(5)


def test_a_lost_result_is_recovered_through_heartbeats(client: FramePromptClient, server: Server) -> None:
    finish = server._finish

    def forgetful_finish(job_id: str, frames: list) -> None:  # runs in the server's I/O thread
        server._subscribers.pop(job_id, None)  # the final message goes nowhere, as after a reconnect
        finish(job_id, frames)

    server._finish = forgetful_finish  # type: ignore[method-assign]
    job = client.submit(png(), [png()], steps=5)
    result = job.result(10)  # the heartbeat shows 'done', the client fetches it
    assert len(result.frames) == 1


def test_fetch_attaches_to_a_running_job(client: FramePromptClient, server: Server) -> None:
    job = client.submit(png(), [png()], steps=25)
    for ev in job.events(timeout=5):
        if ev.type == "accepted":
            break
    with FramePromptClient(server.address, timeout=3.0) as other:
        attached = other.fetch(job.job_id)
        assert len(attached.result(10).frames) == 1
        assert attached.state == "done"


def test_a_client_keeps_no_finished_job(server: Server) -> None:
    """A farm script submits job after job and never drains `client.events`: the client must not hold on
    to finished results (each can be ~100 MB of frames)."""
    with FramePromptClient(server.address, timeout=3.0) as c:
        job = c.submit(png(), [png()], steps=1)
        assert len(job.result(10).frames) == 1
        handle = weakref.ref(job)
        del job
        gc.collect()
        assert handle() is None, "the client still references a finished job"
        assert c.events.empty()


def test_close_fails_pending_jobs_and_later_calls(server: Server) -> None:
    c = FramePromptClient(server.address, timeout=3.0)
    job = c.submit(png(), [png()], steps=500)
    c.close()
    with pytest.raises(P.ProtocolError) as info:
        job.result(5)
    assert info.value.code == "closed"
    with pytest.raises(P.ProtocolError, match="closed"):
        c.submit(png(), [png()])
    c.close()  # idempotent


def test_bad_addresses_and_missing_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FramePromptClient("127.0.0.1:5555")
    with pytest.raises(P.ProtocolError) as info:
        CurveKeys.from_dir(tmp_path)
    assert info.value.code == "auth_failed"
