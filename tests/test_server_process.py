"""The server as a real process (`frameprompt serve --runner echo`): kill -9, restart, CLI checks."""

from __future__ import annotations

import io
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from frameprompt import cli
from PIL import Image

from frameprompt_blender.wire.client import FramePromptClient, RemoteError, ServerUnavailable

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")


def png(color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, port: int, jobs_dir: Path, *extra: str) -> None:
        self.address = f"tcp://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "frameprompt.cli",
            "serve",
            "--runner",
            "echo",
            "--runner-option",
            "step_delay=0.05",
        ]
        cmd += [
            "--bind",
            self.address,
            "--jobs-dir",
            str(jobs_dir),
            "--no-fsync",
            "--log-level",
            "WARNING",
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        self.lines: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                raise RuntimeError("server exited: " + "".join(self.lines))
            self.lines.append(line)
            if "ready on" in line:
                return
        raise TimeoutError("server did not become ready: " + "".join(self.lines))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def processes() -> Iterator[list[ServeProcess]]:
    procs: list[ServeProcess] = []
    yield procs
    for p in procs:
        p.kill()


def test_kill_9_mid_job_is_reported_then_restart_serves_finished_results(tmp_path, processes) -> None:
    port, jobs = free_port(), tmp_path / "jobs"
    processes.append(ServeProcess(port, jobs))
    client = FramePromptClient(processes[0].address, timeout=2.0, heartbeat_interval=0.2)
    try:
        finished = client.submit(png(), [png((1, 2, 3)), png((4, 5, 6))], steps=1)
        frames = finished.result(20).frames
        long_job = client.submit(png(), [png()], steps=400)  # 20 s of fake steps
        for ev in long_job.events(timeout=10):
            if ev.type == "progress" and ev.header.get("phase") == "denoising":
                break
        processes[0].kill()
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable) as info:
            long_job.result(10)
        waited = time.monotonic() - t0
        assert info.value.code == "server_unavailable"
        assert waited < client.timeout + 1.5, waited
        assert "frameprompt serve" in info.value.hint

        processes.append(ServeProcess(port, jobs))
        assert client.hello(timeout=5)["ready"]  # the same client reconnects by itself
        assert client.fetch(finished.job_id).result(10).frames == frames
        with pytest.raises(RemoteError) as info:
            client.fetch(long_job.job_id).result(10)
        assert info.value.code == "interrupted"
        assert client.status(long_job.job_id)["state"] == "interrupted"
    finally:
        client.close()
    assert processes[1].terminate() == 0  # SIGTERM stops it cleanly


def test_no_server_gives_a_clear_error(tmp_path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with FramePromptClient(address, timeout=0.5) as client:
        t0 = time.monotonic()
        with pytest.raises(ServerUnavailable) as info:
            client.hello()
        assert time.monotonic() - t0 < 3
        assert f"no FramePrompt backend at {address}" in info.value.message
        assert "frameprompt serve" in info.value.hint
        job = client.submit(png(), [png()])
        with pytest.raises(ServerUnavailable):
            job.result(5)


def test_serve_refuses_a_public_bind_without_keys(tmp_path, capsys) -> None:
    code = cli.main(
        ["serve", "--runner", "echo", "--bind", "tcp://0.0.0.0:5599", "--jobs-dir", str(tmp_path)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "refusing to listen on tcp://0.0.0.0:5599" in err and "--curve-keys" in err


def test_keys_command_writes_server_and_client_pairs(tmp_path, capsys) -> None:
    out = tmp_path / "keys"
    assert cli.main(["keys", "--out", str(out), "--client", "blender", "--client", "farm1"]) == 0
    for path in (
        "server/server.key",
        "server/server.key_secret",
        "server/authorized_clients/blender.key",
        "server/authorized_clients/farm1.key",
        "blender/client.key_secret",
        "blender/server.key",
        "farm1/client.key",
    ):
        assert (out / path).is_file(), path
    assert stat.S_IMODE((out / "server" / "server.key_secret").stat().st_mode) == 0o600
    assert (out / "server" / "server.key").read_bytes() == (out / "blender" / "server.key").read_bytes()
    assert "--curve-keys" in capsys.readouterr().out
    assert cli.main(["keys", "--out", str(out), "--client", "blender"]) == 2  # never overwrites a pair
    assert cli.main(["keys", "--out", str(out), "--client", "../evil"]) == 2
