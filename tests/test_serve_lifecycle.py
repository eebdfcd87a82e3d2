"""`frameprompt serve` as a managed process: live previews (echo and the tiny model), `release` and the
idle timeout free the model and the next job loads it again, `--parent-pid` stops an orphaned server."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from test_server_process import ServeProcess, free_port, png

from frameprompt_blender.wire import protocol as P
from frameprompt_blender.wire.client import FramePromptClient

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def _sizes(frames: list[bytes]) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(f)).size for f in frames]


def test_echo_previews_arrive_during_the_job_and_stay_small(tmp_path) -> None:
    server = ServeProcess(free_port(), tmp_path / "jobs")
    try:
        with FramePromptClient(server.address, timeout=5.0) as client:
            job = client.submit(
                png(),
                [png((200, 0, 0)), png((0, 200, 0))],
                steps=10,
                preview={"mode": "fast", "max_side": 16},
            )
            kinds = [ev.type for ev in job.events(timeout=20)]
            assert kinds[-1] == "result"
            assert "preview" in kinds
            assert kinds.index("preview") < len(kinds) - 1  # before the result, not with it
            assert job.previews_received == kinds.count("preview") >= 1
            assert job.preview is not None and len(job.preview["frames"]) == 2
            assert all(max(s) <= 16 for s in _sizes(job.preview["frames"]))
            plain = client.submit(png(), [png()], steps=3)
            assert "preview" not in [ev.type for ev in plain.events(timeout=20)]
            with pytest.raises(P.ProtocolError) as info:
                client.submit(png(), [png()], preview={"mode": "slow"})
            assert info.value.code == "bad_request" and "fast" in info.value.message
    finally:
        server.kill()


def test_release_frees_the_model_and_the_next_job_loads_it_again(tmp_path) -> None:
    server = ServeProcess(free_port(), tmp_path / "jobs")
    try:
        with FramePromptClient(server.address, timeout=5.0) as client:
            assert client.hello()["model_loaded"] is True
            assert client.release_model()["workers"] == 1
            _wait_for(lambda: client.hello()["model_loaded"] is False, 10, "the model was not released")
            job = client.submit(png(), [png()], steps=2)
            phases = [ev.header.get("phase") for ev in job.events(timeout=20) if ev.type == "progress"]
            assert "loading" in phases
            assert job.result(5).frames
            assert client.hello()["model_loaded"] is True
    finally:
        server.kill()


def test_idle_timeout_releases_the_model(tmp_path) -> None:
    server = ServeProcess(free_port(), tmp_path / "jobs", "--idle-timeout", "1")
    try:
        with FramePromptClient(server.address, timeout=5.0) as client:
            assert client.hello()["idle_release_s"] == 1.0
            _wait_for(lambda: client.hello()["model_loaded"] is False, 10, "the idle model was not released")
            assert client.submit(png(), [png()], steps=1).result(20).frames
    finally:
        server.kill()


def test_server_stops_when_its_parent_process_dies(tmp_path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    port = free_port()
    try:
        server = ServeProcess(port, tmp_path / "jobs", "--parent-pid", str(parent.pid))
        time.sleep(1.0)
        assert server.proc.poll() is None  # a live parent keeps it running
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        t0 = time.monotonic()
        assert server.proc.wait(15) == 0
        assert time.monotonic() - t0 < 5
        rest = server.proc.stdout.read() if server.proc.stdout else ""
        assert f"parent process {parent.pid} is gone" in rest
    finally:
        parent.kill()
    # the port is free again: no orphan holds it
    again = ServeProcess(port, tmp_path / "jobs")
    again.kill()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from frameprompt.testing import tiny_pipeline_dir

    return tiny_pipeline_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize("mode", ["fast", "vae"])
def test_tiny_model_previews_show_the_estimate(tmp_path, tiny_model, mode) -> None:
    server = ServeProcess(free_port(), tmp_path / "jobs", "--model", str(tiny_model))
    try:
        with FramePromptClient(server.address, timeout=10.0) as client:
            poses = [png((i * 40, 0, 0)) for i in range(4)]
            job = client.submit(
                png((30, 90, 200)), poses, steps=6, width=32, height=32, seed=1, preview={"mode": mode}
            )
            previews = [ev for ev in job.events(timeout=120) if ev.type == "preview"]
            assert job.result(5).frames
            assert previews, "no preview arrived"
            first = previews[0]
            assert first.header["mode"] == mode and 1 <= first.header["step"] <= 6
            sizes = _sizes(first.parts)
            assert all(max(s) <= 128 for s in sizes)
            assert len(sizes) >= 1
    finally:
        server.kill()
