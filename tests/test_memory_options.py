"""Memory options (fp8 storage, offload, VAE tiling/slicing, compile) through `load_pipeline`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from frameprompt.errors import InputError
from frameprompt.inference.memory import (
    MemoryOptions,
    estimate_memory,
    parameter_bytes,
    transformer_parameters,
)
from frameprompt.loading import load_pipeline
from frameprompt.testing import TINY_TRANSFORMER, TINY_TRANSFORMER_CLIP, demo_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frames(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    reference, poses = demo_inputs(4, 32)
    return pipe(
        reference,
        poses,
        num_inference_steps=3,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).frames


def test_fp8_stores_the_block_weights_in_float8_and_stays_close(tiny_model_dir):
    plain = load_pipeline(tiny_model_dir, device="cpu")
    fp8 = load_pipeline(tiny_model_dir, device="cpu", memory=MemoryOptions(fp8=True))
    assert fp8.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
    assert fp8.transformer.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn
    assert fp8.transformer.blocks[0].norm2.weight.dtype == torch.float32  # norms stay unquantised
    assert fp8.transformer.patch_embedding.weight.dtype == torch.float32
    # the tiny model's float32 timestep embedder is a large share of it; the embedded model: benchmarks/memory.py
    assert parameter_bytes(fp8.transformer) < 0.6 * parameter_bytes(plain.transformer)
    a, b = frames(plain), frames(fp8)
    assert np.isfinite(b).all()
    psnr = 10 * np.log10(1 / np.mean((a - b) ** 2))
    assert psnr > 25, psnr
    # with the context cache, whose forward runs the blocks itself
    assert np.isfinite(frames(fp8, context_cache=True, allow_approximate=True)).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("mode", ["model", "group", "sequential"])
def test_offload_on_a_cpu_is_refused_with_a_hint(tiny_model_dir, mode):
    with pytest.raises(InputError, match="CUDA") as error:
        load_pipeline(tiny_model_dir, device="cpu", memory=MemoryOptions(offload=mode))
    assert "--fp8" in error.value.hint


def test_unknown_offload_mode(tiny_model_dir):
    with pytest.raises(InputError, match="unknown offload mode"):
        load_pipeline(tiny_model_dir, device="cpu", memory=MemoryOptions(offload="disk"))


def test_vae_tiling_and_slicing_switch_the_vae(tiny_model_dir):
    pipe = load_pipeline(
        tiny_model_dir, device="cpu", memory=MemoryOptions(vae_tiling=True, vae_slicing=True)
    )
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    assert frames(pipe).shape == (1, 4, 32, 32, 3)


def test_compile_wraps_the_repeated_blocks(tiny_model_dir):
    pipe = load_pipeline(
        tiny_model_dir, device="cpu", memory=MemoryOptions(compile=True, compile_backend="eager")
    )
    assert all(block._compiled_call_impl is not None for block in pipe.transformer.blocks)
    plain = load_pipeline(tiny_model_dir, device="cpu")
    np.testing.assert_allclose(frames(pipe), frames(plain), atol=1e-5)


@pytest.mark.parametrize("config", [TINY_TRANSFORMER, TINY_TRANSFORMER_CLIP], ids=["plain", "clip"])
def test_parameter_count_on_paper_matches_the_model(config):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(**config)
    total, blocks = transformer_parameters(config)
    assert total == sum(p.numel() for p in model.parameters())
    assert blocks == sum(p.numel() for p in model.blocks.parameters())


def test_14b_estimate():
    wan_14b = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, in_channels=36,
                   text_dim=4096, freq_dim=256, out_channels=16, image_dim=1280, added_kv_proj_dim=5120)  # fmt: skip
    total, _ = transformer_parameters(wan_14b)
    assert 16.3e9 < total < 16.5e9  # Wan2.1 I2V 14B with its CLIP branch
    gib = estimate_memory(wan_14b)
    assert 30 < gib["bf16"] < 31
    assert gib["fp8 storage"] < gib["bf16"] / 1.9
    assert gib["group offload"] < 24 and gib["sequential offload"] < gib["group offload"]
