"""Live previews stay inside their budget: the "vae" mode decodes only the prefix of latent frames its
measured cost pays for, and no decode happens before the job has run long enough to pay for one. Real
tiny Wan VAE (temporal factor 4), real RunContext."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from frameprompt.server.previews import LatentPreviewer
from frameprompt.server.worker import RunContext
from frameprompt.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _latents() -> torch.Tensor:
    # 3 latent frames decode to 1 + 4 + 4 pixel frames with the tiny VAE's temporal factor 4
    return torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def _ctx(mode: str, sent: list[list[bytes]]) -> RunContext:
    preview = {"mode": mode, "every": 1, "max_side": 64}
    return RunContext(
        "job", "cpu", threading.Event(), lambda parts: None, preview=preview, emit_preview=sent.append
    )


def test_vae_preview_decodes_only_the_prefix_the_budget_pays_for(pipe) -> None:
    previewer = LatentPreviewer()
    latents = _latents()
    per_frame = previewer.frame_seconds(pipe.vae, latents)
    assert per_frame > 0
    assert previewer.affordable_frames(pipe, latents, "vae", 0.5 * per_frame) == 0
    assert previewer.affordable_frames(pipe, latents, "vae", 1.5 * per_frame) == 1
    assert previewer.affordable_frames(pipe, latents, "vae", 5.5 * per_frame) == 2  # 1 + 4 pixel frames
    assert previewer.affordable_frames(pipe, latents, "vae", 1e9) == 3
    assert (
        previewer.affordable_frames(pipe, latents, "fast", 0.0) == 3
    )  # a matrix product is always affordable
    frames = previewer.frames(pipe, latents, "vae", 64, latent_frames=2)
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)
    # the decode just timed replaces the estimate the small probe gave
    assert previewer.frame_seconds(pipe.vae, latents) != per_frame


def test_no_vae_decode_before_the_job_has_run_long_enough_to_pay_for_it(pipe) -> None:
    previewer = LatentPreviewer()
    latents = _latents()
    sent: list[list[bytes]] = []
    ctx = _ctx("vae", sent)
    assert previewer.offer(ctx, pipe, latents, 1, 10, started=time.monotonic()) is False
    assert sent == [] and ctx.previews_skipped == 1 and ctx.preview_seconds == 0.0
    # a job that has run for hours can pay for every frame
    assert previewer.offer(ctx, pipe, latents, 2, 10, started=time.monotonic() - 1e4) is True
    assert len(sent) == 1 and len(sent[0]) == 1 + 9  # the header, then one PNG per pixel frame
    assert ctx.previews_sent == 1 and ctx.preview_seconds > 0


def test_off_and_steps_between_every_send_nothing(pipe) -> None:
    previewer = LatentPreviewer()
    sent: list[list[bytes]] = []
    off = _ctx("off", sent)
    off.preview = None
    assert previewer.offer(off, pipe, _latents(), 1, 4, started=time.monotonic() - 1e4) is False
    ctx = _ctx("fast", sent)
    assert ctx.preview is not None
    ctx.preview["every"] = 3
    assert previewer.offer(ctx, pipe, _latents(), 2, 4, started=time.monotonic() - 1e4) is False
    assert sent == [] and ctx.previews_skipped == 0  # not due is not skipped
    assert previewer.offer(ctx, pipe, _latents(), 3, 4, started=time.monotonic() - 1e4) is True
    assert len(sent) == 1 and len(sent[0]) == 1 + 3  # "fast": one frame per latent frame
