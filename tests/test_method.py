"""The FramePrompt method module: layout arithmetic, mask, selective noise, timesteps, loss."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from frameprompt import method
from frameprompt.errors import LayoutError
from frameprompt.method import SequenceLayout
from frameprompt.testing import TINY_TRANSFORMER


def test_layout_matches_the_paper_for_wan21():
    layout = SequenceLayout(40, 480, 832)
    assert (layout.pixel_frames, layout.latent_frames, layout.context_latent_frames) == (81, 21, 11)
    assert layout.latent_size == (60, 104)
    assert layout.context_tokens == 11 * 30 * 52
    assert layout.sequence_tokens == 21 * 30 * 52
    assert layout.target_pixel_slice == slice(41, 81)


def test_layout_follows_a_lighter_vae():
    layout = SequenceLayout(4, 64, 64, temporal_factor=1, spatial_factor=4)
    assert (layout.pixel_frames, layout.latent_frames, layout.context_latent_frames) == (9, 9, 5)
    assert layout.latent_size == (16, 16)
    assert layout.context_tokens == 5 * 8 * 8


@pytest.mark.parametrize(("n", "nearest"), [(6, 8), (5, 4), (1, 4), (0, 4), (41, 40)])
def test_layout_rejects_n_that_does_not_fit_and_names_the_nearest(n, nearest):
    with pytest.raises(LayoutError, match=f"N={nearest}"):
        SequenceLayout(n, 64, 64)


def test_layout_rejects_sizes_that_are_not_multiples_of_16():
    with pytest.raises(LayoutError, match="width=64"):
        SequenceLayout(4, 64, 70)


def test_mask_marks_reference_and_skeleton_frames():
    mask = method.build_context_mask(SequenceLayout(8, 32, 32), batch_size=2)
    assert mask.shape == (2, 4, 5, 4, 4)
    for channel in range(4):
        assert mask[0, channel, :, 0, 0].tolist() == [1, 1, 1, 0, 0]
    assert mask.unique().tolist() == [0, 1]


def test_mask_channel_c_flags_pixel_frame_t_minus_1_times_4_plus_1_plus_c():
    # N=4: given pixel frames 0..4, target 5..8; latent 1 covers pixel 1..4, latent 2 covers 5..8.
    mask = method.build_context_mask(SequenceLayout(4, 16, 16))
    assert mask[0, :, 0, 0, 0].tolist() == [1, 1, 1, 1]
    assert mask[0, :, 1, 0, 0].tolist() == [1, 1, 1, 1]
    assert mask[0, :, 2, 0, 0].tolist() == [0, 0, 0, 0]


def test_image_to_video_layout_is_reference_then_targets():
    # Stage 1 (plain I2V pretraining): [reference | N targets], only the reference is given
    layout = SequenceLayout(8, 32, 32).without_skeleton()
    assert (layout.pixel_frames, layout.latent_frames, layout.context_latent_frames) == (9, 3, 1)
    assert layout.target_pixel_slice == slice(1, 9)
    mask = method.build_context_mask(layout)
    assert mask[0, 0, :, 0, 0].tolist() == [1, 0, 0]


def test_drop_skeleton_keeps_the_reference_and_target_latents():
    layout = SequenceLayout(8, 32, 32)  # latents: reference 0, skeleton 1-2, target 3-4
    latents = torch.arange(5.0).view(1, 1, 5, 1, 1).expand(2, 3, 5, 4, 4)
    kept = method.drop_skeleton(latents, layout)
    assert kept[0, 0, :, 0, 0].tolist() == [0, 3, 4]
    assert kept.shape[2] == layout.without_skeleton().latent_frames


def test_selective_noise_keeps_context_clean():
    layout = SequenceLayout(8, 32, 32)
    x0, noise = torch.randn(2, 16, 5, 4, 4), torch.randn(2, 16, 5, 4, 4)
    sigmas = torch.tensor([0.3, 0.9])
    xt = method.noise_target(x0, noise, sigmas, layout)
    assert torch.equal(xt[:, :, :3], x0[:, :, :3])
    expected = (1 - sigmas.view(2, 1, 1, 1, 1)) * x0[:, :, 3:] + sigmas.view(2, 1, 1, 1, 1) * noise[:, :, 3:]
    torch.testing.assert_close(xt[:, :, 3:], expected)
    everything = method.noise_target(x0, noise, sigmas, layout, mode="all")
    assert not torch.equal(everything[:, :, :3], x0[:, :, :3])


def test_shifted_sigmas_lie_in_0_1_and_lean_towards_noise():
    sigmas = method.sample_sigmas(10_000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert sigmas.min() > 0 and sigmas.max() < 1
    assert sigmas.mean() > 0.6  # unshifted uniform would give 0.5


def test_model_input_has_wan_i2v_channel_order():
    layout = SequenceLayout(4, 32, 32)
    x, cond = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 16, 3, 4, 4)
    mask = method.build_context_mask(layout)
    inp = method.model_input(x, mask, cond)
    assert inp.shape == (1, 36, 3, 4, 4)
    assert torch.equal(inp[:, :16], x) and torch.equal(inp[:, 16:20], mask) and torch.equal(inp[:, 20:], cond)


def test_per_token_timestep_is_zero_on_context_tokens():
    layout = SequenceLayout(4, 32, 32)
    t = method.timestep_for(torch.tensor(700.0), layout, batch_size=2, per_token=True)
    assert t.shape == (2, layout.sequence_tokens)
    assert (t[:, : layout.context_tokens] == 0).all() and (t[:, layout.context_tokens :] == 700).all()
    assert method.timestep_for(torch.tensor(700.0), layout, batch_size=2).shape == (2,)


def test_uniform_per_token_timestep_equals_scalar_timestep():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_TRANSFORMER).eval()
    layout = SequenceLayout(8, 32, 32)
    x = torch.randn(1, 36, layout.latent_frames, 4, 4)
    text = torch.randn(1, 512, 32)
    with torch.no_grad():
        scalar = model(x, torch.tensor([500.0]), text, return_dict=False)[0]
        per_token = model(x, torch.full((1, layout.sequence_tokens), 500.0), text, return_dict=False)[0]
    torch.testing.assert_close(per_token, scalar, atol=1e-5, rtol=1e-5)


def test_target_loss_takes_gradient_only_from_target_positions():
    layout = SequenceLayout(8, 32, 32)
    prediction = torch.randn(1, 16, 5, 4, 4, requires_grad=True)
    x0, noise = torch.randn(1, 16, 5, 4, 4), torch.randn(1, 16, 5, 4, 4)
    method.frameprompt_loss(prediction, x0, noise, layout).backward()
    assert (prediction.grad[:, :, :3] == 0).all()
    assert (prediction.grad[:, :, 3:] != 0).all()
    prediction.grad = None
    method.frameprompt_loss(prediction, x0, noise, layout, mode="all").backward()
    assert (prediction.grad != 0).all()


def test_loss_is_mse_to_velocity():
    layout = SequenceLayout(4, 16, 16)
    x0, noise = torch.randn(1, 16, 3, 2, 2), torch.randn(1, 16, 3, 2, 2)
    assert method.frameprompt_loss(noise - x0, x0, noise, layout).item() == 0.0
    with pytest.raises(ValueError, match="'target' or 'all'"):
        method.frameprompt_loss(noise, x0, noise, layout, mode="half")
