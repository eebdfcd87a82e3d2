"""FramePromptPipeline end to end on tiny random-weight diffusers models."""

import numpy as np
import pytest
import torch
from frameprompt import method
from frameprompt.errors import InputError, LayoutError
from frameprompt.inference.pipeline import TEXT_TOKENS, FramePromptPipeline, GenerationCancelled
from frameprompt.testing import demo_inputs, tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    p = tiny_pipeline()
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe, n=8, steps=3, seed=0, **kw):
    ref, poses = demo_inputs(n, 32)
    return pipe(ref, poses, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


def test_output_shapes_for_each_output_type(pipe):
    assert _run(pipe, output_type="np").frames.shape == (1, 8, 32, 32, 3)
    assert _run(pipe, n=4, output_type="pt").frames.shape == (1, 4, 3, 32, 32)
    pil = _run(pipe, output_type="pil").frames[0]
    assert len(pil) == 8 and pil[0].size == (32, 32)


def test_same_seed_same_output_other_seed_other_output(pipe):
    a, b, c = (_run(pipe, seed=s, output_type="np").frames for s in (0, 0, 1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_context_latents_are_bit_identical_before_and_after_denoising(pipe):
    seen = []
    original = pipe.transformer.forward

    def spy(hidden_states, *args, **kwargs):
        seen.append(hidden_states[:, :16].clone())
        return original(hidden_states, *args, **kwargs)

    pipe.transformer.forward = spy
    try:
        _run(pipe, steps=4)
    finally:
        pipe.transformer.forward = original
    layout = method.SequenceLayout(8, 32, 32)
    lc = layout.context_latent_frames
    assert len(seen) == 4
    for x in seen[1:]:
        assert torch.equal(x[:, :, :lc], seen[0][:, :, :lc])
        assert not torch.equal(x[:, :, lc:], seen[0][:, :, lc:])


def test_text_embeddings_are_padded_to_512_tokens(pipe):
    shapes = []
    original = pipe.transformer.forward

    def spy(hidden_states, timestep, encoder_hidden_states, *args, **kwargs):
        shapes.append(tuple(encoder_hidden_states.shape))
        return original(hidden_states, timestep, encoder_hidden_states, *args, **kwargs)

    pipe.transformer.forward = spy
    try:
        _run(pipe, steps=2, prompt_embeds=torch.randn(1, 7, 32), guidance_scale=3.0)
    finally:
        pipe.transformer.forward = original
    # with text, CFG runs a second (unconditional) pass per step
    assert shapes == [(1, TEXT_TOKENS, 32)] * 4


def test_callback_sees_each_step_and_can_cancel(pipe):
    steps = []

    def callback(p, i, t, kwargs):
        steps.append(i)
        if i == 1:
            p._interrupt = True
        return kwargs

    with pytest.raises(GenerationCancelled, match="step 2/5"):
        _run(pipe, steps=5, callback_on_step_end=callback)
    assert steps == [0, 1]
    assert _run(pipe, steps=2, output_type="np").frames.shape[1] == 8  # usable again afterwards


def test_bad_frame_count_and_size_get_clear_errors(pipe):
    with pytest.raises(LayoutError, match="N=8"):
        _run(pipe, n=7)
    ref, poses = demo_inputs(4, 32)
    with pytest.raises(LayoutError, match="multiple of 16"):
        pipe(ref, poses, height=40, width=32, num_inference_steps=1)


def test_prompt_without_text_encoder_is_refused(pipe):
    with pytest.raises(InputError, match="no text encoder"):
        _run(pipe, prompt="a knight")


def test_clip_branch_uses_the_image_encoder():
    p = tiny_pipeline(clip=True)
    p.set_progress_bar_config(disable=True)
    assert _run(p, n=4, steps=2, output_type="np").frames.shape == (1, 4, 32, 32, 3)
    p.image_encoder = None
    with pytest.raises(InputError, match="image encoder"):
        _run(p, n=4, steps=1)


def test_save_and_load_round_trip_gives_the_same_output(pipe, tiny_model_dir):
    loaded = FramePromptPipeline.from_pretrained(tiny_model_dir)
    loaded.set_progress_bar_config(disable=True)
    fresh = tiny_pipeline()
    fresh.set_progress_bar_config(disable=True)
    # Loaded weights sit in other memory layouts, so float sums may differ in the last bit.
    np.testing.assert_allclose(
        _run(loaded, output_type="np").frames, _run(fresh, output_type="np").frames, atol=1e-5
    )
    assert torch.equal(loaded.null_prompt_embeds, fresh.null_prompt_embeds)


def test_prompt_goes_through_the_text_encoder_padded_with_zeros_to_512():
    from frameprompt.testing import tiny_components, tiny_text_encoder

    p = FramePromptPipeline(**tiny_components(), **tiny_text_encoder())
    p.set_progress_bar_config(disable=True)
    text, negative = p.encode_text("a knight walks", "blurry", None, None, torch.device("cpu"), torch.float32)
    assert text.shape == negative.shape == (1, TEXT_TOKENS, 32)
    assert text[0, :3].abs().sum() > 0 and (text[0, 4:] == 0).all()  # 3 words + </s>, then zeros
    a = _run(p, n=4, steps=2, prompt="a knight walks", guidance_scale=4.0, output_type="np").frames
    b = _run(p, n=4, steps=2, prompt="a knight dances", guidance_scale=4.0, output_type="np").frames
    assert a.shape == (1, 4, 32, 32, 3) and not np.array_equal(a, b)


def test_a_lighter_vae_changes_the_numbers_not_the_code():
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from frameprompt.inference.pipeline import default_scheduler
    from frameprompt.testing import TINY_TRANSFORMER

    torch.manual_seed(0)
    # 4x spatial, no temporal compression: every frame has its own latent.
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, False],
        scale_factor_temporal=1,
        scale_factor_spatial=4,
    )
    transformer = WanTransformer3DModel(**{**TINY_TRANSFORMER, "in_channels": 16 + 1 + 16})
    p = FramePromptPipeline(vae=vae, transformer=transformer, scheduler=default_scheduler())
    p.set_progress_bar_config(disable=True)
    layout = method.SequenceLayout.for_models(4, 32, 32, vae, transformer)
    assert (layout.latent_frames, layout.context_latent_frames, layout.latent_size) == (9, 5, (8, 8))
    frames = _run(p, n=4, steps=2, output_type="np").frames
    assert frames.shape == (1, 4, 32, 32, 3)
