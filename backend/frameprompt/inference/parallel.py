"""Multi-GPU inference for one job: diffusers' context parallelism (Ulysses) in stock attention mode.

Every rank holds the whole model and runs the same denoising loop; inside each transformer block the
token sequence is split across ranks and attention exchanges heads with an all-to-all (Ulysses), so
one job's activations and attention are spread over the GPUs. Launch one process per GPU:

    torchrun --nproc-per-node 4 -m frameprompt generate --context-parallel --model M ...

Only rank 0 writes the result. Cache mode (block-causal attention with a cached context) does not
combine with it: both shard or split the same token axis (docs/performance.md, section 4).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from unittest import mock

import torch
import torch.distributed as dist

from frameprompt.errors import IncompatibleModelError, InputError
from frameprompt.inference.context_cache import trained_with_context_cache
from frameprompt.method import SequenceLayout


@dataclass(frozen=True)
class Distributed:
    """This process's place in a `torchrun` launch."""

    rank: int
    world_size: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """The number of processes `torchrun` started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str | None = None) -> Distributed:
    """Join the process group `torchrun` set up: NCCL on CUDA (one GPU per local rank), gloo on CPU."""
    if launched_world_size() < 2:
        raise InputError(
            "context parallelism needs several processes, one per GPU",
            "launch with: torchrun --nproc-per-node <GPUs> -m frameprompt generate --context-parallel ...",
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), f"cuda:{local_rank}" if use_cuda else "cpu")


@contextlib.contextmanager
def _device_count_for_cpu() -> Iterator[None]:
    # diffusers 0.42 picks each rank's device as `rank % torch.accelerator.device_count()`, which
    # divides by zero without an accelerator; on CPU (gloo) every rank's device is "cpu" anyway.
    if torch.accelerator.device_count() > 0:
        yield
        return
    with mock.patch.object(torch.accelerator, "device_count", lambda: 1):
        yield


def enable_context_parallel(pipe, world_size: int) -> None:
    """Shard the pipeline transformer's attention over `world_size` ranks (Ulysses degree = world size).

    Raises IncompatibleModelError for a model trained in cache mode and InputError when the heads do not
    split evenly over the ranks."""
    from diffusers import ContextParallelConfig

    transformer = pipe.transformer
    if trained_with_context_cache(transformer):
        raise IncompatibleModelError(
            "this model was trained in cache mode (block-causal attention), which does not combine with "
            "context parallelism",
            "run it on one GPU (the cache already roughly halves the denoising time)",
        )
    heads = transformer.config.num_attention_heads
    if heads % world_size:
        divisors = [d for d in range(2, heads + 1) if heads % d == 0]
        raise InputError(
            f"{heads} attention heads do not split over {world_size} processes",
            f"use a process count that divides {heads}: {', '.join(map(str, divisors))}",
        )
    # the native (SDPA) backend is the one every install has and Ulysses supports
    transformer.set_attention_backend("native")
    with _device_count_for_cpu():
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world_size))


def check_token_split(pipe, height: int, width: int, world_size: int) -> None:
    """Each latent frame's tokens must split evenly over the ranks (diffusers shards the sequence in equal
    parts); then every window length works. Raises InputError (with sizes that work) otherwise."""
    frames, _ = SequenceLayout.multiples_for(pipe.vae, pipe.transformer)
    layout = SequenceLayout.for_models(frames, height, width, pipe.vae, pipe.transformer)
    per_frame = layout.tokens_per_latent_frame
    if per_frame % world_size:
        step = layout.spatial_factor * layout.patch_size[1]
        raise InputError(
            f"at {width}x{height} a latent frame has {per_frame} tokens, which do not split over "
            f"{world_size} processes",
            f"choose a size whose token grid ({width // step} x {height // step}, {step} px per token) "
            f"has a multiple of {world_size} tokens, or another process count",
        )
