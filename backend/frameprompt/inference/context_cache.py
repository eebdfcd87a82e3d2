"""Cache mode: block-causal self-attention and an exact context K/V cache.

FramePrompt's sequence is `[context | target]` (reference + skeleton (+ carried frames), then the
frames to generate). In the paper's mode every token attends to every token and all tokens share
one timestep, so the context's hidden states change with the noisy target and with t. Cache mode
changes two things, in training and inference alike:

1. **Block-causal self-attention.** Context queries attend to context keys only; target queries
   attend to all keys. `BlockCausalWanSelfAttnProcessor` replaces `attn1`'s processor and makes two
   mask-free `dispatch_attention_fn` calls (context->context, target->all), so the flash, sage and
   native SDPA backends all work; no dense mask is built. `attn2` (text/CLIP cross-attention) keeps
   diffusers' processor.
2. **Timestep 0 on the context.** Per-token timesteps `(B, seq)` with 0 on context tokens
   (`method.timestep_for(..., per_token=True)`), so clean context is modulated as clean.

With both, the context tokens' hidden states depend on nothing but the context and the text, so
their self-attention keys/values are computed once per generation and per classifier-free-guidance
branch (`extract_context_cache`), and each denoising step runs only the target tokens through the
blocks, attending to `[cached context K/V | target K/V]` (`cached_forward`). The result equals the
uncached block-causal model up to float rounding. Without (1) and (2) a cache is only approximate,
so the pipeline refuses cache mode for a model not trained with it (`allow_approximate=True`
overrides and labels the output).

For trainers:

    enable_block_causal_attention(transformer, layout)   # or a number of context tokens
    timestep = method.timestep_for(t, layout, batch_size, per_token=True)
    ...                                                  # ordinary forward/backward
    mark_trained_with_context_cache(transformer)         # before save_pretrained
    disable_block_causal_attention(transformer)

`mark_trained_with_context_cache` writes a `frameprompt_training` block into the transformer's
config, so `save_pretrained` stores it in `transformer/config.json`; `FramePromptPipeline` reads it
back with `trained_with_context_cache`. A LoRA file carries no transformer config: the trainer
writes `frameprompt_training.json` next to it (`write_training_info`), and
`FramePromptPipeline.load_lora_weights` applies it (`apply_training_info`) when loading a local LoRA.

Not combinable with diffusers' context parallelism: the processor splits the sequence at a global
token index, which a sequence-sharded rank does not see; it raises if `enable_parallelism` set a
parallel config on it. See docs/performance.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from frameprompt.method import SequenceLayout

TRAINING_CONFIG_KEY = "frameprompt_training"
TRAINING_INFO_FILE = "frameprompt_training.json"
_SAVED_PROCESSORS = "_frameprompt_saved_attn1_processors"

Mode = Literal["full", "extract", "cached"]


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """RoPE exactly as diffusers' `WanAttnProcessor` applies it (interleaved pairs)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class BlockCausalWanSelfAttnProcessor:
    """`attn1` processor: context queries see context keys, target queries see all keys.

    Attributes:
        num_context_tokens: the first this many tokens of the sequence are context (0: the stock
            full attention).
        mode: "full" (whole sequence, block-causal), "extract" (the input is the context alone;
            its post-norm, post-RoPE K/V are kept in `context_kv`) or "cached" (the input is the
            target alone; it attends to `[context_kv | own K/V]`). `extract_context_cache` and
            `cached_forward` switch it and switch it back.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, num_context_tokens: int = 0) -> None:
        self.num_context_tokens = int(num_context_tokens)
        self.mode: Mode = "full"
        self.context_kv: tuple[torch.Tensor, torch.Tensor] | None = None

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=None,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=None,
        )

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("BlockCausalWanSelfAttnProcessor is for self-attention (attn1) without a mask")
        if self._parallel_config is not None:
            raise RuntimeError(
                "block-causal attention (FramePrompt cache mode) does not support diffusers' context "
                "parallelism: the sequence is sharded across ranks but the processor splits it at a "
                "global context length. Run cache-mode models on one GPU (see docs/performance.md)."
            )
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))  # (B, S, H, D)
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        n = self.num_context_tokens
        if self.mode == "extract":
            self.context_kv = (key, value)
            out = self._attend(query, key, value)
        elif self.mode == "cached":
            if self.context_kv is None:
                raise RuntimeError("cached mode without context K/V: run extract_context_cache first")
            context_key, context_value = self.context_kv
            out = self._attend(query, torch.cat([context_key, key], 1), torch.cat([context_value, value], 1))
        elif 0 < n < query.shape[1]:
            # contiguous slices: CPU SDPA falls back to a slower kernel on strided ones
            context = [t[:, :n].contiguous() for t in (query, key, value)]
            out = torch.cat(
                [self._attend(*context), self._attend(query[:, n:].contiguous(), key, value)], dim=1
            )
        else:
            out = self._attend(query, key, value)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _num_context_tokens(layout_or_num_context_tokens: SequenceLayout | int) -> int:
    if isinstance(layout_or_num_context_tokens, SequenceLayout):
        return layout_or_num_context_tokens.context_tokens
    n = int(layout_or_num_context_tokens)
    if n < 0:
        raise ValueError(f"num_context_tokens must be >= 0, got {n}")
    return n


def block_causal_processors(transformer: WanTransformer3DModel) -> list[BlockCausalWanSelfAttnProcessor]:
    """The installed block-causal processors, one per block in block order ([] if not installed)."""
    processors = [block.attn1.processor for block in transformer.blocks]
    if all(isinstance(p, BlockCausalWanSelfAttnProcessor) for p in processors):
        return processors
    return []


def enable_block_causal_attention(
    transformer: WanTransformer3DModel, layout_or_num_context_tokens: SequenceLayout | int
) -> list[BlockCausalWanSelfAttnProcessor]:
    """Make every block's self-attention block-causal; the first n tokens are context.

    Idempotent: called again (e.g. for a batch with another layout) it only updates n. The previous
    `attn1` processors are kept and come back with `disable_block_causal_attention`; the attention
    backend chosen with `set_attention_backend` is kept. Works in training (autograd, gradient
    checkpointing, LoRA/PEFT layers) and inference. Returns the processors.
    """
    n = _num_context_tokens(layout_or_num_context_tokens)
    processors = block_causal_processors(transformer)
    if not processors:
        saved = []
        for block in transformer.blocks:
            previous = block.attn1.processor
            saved.append(previous)
            processor = BlockCausalWanSelfAttnProcessor(n)
            processor._attention_backend = getattr(previous, "_attention_backend", None)
            processor._parallel_config = getattr(previous, "_parallel_config", None)
            block.attn1.set_processor(processor)
            processors.append(processor)
        setattr(transformer, _SAVED_PROCESSORS, saved)
    for processor in processors:
        processor.num_context_tokens = n
        processor.mode, processor.context_kv = "full", None
    return processors


def disable_block_causal_attention(transformer: WanTransformer3DModel) -> None:
    """Put the `attn1` processors back as they were before `enable_block_causal_attention`."""
    processors = block_causal_processors(transformer)
    if not processors:
        return
    saved = getattr(transformer, _SAVED_PROCESSORS, None) or [None] * len(processors)
    for block, processor, previous in zip(transformer.blocks, processors, saved, strict=True):
        if previous is None:
            previous = WanAttnProcessor()
            previous._attention_backend = processor._attention_backend
        block.attn1.set_processor(previous)
    if hasattr(transformer, _SAVED_PROCESSORS):
        delattr(transformer, _SAVED_PROCESSORS)


@contextmanager
def block_causal_attention(
    transformer: WanTransformer3DModel,
    layout_or_num_context_tokens: SequenceLayout | int,
    enabled: bool = True,
) -> Iterator[None]:
    """`with block_causal_attention(transformer, layout): ...`, restoring the previous state after."""
    if not enabled:
        yield
        return
    before = block_causal_processors(transformer)
    previous_n = before[0].num_context_tokens if before else None
    enable_block_causal_attention(transformer, layout_or_num_context_tokens)
    try:
        yield
    finally:
        if previous_n is None:
            disable_block_causal_attention(transformer)
        else:
            enable_block_causal_attention(transformer, previous_n)


# --- where a model records that it was trained in cache mode -------------------------------------
def mark_trained_with_context_cache(transformer: WanTransformer3DModel, trained: bool = True) -> None:
    """Record in the transformer's config that it was trained in cache mode (block-causal attention,
    context timestep 0). `save_pretrained` writes it to config.json; diffusers warns on loading that
    the key is unexpected but keeps it in `transformer.config`."""
    info = {"context_cache": bool(trained), "attention": "block_causal", "context_timestep": 0}
    transformer.register_to_config(**{TRAINING_CONFIG_KEY: info if trained else {"context_cache": False}})


def trained_with_context_cache(transformer: WanTransformer3DModel) -> bool:
    """True if the transformer's config says it was trained in cache mode."""
    info = transformer.config.get(TRAINING_CONFIG_KEY) or {}
    return bool(info.get("context_cache", False))


def write_training_info(directory: str | os.PathLike, context_cache: bool = True) -> Path:
    """Write `frameprompt_training.json` (e.g. next to a LoRA file, which has no model config)."""
    path = Path(directory) / TRAINING_INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"context_cache": bool(context_cache)}, indent=2) + "\n")
    return path


def apply_training_info(transformer: WanTransformer3DModel, path: str | os.PathLike) -> bool:
    """Read `frameprompt_training.json` from `path` (a folder, or a file whose folder holds it) and
    mark the transformer accordingly. Returns whether the file was found."""
    path = Path(path)
    info_file = (path if path.is_dir() else path.parent) / TRAINING_INFO_FILE
    if not info_file.is_file():
        return False
    mark_trained_with_context_cache(transformer, bool(json.loads(info_file.read_text()).get("context_cache")))
    return True


# --- the cache -----------------------------------------------------------------------------------
@dataclass
class ContextKVCache:
    """One CFG branch's context: per-layer self-attention K/V (post-norm, post-RoPE) of the context
    tokens, and the branch's raw text/CLIP embeddings, which the target steps reuse."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    num_context_tokens: int
    context_latent_frames: int
    encoder_hidden_states: torch.Tensor
    encoder_hidden_states_image: torch.Tensor | None

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def _require_processors(transformer: WanTransformer3DModel) -> list[BlockCausalWanSelfAttnProcessor]:
    processors = block_causal_processors(transformer)
    if not processors:
        raise RuntimeError(
            "the context cache needs block-causal attention: call enable_block_causal_attention"
        )
    return processors


def _embed(transformer: WanTransformer3DModel, hidden_states: torch.Tensor) -> torch.Tensor:
    """Patchify as `WanTransformer3DModel.forward` does: (B, C, F, H, W) -> (B, tokens, dim)."""
    return transformer.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()


def _conditioning(
    transformer: WanTransformer3DModel,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One timestep per sample (B,) -> temb (B, dim), block modulation (B, 6, dim), text(+CLIP)."""
    temb, timestep_proj, text, image = transformer.condition_embedder(
        timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=None
    )
    if image is not None:
        text = torch.concat([image, text], dim=1)
    return temb, timestep_proj.unflatten(1, (6, -1)), text


def _run_blocks(
    transformer: WanTransformer3DModel,
    processors: list[BlockCausalWanSelfAttnProcessor],
    mode: Mode,
    hidden_states: torch.Tensor,
    text: torch.Tensor,
    timestep_proj: torch.Tensor,
    rotary_emb: tuple[torch.Tensor, torch.Tensor],
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    for i, processor in enumerate(processors):
        processor.mode = mode
        processor.context_kv = layers[i] if layers is not None else None
    try:
        for block in transformer.blocks:
            hidden_states = block(hidden_states, text, timestep_proj, rotary_emb)
    finally:
        for processor in processors:
            processor.mode = "full"
            if layers is not None:
                processor.context_kv = None
    return hidden_states


@torch.no_grad()
def extract_context_cache(
    transformer: WanTransformer3DModel,
    context_input: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None = None,
) -> ContextKVCache:
    """Run the context tokens alone through the blocks at timestep 0 and keep each layer's K/V.

    Args:
        context_input: the model input of the context latent frames, (B, in_channels, Lc, h, w)
            (`method.model_input(context, mask[:, :, :Lc], condition[:, :, :Lc])`).
        encoder_hidden_states, encoder_hidden_states_image: this CFG branch's text (B, 512, text_dim)
            and CLIP embeddings; a cache belongs to one branch.
    """
    processors = _require_processors(transformer)
    batch, _, frames, height, width = context_input.shape
    p_t = transformer.config.patch_size[0]
    if frames % p_t:
        raise ValueError(f"{frames} context latent frames are not a multiple of the temporal patch {p_t}")
    rotary_emb = transformer.rope(context_input)
    hidden_states = _embed(transformer, context_input)
    timestep = torch.zeros(batch, device=context_input.device)
    _, timestep_proj, text = _conditioning(
        transformer, timestep, encoder_hidden_states, encoder_hidden_states_image
    )
    _run_blocks(transformer, processors, "extract", hidden_states, text, timestep_proj, rotary_emb)
    layers = []
    for processor in processors:
        if processor.context_kv is None:
            raise RuntimeError("a block did not run its self-attention during the extract pass")
        layers.append(processor.context_kv)
        processor.context_kv = None
    return ContextKVCache(
        layers=layers,
        num_context_tokens=hidden_states.shape[1],
        context_latent_frames=frames,
        encoder_hidden_states=encoder_hidden_states,
        encoder_hidden_states_image=encoder_hidden_states_image,
    )


@torch.no_grad()
def cached_forward(
    transformer: WanTransformer3DModel,
    target_input: torch.Tensor,
    timestep: torch.Tensor,
    cache: ContextKVCache,
) -> torch.Tensor:
    """The transformer's output for the target latent frames only, reusing the context K/V.

    Args:
        target_input: model input of the target latent frames (B, in_channels, L - Lc, h, w).
        timestep: the target's timestep, a scalar or (B,).
        cache: from `extract_context_cache` for the same branch (text) and context.

    Returns: (B, out_channels, L - Lc, h, w), what `transformer(...)` returns for those frames in
    block-causal mode with per-token timestep 0 on the context.
    """
    processors = _require_processors(transformer)
    batch, _, frames, height, width = target_input.shape
    p_t, p_h, p_w = transformer.config.patch_size
    if cache.layers[0][0].shape[0] != batch:
        raise ValueError(f"the cache holds batch {cache.layers[0][0].shape[0]}, the target batch {batch}")

    # RoPE of the whole sequence (it only reads the shape), target positions only.
    whole = target_input.new_empty((1, 1, cache.context_latent_frames + frames, height, width))
    freqs_cos, freqs_sin = transformer.rope(whole)
    n = cache.num_context_tokens
    rotary_emb = (freqs_cos[:, n:], freqs_sin[:, n:])

    hidden_states = _embed(transformer, target_input)
    timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep.reshape(batch)
    temb, timestep_proj, text = _conditioning(
        transformer, timestep, cache.encoder_hidden_states, cache.encoder_hidden_states_image
    )
    hidden_states = _run_blocks(
        transformer, processors, "cached", hidden_states, text, timestep_proj, rotary_emb, cache.layers
    )

    # Output norm, projection and unpatchify, as in WanTransformer3DModel.forward.
    shift, scale = (transformer.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    hidden_states = (transformer.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
    hidden_states = transformer.proj_out(hidden_states)
    hidden_states = hidden_states.reshape(
        batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1
    )
    hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)
