"""Live previews of a job's current estimate, made from the pipeline's step callback.

Two modes (`protocol.PREVIEW_MODES`):

- "fast": a linear map from the latent channels to RGB, fitted once per VAE by encoding solid colours
  (least squares), applied to the estimate of the clean latents: one small image per latent frame at
  the latent resolution, for the cost of a matrix product.
- "vae": the VAE decodes a prefix of the estimate of the clean target latents (the target alone,
  without the causal prefix of the context): the real decoder's pixels for as many frames as the
  preview budget pays for. The causal decoder runs frame by frame, so a prefix of k latent frames costs
  about k frames' worth; the cost of one frame is measured on every preview (and, before the first,
  estimated from a decode of a small patch), and a preview that would not fit is not made.

The clean estimate is the scheduler's own x0 prediction when it keeps one (UniPC with `predict_x0`,
the default sampler: `model_outputs[-1]`), else the current latents.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from frameprompt.server.worker import PREVIEW_BUDGET, RunContext
from frameprompt.vae_io import denormalize_latents, encode_video

# Colours the projection is fitted on: the RGB cube's corners and a fixed random sample inside it.
_FIT_COLOURS = 96
# Latent side of the patch decoded to estimate a frame's cost before any preview has been timed: small
# enough to cost a few hundredths of a second, and its fixed overheads, scaled up with the area, make
# the estimate err on the expensive side.
_PROBE_SIDE = 4


def clean_estimate(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """The scheduler's latest prediction of the clean target latents, or `latents` without one."""
    outputs = getattr(pipe.scheduler, "model_outputs", None)
    if outputs and getattr(pipe.scheduler.config, "predict_x0", False):
        x0 = outputs[-1]
        if isinstance(x0, torch.Tensor) and x0.shape == latents.shape:
            return x0
    return latents


def _pixel_frames(vae: Any, latent_frames: int) -> int:
    """Frames the causal VAE decodes `latent_frames` latent frames to: 1 for the first, T for others."""
    return 1 + int(vae.config.scale_factor_temporal) * (latent_frames - 1)


class LatentPreviewer:
    """Previews for one pipeline (one VAE): `offer(...)` from the step callback, which calls
    `frames(pipe, latents, mode, max_side, latent_frames)` when a preview fits the budget."""

    def __init__(self) -> None:
        self._projection: tuple[torch.Tensor, torch.Tensor] | None = None
        self._vae_id: int | None = None
        # (id(vae), latent h, latent w) -> seconds the decoder takes per decoded pixel frame
        self._frame_seconds: dict[tuple[int, int, int], float] = {}

    def projection(self, vae: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (3, z), bias (3,)) mapping normalised latents to RGB in [0, 1], fitted once."""
        if self._projection is not None and self._vae_id == id(vae):
            return self._projection
        gen = torch.Generator().manual_seed(0)
        corners = torch.tensor(
            [[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)], dtype=torch.float32
        )
        colours = torch.cat([corners, torch.rand(_FIT_COLOURS - len(corners), 3, generator=gen)])
        side = 2 * int(vae.config.scale_factor_spatial)
        video = (colours * 2 - 1).view(-1, 3, 1, 1, 1).expand(-1, 3, 1, side, side)
        latents = encode_video(vae, video.contiguous()).float().mean(dim=(2, 3, 4)).cpu()  # (K, z)
        design = torch.cat([latents, torch.ones(len(latents), 1)], dim=1)
        ridge = 1e-3 * torch.eye(design.shape[1])
        solution = torch.linalg.solve(design.T @ design + ridge, design.T @ colours)  # (z + 1, 3)
        self._projection = (solution[:-1].T.contiguous(), solution[-1].contiguous())
        self._vae_id = id(vae)
        return self._projection

    def frame_seconds(self, vae: Any, latents: torch.Tensor) -> float:
        """Seconds the VAE takes per decoded pixel frame of `latents` (1, z, F, h, w): the last
        preview's measurement, else an estimate from decoding one small patch (made once per size)."""
        h, w = latents.shape[-2:]
        key = (id(vae), int(h), int(w))
        if key not in self._frame_seconds:
            ph, pw = min(int(h), _PROBE_SIDE), min(int(w), _PROBE_SIDE)
            patch = torch.zeros(1, latents.shape[1], 1, ph, pw, device=vae.device, dtype=vae.dtype)
            t0 = time.perf_counter()
            with torch.no_grad():
                vae.decode(denormalize_latents(patch, vae), return_dict=False)[0].float().cpu()
            self._frame_seconds[key] = (time.perf_counter() - t0) * (h * w) / (ph * pw)
        return self._frame_seconds[key]

    def affordable_frames(self, pipe: Any, latents: torch.Tensor, mode: str, allowance: float) -> int:
        """How many latent frames a preview made now may show within `allowance` seconds: all of them
        for "fast" (a matrix product), for "vae" the longest prefix the measured decode cost pays for
        (0: none, skip this preview)."""
        n = int(latents.shape[2])
        if mode != "vae":
            return n
        if allowance <= 0:
            return 0
        per_frame = self.frame_seconds(pipe.vae, latents)
        k = 0
        while k < n and per_frame * _pixel_frames(pipe.vae, k + 1) <= allowance:
            k += 1
        return k

    def offer(
        self, ctx: RunContext, pipe: Any, latents: torch.Tensor, step: int, total: int, started: float
    ) -> bool:
        """From the step callback after `step` of `total`: send a preview through `ctx` when one is due
        and what it costs fits PREVIEW_BUDGET of the job's time since `started` (time.monotonic()), less
        what previews have taken so far. True when one was sent."""
        mode = ctx.preview_mode
        if mode == "off" or ctx.preview is None:
            return False
        every = int(ctx.preview.get("every", 1))
        if step % every and step != total:
            return False
        allowance = PREVIEW_BUDGET * (time.monotonic() - started) - ctx.preview_seconds
        count = self.affordable_frames(pipe, latents, mode, allowance)
        if count == 0:
            ctx.previews_skipped += 1
            return False
        return ctx.maybe_preview(step, total, lambda m, side: self.frames(pipe, latents, m, side, count))

    def frames(
        self, pipe: Any, latents: torch.Tensor, mode: str, max_side: int, latent_frames: int | None = None
    ) -> list[np.ndarray]:
        """Preview frames of the target latents (1, z, frames, h, w), of the first `latent_frames`
        latent frames (all by default): uint8 (H, W, 3) arrays whose longest side is at most
        `max_side`."""
        x0 = clean_estimate(pipe, latents)
        if latent_frames is not None:
            x0 = x0[:, :, : max(1, latent_frames)]
        if mode == "vae":
            vae = pipe.vae
            t0 = time.perf_counter()
            x = denormalize_latents(x0.to(device=vae.device, dtype=vae.dtype), vae)
            with torch.no_grad():
                video = vae.decode(x, return_dict=False)[0][0].float().cpu()  # (3, F, H, W) in [-1, 1]
            h, w = x0.shape[-2:]
            seconds = (time.perf_counter() - t0) / _pixel_frames(vae, int(x0.shape[2]))
            self._frame_seconds[(id(vae), int(h), int(w))] = seconds
            rgb = ((video + 1) / 2).clamp(0, 1)
        else:
            weights, bias = self.projection(pipe.vae)
            lat = x0[0].float().cpu()  # (z, F, h, w)
            rgb = (torch.einsum("cz,zfhw->cfhw", weights, lat) + bias.view(3, 1, 1, 1)).clamp(0, 1)
        rgb = rgb.permute(1, 0, 2, 3)  # (F, 3, H, W)
        h, w = rgb.shape[-2:]
        scale = max_side / max(h, w)
        if scale < 1 or (mode != "vae" and scale != 1):  # the decoder's frames are only shrunk
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            rgb = torch.nn.functional.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        return list((rgb.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy())
