"""Cache mode: block-causal attn1 processor, the context K/V cache, and the pipeline's refusal."""

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from frameprompt import method
from frameprompt.errors import IncompatibleModelError
from frameprompt.inference.context_cache import (
    BlockCausalWanSelfAttnProcessor,
    apply_training_info,
    block_causal_attention,
    block_causal_processors,
    cached_forward,
    disable_block_causal_attention,
    enable_block_causal_attention,
    extract_context_cache,
    mark_trained_with_context_cache,
    trained_with_context_cache,
    write_training_info,
)
from frameprompt.method import SequenceLayout
from frameprompt.testing import TINY_TRANSFORMER, TINY_TRANSFORMER_CLIP, demo_inputs, tiny_pipeline

LAYOUT = SequenceLayout(8, 32, 32)  # L = 5 latent frames, Lc = 3, 16 tokens per frame


def _transformer(clip=False, seed=0):
    torch.manual_seed(seed)
    return WanTransformer3DModel(**(TINY_TRANSFORMER_CLIP if clip else TINY_TRANSFORMER)).eval()


def _inputs(layout=LAYOUT, clip=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = layout.latent_size
    x = torch.randn(1, 36, layout.latent_frames, h, w, generator=g)
    text = torch.randn(1, 512, 32, generator=g)
    image = torch.randn(1, 5, 16, generator=g) if clip else None
    return x, text, image


def _forward(model, x, t, text, image=None):
    return model(x, t, text, encoder_hidden_states_image=image, return_dict=False)[0]


class _MaskedReference(WanAttnProcessor):
    """diffusers' processor with a dense boolean mask: context rows may not see target columns."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        s = hidden_states.shape[1]
        mask = torch.ones(s, s, dtype=torch.bool)
        mask[: self.n, self.n :] = False
        return super().__call__(attn, hidden_states, None, mask, rotary_emb)


def test_block_causal_processor_equals_masked_sdpa_reference():
    model = _transformer()
    x, text, _ = _inputs()
    t = torch.tensor([700.0])
    n = LAYOUT.context_tokens
    for block in model.blocks:
        block.attn1.set_processor(_MaskedReference(n))
    reference = _forward(model, x, t, text)
    for block in model.blocks:
        block.attn1.set_processor(WanAttnProcessor())
    enable_block_causal_attention(model, LAYOUT)
    ours = _forward(model, x, t, text)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    # and it is not the full attention
    disable_block_causal_attention(model)
    assert (_forward(model, x, t, text) - ours).abs().max() > 1e-4


def test_processor_with_no_context_equals_the_stock_processor():
    model = _transformer(clip=True)
    x, text, image = _inputs(clip=True)
    t = torch.tensor([400.0])
    stock = _forward(model, x, t, text, image)
    enable_block_causal_attention(model, 0)
    assert all(isinstance(b.attn1.processor, BlockCausalWanSelfAttnProcessor) for b in model.blocks)
    assert not isinstance(model.blocks[0].attn2.processor, BlockCausalWanSelfAttnProcessor)
    torch.testing.assert_close(_forward(model, x, t, text, image), stock, atol=1e-6, rtol=0)
    disable_block_causal_attention(model)
    assert type(model.blocks[0].attn1.processor) is WanAttnProcessor


def test_context_outputs_do_not_depend_on_target_noise_in_cache_mode():
    model = _transformer()
    x, text, _ = _inputs()
    other = x.clone()
    lc = LAYOUT.context_latent_frames
    other[:, :16, lc:] = torch.randn_like(other[:, :16, lc:])
    t = method.timestep_for(torch.tensor(800.0), LAYOUT, 1, per_token=True)
    with block_causal_attention(model, LAYOUT):
        a, b = _forward(model, x, t, text), _forward(model, other, t, text)
    assert torch.equal(a[:, :, :lc], b[:, :, :lc])
    assert not torch.allclose(a[:, :, lc:], b[:, :, lc:])
    # paper mode (full attention): the context does see the target
    a, b = _forward(model, x, t, text), _forward(model, other, t, text)
    assert not torch.allclose(a[:, :, :lc], b[:, :, :lc])


@pytest.mark.parametrize("clip", [False, True])
def test_cached_forward_equals_uncached_block_causal_forward(clip):
    model = _transformer(clip=clip)
    x, text, image = _inputs(clip=clip)
    lc = LAYOUT.context_latent_frames
    with block_causal_attention(model, LAYOUT):
        cache = extract_context_cache(model, x[:, :, :lc], text, image)
        assert len(cache.layers) == len(model.blocks) and cache.num_context_tokens == LAYOUT.context_tokens
        for t in (999.0, 500.0, 3.0):
            per_token = method.timestep_for(torch.tensor(t), LAYOUT, 1, per_token=True)
            full = _forward(model, x, per_token, text, image)[:, :, lc:]
            cached = cached_forward(model, x[:, :, lc:], torch.tensor(t), cache)
            assert cached.shape == full.shape
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_enable_is_idempotent_and_the_context_manager_restores():
    model = _transformer()
    original = model.blocks[0].attn1.processor
    with block_causal_attention(model, 48):
        enable_block_causal_attention(model, 16)  # a trainer switching layouts
        assert [p.num_context_tokens for p in block_causal_processors(model)] == [16, 16]
    assert model.blocks[0].attn1.processor is original
    enable_block_causal_attention(model, 32)
    with block_causal_attention(model, 48):
        assert block_causal_processors(model)[0].num_context_tokens == 48
    assert block_causal_processors(model)[0].num_context_tokens == 32  # left enabled as it was


def test_context_parallel_is_refused_clearly():
    model = _transformer()
    x, text, _ = _inputs()
    for p in enable_block_causal_attention(model, LAYOUT):
        p._parallel_config = object()  # what enable_parallelism sets
    with pytest.raises(RuntimeError, match="context parallelism"):
        _forward(model, x, torch.tensor([1.0]), text)


def test_training_marker_survives_save_and_load(tmp_path):
    model = _transformer()
    assert not trained_with_context_cache(model)
    mark_trained_with_context_cache(model)
    model.save_pretrained(tmp_path / "t")
    assert trained_with_context_cache(WanTransformer3DModel.from_pretrained(tmp_path / "t"))
    # LoRA folders carry the flag in a small json next to the weights
    fresh = _transformer()
    assert not apply_training_info(fresh, tmp_path)
    write_training_info(tmp_path / "lora")
    assert apply_training_info(fresh, tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert trained_with_context_cache(fresh)


# --- pipeline ---------------------------------------------------------------------------------------
def _generate(pipe, n=8, steps=3, seed=0, **kw):
    ref, poses = demo_inputs(n, 32)
    return pipe(ref, poses, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.fixture(scope="module")
def cache_pipe():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    mark_trained_with_context_cache(pipe.transformer)
    return pipe


def test_cached_generation_equals_uncached_block_causal_generation(cache_pipe):
    embeds = dict(prompt_embeds=torch.randn(1, 7, 32), guidance_scale=4.0)  # two CFG branches
    cached = _generate(cache_pipe, context_cache=True, output_type="latent", **embeds)
    uncached = _generate(cache_pipe, context_cache=False, output_type="latent", **embeds)
    default = _generate(cache_pipe, output_type="latent", **embeds)  # None: the model says cache
    assert not cached.approximate and not uncached.approximate
    diff = (cached.frames - uncached.frames).abs().max().item()
    assert diff <= 1e-4, diff
    assert torch.equal(default.frames, cached.frames)
    # the processors are put back afterwards
    assert not block_causal_processors(cache_pipe.transformer)
    # and it is not the paper-mode output
    cache_pipe.transformer.register_to_config(frameprompt_training=None)
    try:
        stock = _generate(cache_pipe, output_type="latent", **embeds)
    finally:
        mark_trained_with_context_cache(cache_pipe.transformer)
    assert (stock.frames - uncached.frames).abs().max() > 1e-3


def test_cached_generation_decodes_n_frames(cache_pipe):
    out = _generate(cache_pipe, n=4, steps=2, output_type="np")
    assert out.frames.shape == (1, 4, 32, 32, 3) and np.isfinite(out.frames).all()


def test_cache_mode_is_refused_for_a_model_trained_without_it():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(IncompatibleModelError, match="not trained"):
        _generate(pipe, context_cache=True)
    out = _generate(pipe, context_cache=True, allow_approximate=True, output_type="latent")
    assert out.approximate is True
    assert _generate(pipe, output_type="latent").approximate is False  # default: stock mode


def test_training_usage_with_lora_and_gradient_checkpointing():
    """What a trainer's --context-cache does: block-causal processor + per-token timesteps, backward."""
    from frameprompt.training.lora import add_lora

    model = _transformer()
    add_lora(model, rank=4, alpha=4)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # a trained adapter, so it changes the output
    model.enable_gradient_checkpointing()
    model.train()
    x, text, _ = _inputs()
    lc = LAYOUT.context_latent_frames
    enable_block_causal_attention(model, LAYOUT)
    t = method.timestep_for(torch.tensor([600.0]), LAYOUT, 1, per_token=True)
    loss = _forward(model, x, t, text)[:, :, lc:].square().mean()
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # the trained adapter is used identically by the cached path
    model.eval()
    with torch.no_grad():
        full = _forward(model, x, t, text)[:, :, lc:]
    cache = extract_context_cache(model, x[:, :, :lc], text)
    torch.testing.assert_close(
        cached_forward(model, x[:, :, lc:], torch.tensor(600.0), cache), full, atol=1e-5, rtol=0
    )
    disable_block_causal_attention(model)


def test_a_cache_mode_lora_marks_the_pipeline_when_loaded(tmp_path):
    from frameprompt.loading import load_lora
    from frameprompt.training.lora import add_lora, save_lora

    trained = _transformer()
    add_lora(trained, rank=2, alpha=2)
    lora_file = save_lora(trained, tmp_path / "paper")
    pipe = tiny_pipeline()
    load_lora(pipe, lora_file)
    assert not trained_with_context_cache(pipe.transformer)  # no json: the paper's mode

    save_lora(trained, tmp_path / "cache")
    write_training_info(tmp_path / "cache")  # what the trainer's --context-cache writes
    pipe = tiny_pipeline()
    load_lora(pipe, tmp_path / "cache")
    assert trained_with_context_cache(pipe.transformer)
