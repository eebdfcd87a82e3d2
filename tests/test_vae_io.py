"""VAE input/output on a tiny AutoencoderKLWan: causal prefix, N decoded frames, normalisation, tiling."""

import torch
from diffusers import AutoencoderKLWan
from frameprompt import method
from frameprompt.method import SequenceLayout
from frameprompt.testing import TINY_VAE
from frameprompt.vae_io import (
    decode_target_frames,
    denormalize_latents,
    enable_tiled_encoding,
    encode_video,
    normalize_latents,
)


def _vae():
    torch.manual_seed(0)
    return AutoencoderKLWan(**TINY_VAE).eval()


def test_normalisation_round_trips_with_the_vae_statistics():
    vae = _vae()
    z = torch.randn(1, 16, 3, 2, 2)
    torch.testing.assert_close(denormalize_latents(normalize_latents(z, vae), vae), z)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    assert torch.allclose(normalize_latents(mean.expand(1, 16, 1, 1, 1), vae), torch.zeros(1))


def test_encoding_reference_and_skeleton_equals_the_prefix_of_the_whole_sequence():
    vae, layout = _vae(), SequenceLayout(8, 32, 32)
    ref, pose, target = (
        torch.rand(1, 3, 1, 32, 32) * 2 - 1,
        torch.rand(1, 3, 8, 32, 32) * 2 - 1,
        torch.rand(1, 3, 8, 32, 32),
    )
    context = encode_video(vae, method.context_pixels(ref, pose))
    whole = encode_video(vae, torch.cat([ref, pose, target], dim=2))
    assert context.shape[2] == layout.context_latent_frames and whole.shape[2] == layout.latent_frames
    assert torch.equal(context, whole[:, :, : layout.context_latent_frames])
    condition = encode_video(vae, method.condition_pixels(ref, pose))
    assert torch.equal(condition[:, :, : layout.context_latent_frames], context)


def test_decoding_gives_exactly_n_target_frames():
    vae = _vae()
    for n in (4, 8, 12):
        layout = SequenceLayout(n, 32, 32)
        context = torch.randn(1, 16, layout.context_latent_frames, 4, 4)
        target = torch.randn(1, 16, layout.target_latent_frames, 4, 4)
        frames = decode_target_frames(vae, context, target, layout)
        assert frames.shape == (1, 3, n, 32, 32)
        # Decoding the target latents alone loses T - 1 frames: why we decode with the context.
        alone = vae.decode(denormalize_latents(target, vae)).sample
        assert alone.shape[2] == n - 3


def test_tiled_encoding_converts_diffsynth_latent_units_to_pixels():
    vae = _vae()
    enable_tiled_encoding(vae, (4, 4), (2, 2))
    assert vae.use_tiling
    assert (vae.tile_sample_min_height, vae.tile_sample_stride_width) == (32, 16)
    video = torch.rand(1, 3, 5, 48, 48) * 2 - 1
    tiled = encode_video(vae, video)
    vae.disable_tiling()
    plain = encode_video(vae, video)
    assert tiled.shape == plain.shape == (1, 16, 2, 6, 6)
    assert not torch.equal(tiled, plain)  # tiling really ran
    assert (tiled - plain).abs().mean() < 0.5 * plain.abs().mean()
