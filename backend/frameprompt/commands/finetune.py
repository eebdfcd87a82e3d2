"""frameprompt finetune: teach a model a character from a rendered data set (LoRA or full)."""

from __future__ import annotations

import argparse
import sys

from frameprompt.errors import FramePromptError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="data set folder (one sub-folder per clip, see docs/dataset.md)"
    )
    parser.add_argument(
        "--model", help="base model folder (Wan2.1 I2V diffusers or original layout); default: embedded"
    )
    parser.add_argument(
        "--out", required=True, help="output folder: LoRA file or model/, checkpoints/, log, plot"
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--full", action="store_true", help="train every transformer weight instead of a LoRA")
    parser.add_argument("--lora-rank", type=int, default=128, help="LoRA rank (default 128, as in the paper)")
    parser.add_argument("--lora-alpha", type=float, default=128.0, help="LoRA alpha (default 128)")
    parser.add_argument(
        "--loss",
        choices=["target", "all"],
        default="target",
        help="target: noise and supervise the N target frames only (paper default); all: every frame",
    )
    parser.add_argument(
        "--objective",
        choices=["frameprompt", "image-to-video"],
        default="frameprompt",
        help="frameprompt (default); image-to-video: Stage 1, plain I2V pretraining (reference -> "
        "targets, skeletons ignored) for a model trained from scratch",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="with --full: also keep an exponential moving average of the weights (e.g. 0.999), "
        "written as <out>/model_ema",
    )
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per GPU and micro-step (default 1)")
    parser.add_argument(
        "--grad-accum", type=int, default=1, help="gradient accumulation micro-steps (default 1)"
    )
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4 LoRA, 1e-5 --full)")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--lr-scheduler", default="constant_with_warmup", help="diffusers get_scheduler name")
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of weights, data order and noise (default 42)"
    )
    parser.add_argument(
        "--flow-shift", type=float, default=3.0, help="sigma shift of the training noise (default 3)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=250, help="steps between checkpoints (default 250)"
    )
    parser.add_argument(
        "--keep-checkpoints", type=int, default=2, help="how many checkpoints to keep (default 2)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        help="default: bf16 on CUDA, no on CPU (accelerate)",
    )
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="faster, more memory")
    parser.add_argument("--cache-dir", help="latent cache folder (default <out>/latent_cache)")
    parser.add_argument(
        "--latent-zero-condition",
        action="store_true",
        help="zeros in latent space for the target's condition latents (default: encoded zero pixels)",
    )
    parser.add_argument(
        "--context-cache",
        action="store_true",
        help="train for the exact context K/V cache: block-causal attention + timestep 0 on the context",
    )
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace):
    from frameprompt.training.trainer import TrainConfig

    return TrainConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        full=args.full,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        loss=args.loss,
        objective=args.objective.replace("-", "_"),
        ema_decay=args.ema_decay,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        flow_shift=args.flow_shift,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        cache_dir=args.cache_dir,
        latent_zero_condition=args.latent_zero_condition,
        context_cache=args.context_cache,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from frameprompt.training.trainer import train

    try:
        result = train(config_from_args(args))
    except FramePromptError as error:
        print(f"frameprompt finetune: {error}", file=sys.stderr)
        return 2
    if not result.is_main_process:
        return 0
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    print(f"trained {result.steps} steps{last}; result: {result.output}")
    print(f"log: {result.log_file}  loss curve: {result.plot_file}")
    return 0
