"""`frameprompt submit` against real `frameprompt serve` processes (tiny model; echo runner for errors)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from frameprompt.cli import main
from frameprompt.media import write_frames
from frameprompt.testing import demo_inputs
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`frameprompt serve ...` as a subprocess, until it prints "ready on"."""

    def __init__(self, jobs_dir: Path, *extra: str) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "frameprompt.cli", "serve", "--bind", self.address]
        cmd += ["--jobs-dir", str(jobs_dir), "--no-fsync", "--log-level", "WARNING", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                raise RuntimeError("server exited: " + "".join(lines))
            lines.append(line)
            if "ready on" in line:
                return
        self.stop()
        raise TimeoutError("server did not become ready: " + "".join(lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory) -> Iterator[Serve]:
    from frameprompt.testing import tiny_pipeline_dir

    root = tmp_path_factory.mktemp("submit_model")
    model = tiny_pipeline_dir(root / "model")
    server = Serve(root / "jobs", "--model", str(model), "--devices", "cpu", "--steps", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory) -> Iterator[Serve]:
    server = Serve(tmp_path_factory.mktemp("submit_echo") / "jobs", "--runner", "echo")
    yield server
    server.stop()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    reference, poses = demo_inputs(4, 32)
    reference.save(tmp_path / "ref.png")
    write_frames(poses, tmp_path / "skeleton")
    return tmp_path


def args(server: str, inputs: Path, pose: str = "skeleton", out: str = "out", *extra: str) -> list[str]:
    return [
        "submit",
        "--server",
        server,
        "--reference",
        str(inputs / "ref.png"),
        "--pose",
        str(inputs / pose),
        "--out",
        str(inputs / out),
        "--timeout",
        "20",
        *extra,
    ]


def test_submit_writes_frames_and_video_like_generate(model_server, inputs, capsys) -> None:
    rc = main(args(model_server.address, inputs, "skeleton", "out", "--seed", "3", "--steps", "2"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    frames = sorted(p.name for p in (inputs / "out" / "frames").iterdir())
    assert frames == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert Image.open(inputs / "out" / "frames" / "0000.png").size == (32, 32)
    assert imageio.get_reader(inputs / "out" / "video.mp4").count_frames() == 4
    assert "seed 3" in captured.out
    assert "denoising" in captured.err and "2/2" in captured.err  # the progress bar, fed by progress events

    # the same seed gives the same frames
    assert main(args(model_server.address, inputs, "skeleton", "again", "--seed", "3", "--steps", "2")) == 0
    for name in frames:
        a = np.asarray(Image.open(inputs / "out" / "frames" / name))
        b = np.asarray(Image.open(inputs / "again" / "frames" / name))
        assert np.array_equal(a, b), name


def test_submit_sends_openpose_json_folders(model_server, tmp_path, capsys) -> None:
    reference, _ = demo_inputs(4, 32)
    reference.save(tmp_path / "ref.png")
    (tmp_path / "pose").mkdir()
    for i in range(4):
        keypoints = []
        for j in range(18):
            keypoints += [8.0 + i, 2.0 + j * 1.5, 1.0]
        doc = {"people": [{"pose_keypoints_2d": keypoints}], "canvas_width": 32, "canvas_height": 32}
        (tmp_path / "pose" / f"{i:04d}_keypoints.json").write_text(json.dumps(doc))
    rc = main(args(model_server.address, tmp_path, "pose", "out", "--steps", "1", "--no-progress"))
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out" / "frames").glob("*.png"))) == 4
    assert (tmp_path / "out" / "video.mp4").stat().st_size > 0


def test_server_errors_exit_non_zero_with_message_and_hint(echo_server, inputs, capsys) -> None:
    rc = main(args(echo_server.address, inputs, "skeleton", "out", "--lora", "nosuchlora", "--no-progress"))
    err = capsys.readouterr().err
    assert rc != 0
    assert "no LoRA named 'nosuchlora'" in err and "(unknown_lora)" in err and "fix:" in err
    assert not (inputs / "out").exists()
    # and the same server still runs a good job (echo: no model), writing the usual layout
    assert main(args(echo_server.address, inputs, "skeleton", "ok", "--steps", "1")) == 0
    assert len(list((inputs / "ok" / "frames").glob("*.png"))) == 4


def test_no_server_is_a_clear_error(inputs, capsys) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    rc = main(args(address, inputs, "skeleton", "out")[:-2] + ["--timeout", "0.5"])
    err = capsys.readouterr().err
    assert rc != 0 and time.monotonic() - t0 < 10
    assert f"no FramePrompt backend at {address}" in err and "frameprompt serve" in err


def test_bad_local_inputs(inputs, capsys) -> None:
    assert main(args("tcp://127.0.0.1:1", inputs, "missing")) == 2
    assert "does not exist" in capsys.readouterr().err
    (inputs / "empty").mkdir()
    assert main(args("tcp://127.0.0.1:1", inputs, "empty")) == 2
    assert "holds no skeleton frames" in capsys.readouterr().err


def test_submit_saves_the_live_previews(model_server, inputs, capsys) -> None:
    previews = inputs / "previews"
    rc = main(
        args(model_server.address, inputs, "skeleton", "pv", "--steps", "3", "--previews", str(previews))
    )
    assert rc == 0, capsys.readouterr().err
    folders = sorted(p.name for p in previews.iterdir())
    assert folders and all(f.startswith("step_") for f in folders)
    first = sorted((previews / folders[0]).glob("*.png"))
    assert first and max(Image.open(first[0]).size) <= 128
    assert len(list((inputs / "pv" / "frames").glob("*.png"))) == 4  # the result is unchanged
