"""Pixels <-> normalised latents with diffusers' `AutoencoderKLWan`.

Wan pipelines normalise latents outside the VAE, per channel, with the VAE config's
`latents_mean` / `latents_std`; encoding takes the posterior's mode ("argmax"), as Wan's I2V does.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan

from frameprompt.method import SequenceLayout, join_sequence

# DiffSynth-Studio gives tile sizes in latent units; diffusers' `enable_tiling` wants pixels.
DIFFSYNTH_TILE = (34, 34)
DIFFSYNTH_TILE_STRIDE = (18, 16)


def _stats(vae: AutoencoderKLWan, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def normalize_latents(latents: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    mean, std = _stats(vae, latents)
    return (latents - mean) / std


def denormalize_latents(latents: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    mean, std = _stats(vae, latents)
    return latents * std + mean


def enable_tiled_encoding(
    vae: AutoencoderKLWan,
    tile_size: tuple[int, int] = DIFFSYNTH_TILE,
    tile_stride: tuple[int, int] = DIFFSYNTH_TILE_STRIDE,
) -> None:
    """Tile the VAE with DiffSynth's latent-unit sizes, converted to diffusers' pixel units."""
    s = vae.config.scale_factor_spatial
    vae.enable_tiling(
        tile_sample_min_height=tile_size[0] * s,
        tile_sample_min_width=tile_size[1] * s,
        tile_sample_stride_height=tile_stride[0] * s,
        tile_sample_stride_width=tile_stride[1] * s,
    )


@torch.no_grad()
def encode_video(vae: AutoencoderKLWan, video: torch.Tensor) -> torch.Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> normalised latents (B, z, 1 + (F-1)/T, H/S, W/S)."""
    video = video.to(device=vae.device, dtype=vae.dtype)
    latents = vae.encode(video).latent_dist.mode()
    return normalize_latents(latents, vae)


@torch.no_grad()
def decode_target_frames(
    vae: AutoencoderKLWan, context_latents: torch.Tensor, target_latents: torch.Tensor, layout: SequenceLayout
) -> torch.Tensor:
    """Exactly N target frames, (B, 3, N, H, W) in [-1, 1].

    The causal VAE decodes its first latent to one frame and each later one to T frames, so the
    target latents alone would give N - T + 1 frames. Decoding the whole sequence and slicing keeps
    every target frame and decodes the first one with its true causal history.
    """
    latents = join_sequence(context_latents, target_latents).to(device=vae.device, dtype=vae.dtype)
    video = vae.decode(denormalize_latents(latents, vae), return_dict=False)[0]
    return video[:, :, layout.target_pixel_slice]
