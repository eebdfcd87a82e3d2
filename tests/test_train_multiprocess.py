"""`frameprompt finetune` as two processes under `torchrun` (CPU, gloo; accelerate picks the group up):
data-parallel training, one latent cache, one result, and a resume that continues exactly as the
uninterrupted run."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from frameprompt.training.data import synthetic_dataset
from frameprompt.training.lora import LORA_FILE
from safetensors.torch import load_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(model: Path, data: Path, out: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "frameprompt.cli"]
    cmd += ["finetune", "--data", str(data), "--model", str(model), "--out", str(out), "--batch-size", "1"]
    cmd += ["--lora-rank", "4", "--lora-alpha", "4", "--checkpoint-every", "2", "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert (run.returncode == 0) == ok, run.stderr[-3000:]
    return run


def _losses(out: Path) -> list[tuple[str, str]]:
    with open(out / "train_log.csv") as handle:
        return [(row["step"], row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.timeout(600)
def test_two_processes_train_and_resume_exactly(tiny_model_dir, tmp_path):
    data = synthetic_dataset(tmp_path / "data", clips=4, num_frames=4, size=32)
    whole = _launch(tiny_model_dir, data, tmp_path / "whole", "--max-steps", "4")
    assert whole.stdout.count("trained 4 steps") == 1  # the main process reports, once
    assert [s for s, _ in _losses(tmp_path / "whole")] == ["1", "2", "3", "4"]

    _launch(tiny_model_dir, data, tmp_path / "split", "--max-steps", "2")
    _launch(tiny_model_dir, data, tmp_path / "split", "--max-steps", "4", "--resume")
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    a = load_file(str(tmp_path / "whole" / LORA_FILE))
    b = load_file(str(tmp_path / "split" / LORA_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # two ranks share the data: an epoch is two steps of the four clips
    with open(tmp_path / "whole" / "train_log.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "0", "1", "1"]
    # two ranks x batch 1 need at least two clips; fewer is refused before training starts
    small = synthetic_dataset(tmp_path / "one", clips=1, num_frames=4, size=32)
    refused = _launch(tiny_model_dir, small, tmp_path / "refused", "--max-steps", "1", ok=False)
    assert "fewer than one batch (1 x 2 process(es))" in refused.stderr
