"""Tiny random-weight versions of the real diffusers classes, for tests and benchmarks on CPU.

They are saved with `save_pretrained` and loaded back through `frameprompt.loading`, the path a
user's Wan2.1 checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanTransformer3DModel

from frameprompt.inference.pipeline import FramePromptPipeline, default_scheduler

# I2V layout (36 input channels), about 33k parameters.
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=32,
)
# With a CLIP image branch: added_kv_proj_dim must equal heads * head_dim.
TINY_TRANSFORMER_CLIP = {**TINY_TRANSFORMER, "image_dim": 16, "added_kv_proj_dim": 24}
# Keeps Wan2.1's 4x temporal / 8x spatial compression, about 14k parameters.
TINY_VAE = dict(
    base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
)


def tiny_components(seed: int = 0, clip: bool = False) -> dict:
    torch.manual_seed(seed)
    components: dict = {
        "transformer": WanTransformer3DModel(**(TINY_TRANSFORMER_CLIP if clip else TINY_TRANSFORMER)).eval(),
        "vae": AutoencoderKLWan(**TINY_VAE).eval(),
        "scheduler": default_scheduler(),
    }
    if clip:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=16,
        )
        components["image_encoder"] = CLIPVisionModel(config).eval()
        components["image_processor"] = CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        )
    return components


def tiny_pipeline(seed: int = 0, clip: bool = False) -> FramePromptPipeline:
    return FramePromptPipeline(**tiny_components(seed, clip))


def tiny_pipeline_dir(path: str | Path, seed: int = 0, clip: bool = False) -> Path:
    """Save a tiny FramePrompt pipeline to `path` and return it (a `--model` folder)."""
    path = Path(path)
    tiny_pipeline(seed, clip).save_pretrained(path)
    return path


def tiny_wan_i2v_dir(path: str | Path, seed: int = 0) -> Path:
    """A tiny checkpoint in the layout of `Wan-AI/Wan2.1-I2V-14B-480P-Diffusers`."""
    path = Path(path)
    parts = tiny_components(seed, clip=True)
    WanImageToVideoPipeline(tokenizer=None, text_encoder=None, **parts).save_pretrained(path)
    return path


def demo_inputs(
    num_frames: int = 4, size: int = 32, seed: int = 0
) -> tuple[PIL.Image.Image, list[PIL.Image.Image]]:
    """A random reference image and `num_frames` random skeleton-like frames of size x size."""
    rng = np.random.default_rng(seed)
    reference = PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    poses = [
        PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(num_frames)
    ]
    return reference, poses


def tiny_text_encoder() -> dict:
    """A tiny UMT5 encoder and a word-level tokenizer (text_dim 32), standing in for UMT5-XXL."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "a", "knight", "walks", "dances", "blurry"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(words),
        d_model=TINY_TRANSFORMER["text_dim"],
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
    )
    return {"tokenizer": tokenizer, "text_encoder": UMT5EncoderModel(config).eval()}
