"""Context parallelism for one job: `torchrun -m frameprompt generate --context-parallel` on CPU (gloo).

Two real processes run diffusers' Ulysses all-to-all over the tiny model; the frames must equal a
single-process run of the same command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from frameprompt.cli import main
from frameprompt.errors import IncompatibleModelError, InputError
from frameprompt.media import write_frames
from frameprompt.testing import demo_inputs, tiny_pipeline


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(PIL.Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))])


def test_two_processes_give_the_frames_of_one(tiny_model_dir, tmp_path):
    reference, poses = demo_inputs(4, 32)
    reference.save(tmp_path / "ref.png")
    write_frames(poses, tmp_path / "skeleton")
    common = ["--model", str(tiny_model_dir), "--reference", str(tmp_path / "ref.png")]
    common += ["--pose", str(tmp_path / "skeleton"), "--steps", "3", "--seed", "5"]
    assert main(["generate", *common, "--out", str(tmp_path / "single")]) == 0

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*torchrun, "-m", "frameprompt", "generate", "--context-parallel", *common]
    run = subprocess.run(
        [*cmd, "--out", str(tmp_path / "parallel")], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "context parallel over 2 processes" in run.stdout
    single, parallel = _frames(tmp_path / "single" / "frames"), _frames(tmp_path / "parallel" / "frames")
    assert single.shape == parallel.shape == (4, 32, 32, 3)
    assert np.abs(single - parallel).max() <= 1  # float32 rounding of a different reduction order


def test_context_parallel_without_torchrun_says_how_to_launch(tiny_model_dir, tmp_path, capsys):
    reference, poses = demo_inputs(4, 32)
    reference.save(tmp_path / "ref.png")
    write_frames(poses, tmp_path / "skeleton")
    args = ["generate", "--model", str(tiny_model_dir), "--reference", str(tmp_path / "ref.png")]
    args += ["--pose", str(tmp_path / "skeleton"), "--out", str(tmp_path / "o"), "--context-parallel"]
    assert main(args) == 2
    assert "torchrun --nproc-per-node" in capsys.readouterr().err


def test_refusals_name_the_fix():
    from frameprompt.inference.context_cache import mark_trained_with_context_cache
    from frameprompt.inference.parallel import check_token_split, enable_context_parallel

    pipe = tiny_pipeline()  # 2 heads; 32x32 -> 2x2 = 4 tokens per latent frame
    with pytest.raises(InputError, match="2 attention heads do not split over 3"):
        enable_context_parallel(pipe, 3)
    with pytest.raises(InputError, match="do not split over 3 processes"):
        check_token_split(pipe, 32, 32, 3)
    check_token_split(pipe, 32, 32, 2)
    mark_trained_with_context_cache(pipe.transformer)
    with pytest.raises(IncompatibleModelError, match="cache mode"):
        enable_context_parallel(pipe, 2)
