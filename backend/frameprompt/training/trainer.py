"""The FramePrompt fine-tuning loop: LoRA (default) or full, on one GPU or many through accelerate.

    data set -> validate -> latent cache (frozen VAE / CLIP / text, once) -> transformer-only steps

One step (Section 3.3 of the paper, all indices from `frameprompt.method`):
    sigma ~ shifted U(0,1); x_t = clean context | (1-sigma) x0 + sigma eps on the target
    v = transformer([x_t, M, cond], 1000 sigma, text, clip);  loss = MSE(v, eps - x0) on the target

Exact resume: model (or LoRA) + optimizer + LR scheduler + accelerate's RNG states are saved with
`accelerator.save_state` into a temporary folder that is renamed into place only when complete; the
data order is a seeded permutation per epoch and the noise of every micro-batch is drawn from a
generator seeded with (seed, micro-batch index, process), so a resumed run sees the same batches
and the same noise as an uninterrupted one.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from frameprompt import method
from frameprompt.errors import FramePromptError, IncompatibleModelError
from frameprompt.method import SequenceLayout
from frameprompt.training.data import (
    CachedClips,
    ClipInfo,
    LatentCache,
    atomic_write_text,
    build_latent_cache,
    load_dataset,
    module_fingerprint,
)
from frameprompt.training.lora import LORA_FILE, add_lora, save_lora

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.csv"
LOSS_PLOT = "loss.png"
TRAINING_INFO = "frameprompt_training.json"
FULL_MODEL_DIR = "model"
EMA_MODEL_DIR = "model_ema"
LOG_FIELDS = ["step", "epoch", "loss", "lr", "sigma_mean", "seconds"]
Objective = Literal["frameprompt", "image_to_video"]


class DiskFullError(FramePromptError, OSError):
    code = "disk_full"


class CheckpointError(FramePromptError, ValueError):
    code = "bad_checkpoint"


@dataclass
class TrainConfig:
    """Everything `frameprompt finetune` can set; saved with every checkpoint."""

    data: str
    out: str
    model: str | None = None
    full: bool = False
    lora_rank: int = 128
    lora_alpha: float = 128.0
    loss: method.LossMode = "target"
    # "image_to_video": Stage 1, the plain I2V pretraining FramePrompt starts from (no skeleton)
    objective: Objective = "frameprompt"
    ema_decay: float = 0.0  # > 0: keep an EMA of the weights (full training) and write it as model_ema/
    max_steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float | None = None  # default 1e-4 for LoRA, 1e-5 for --full
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    flow_shift: float = 3.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    resume: bool = False
    mixed_precision: str | None = None  # None: bf16 on CUDA, no elsewhere
    gradient_checkpointing: bool = True
    cache_dir: str | None = None  # default: <out>/latent_cache
    latent_zero_condition: bool = False
    # block-causal attention + per-token timesteps, so the model can later run with a reused context KV cache
    context_cache: bool = False
    num_workers: int = 0
    progress: bool = True

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if self.full else 1e-4

    def compatibility(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint."""
        return {
            "full": self.full,
            "lora_rank": None if self.full else self.lora_rank,
            "lora_alpha": None if self.full else self.lora_alpha,
            "loss": self.loss,
            "objective": self.objective,
            "ema_decay": self.ema_decay,
            "latent_zero_condition": self.latent_zero_condition,
            "context_cache": self.context_cache,
            "batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "seed": self.seed,
        }


@dataclass
class TrainResult:
    output: Path  # the LoRA file or the full model folder
    steps: int
    losses: list[float] = field(default_factory=list)
    log_file: Path | None = None
    plot_file: Path | None = None
    is_main_process: bool = True


class EpochPermutation(torch.utils.data.Sampler):
    """A seeded permutation per epoch; the epoch is set by the trainer only (accelerate's own
    `set_epoch` calls count iterations and would break resume, so this class does not define it)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def _micro_batch_generator(seed: int, micro_step: int, process: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 4099 + process)


def training_loss(
    transformer: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    layout: SequenceLayout,
    generator: torch.Generator,
    loss_mode: method.LossMode = "target",
    flow_shift: float = 3.0,
    per_token_timesteps: bool = False,
    objective: Objective = "frameprompt",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FramePrompt training loss on a batch of cached latents; returns (loss, sigmas).

    With objective="image_to_video" the skeleton latents are dropped: `[reference | target]`, the
    plain I2V task. Noise and sigmas are drawn on the CPU from `generator` so runs are reproducible
    across devices.
    """
    x0, condition = batch["x0"], batch["condition"]
    if objective == "image_to_video":
        x0, condition = method.drop_skeleton(x0, layout), method.drop_skeleton(condition, layout)
        layout = layout.without_skeleton()
    b = x0.shape[0]
    sigmas = method.sample_sigmas(b, shift=flow_shift, generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    sigmas_d = sigmas.to(x0.device)
    x_t = method.noise_target(x0, noise, sigmas_d, layout, mode=loss_mode)
    mask = method.build_context_mask(layout, b, device=x0.device, dtype=x0.dtype)
    timestep = method.timestep_for(sigmas_d * 1000.0, layout, b, per_token=per_token_timesteps)
    prediction = transformer(
        hidden_states=method.model_input(x_t, mask, condition),
        timestep=timestep,
        encoder_hidden_states=batch["text"],
        encoder_hidden_states_image=batch.get("image"),
        return_dict=False,
    )[0]
    return method.frameprompt_loss(prediction, x0, noise, layout, mode=loss_mode), sigmas


# --- checkpoints -------------------------------------------------------------------------------
def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under <out>/checkpoints (None if there is none)."""
    root = Path(out) / CHECKPOINT_DIR
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    complete = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return complete[-1] if complete else None


def _is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(error) or "disk quota" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


@dataclass
class _LoopState:
    """Where the training loop stands; `step` counts optimizer steps, `micro_step` micro-batches."""

    step: int
    micro_step: int
    epoch: int
    batches_per_epoch: int
    started: float = 0.0  # time.perf_counter() when the loop began, for the log's seconds
    accumulated: float = 0.0  # loss summed over the current accumulation group
    losses: list[float] = field(default_factory=list)

    def resume_epoch(self) -> int:
        """The epoch a run resumed here continues in: the next one once this epoch's batches are used up."""
        if self.micro_step - self.epoch * self.batches_per_epoch >= self.batches_per_epoch:
            return self.epoch + 1
        return self.epoch


class Trainer:
    """Builds everything from a `TrainConfig`; `run()` trains and writes the result."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.out = Path(config.out)

    # ---- setup --------------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        mixed = self.config.mixed_precision
        if mixed is None:
            mixed = "bf16" if torch.cuda.is_available() else "no"
        return Accelerator(
            cpu=not torch.cuda.is_available(),  # lets torchrun on CPU machines form a gloo group
            mixed_precision=mixed,
            gradient_accumulation_steps=self.config.gradient_accumulation_steps,
            project_config=ProjectConfiguration(project_dir=str(self.out), automatic_checkpoint_naming=False),
        )

    def _load_pipeline(self, device: torch.device):
        from frameprompt.loading import load_pipeline

        # LoRA on a GPU: frozen base in bf16 (LoRA weights stay float32); full: float32 master weights.
        dtype = torch.bfloat16 if (device.type == "cuda" and not self.config.full) else torch.float32
        return load_pipeline(self.config.model, device=str(device), dtype=dtype, load_text_encoder=True)

    def _setup(self) -> None:
        from accelerate.utils import set_seed

        c = self.config
        if c.loss not in ("target", "all"):
            raise ValueError(f"--loss must be 'target' or 'all', got {c.loss!r}")
        self.accelerator = self._accelerator()
        set_seed(c.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        pipe = self._load_pipeline(self.accelerator.device)
        self.cache: LatentCache = self._build_cache(pipe, self._load_clips(pipe))
        self.layout = SequenceLayout.for_models(
            self.cache.num_frames, self.cache.height, self.cache.width, pipe.vae, pipe.transformer
        )
        # Taken before LoRA or training touch the weights: it identifies the base model on resume.
        self.base_fingerprint = module_fingerprint(pipe.transformer)
        self.pipe = pipe
        self._offload_frozen_encoders(pipe)
        transformer = self._prepare_transformer(pipe.transformer)
        self.trainable = [p for p in transformer.parameters() if p.requires_grad]
        self._prepare_with_accelerator(transformer)
        self._setup_ema()

    def _load_clips(self, pipe: Any) -> list[ClipInfo]:
        """The data set, validated against the VAE's frame and pixel multiples; at least one batch."""
        acc = self.accelerator
        clips = load_dataset(self.config.data, *SequenceLayout.multiples_for(pipe.vae, pipe.transformer))
        if len(clips) < self.config.batch_size * acc.num_processes:
            raise FramePromptError(
                f"the data set has {len(clips)} clip(s), fewer than one batch "
                f"({self.config.batch_size} x {acc.num_processes} process(es))",
                "render more clips or lower --batch-size",
            )
        return clips

    def _build_cache(self, pipe: Any, clips: list[ClipInfo]) -> LatentCache:
        c, acc = self.config, self.accelerator
        cache_dir = Path(c.cache_dir) if c.cache_dir else self.out / "latent_cache"
        # The main process encodes and writes the cache first; the others then read what it wrote.
        with acc.main_process_first():
            return build_latent_cache(
                pipe,
                clips,
                cache_dir,
                latent_zero_condition=c.latent_zero_condition,
                progress=self._bar("encoding clips") if acc.is_main_process else None,
                write=acc.is_main_process,
            )

    @staticmethod
    def _offload_frozen_encoders(pipe: Any) -> None:
        # Their work went into the latent cache: free their memory, only the transformer trains.
        pipe.vae.to("cpu")
        for name in ("image_encoder", "text_encoder"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to("cpu")

    def _prepare_transformer(self, transformer: Any) -> Any:
        """Trainable weights (all of them, or LoRA adapters), attention mode, checkpointing, train mode."""
        c = self.config
        transformer.requires_grad_(False)
        if c.full:
            self._make_fully_trainable(transformer)
        else:
            self._add_trainable_lora(transformer)
        if c.context_cache:
            self._enable_context_cache(transformer)
        if c.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        return transformer

    @staticmethod
    def _make_fully_trainable(transformer: torch.nn.Module) -> None:
        # Full training keeps float32 master weights: bf16 updates would round small steps away.
        if transformer.dtype != torch.float32:
            transformer.to(torch.float32)
        transformer.requires_grad_(True)

    def _add_trainable_lora(self, transformer: torch.nn.Module) -> None:
        add_lora(transformer, rank=self.config.lora_rank, alpha=self.config.lora_alpha)
        # The frozen base may be bf16; the adapters train in float32 for the same rounding reason.
        for param in transformer.parameters():
            if param.requires_grad:
                param.data = param.data.float()

    def _prepare_with_accelerator(self, transformer: torch.nn.Module) -> None:
        """Optimizer, LR schedule and data loader, wrapped by accelerate together with the model."""
        acc = self.accelerator
        optimizer = torch.optim.AdamW(
            self.trainable, lr=self.config.lr, weight_decay=self.config.weight_decay
        )
        scheduler = self._lr_scheduler(optimizer)
        loader = self._data_loader()
        self.transformer, self.optimizer, self.loader, self.scheduler = acc.prepare(
            transformer, optimizer, loader, scheduler
        )
        if not self.config.full:
            # LoRA checkpoints hold the adapters only, not a copy of the frozen base.
            acc.register_save_state_pre_hook(self._save_lora_hook)
            acc.register_load_state_pre_hook(self._load_lora_hook)

    def _lr_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        from diffusers.optimization import get_scheduler

        c, processes = self.config, self.accelerator.num_processes
        # accelerate steps a prepared scheduler once per process for every optimizer step.
        return get_scheduler(
            c.lr_scheduler,
            optimizer,
            num_warmup_steps=c.warmup_steps * processes,
            num_training_steps=c.max_steps * processes,
        )

    def _data_loader(self) -> torch.utils.data.DataLoader:
        c = self.config
        self.sampler = EpochPermutation(len(self.cache.names), c.seed)
        return torch.utils.data.DataLoader(
            CachedClips(self.cache),
            batch_size=c.batch_size,
            sampler=self.sampler,
            collate_fn=_collate,
            num_workers=c.num_workers,
            drop_last=True,
        )

    def _setup_ema(self) -> None:
        c = self.config
        self.ema = None
        if c.ema_decay <= 0:
            return
        if not c.full:
            raise FramePromptError("--ema-decay needs --full", "drop --ema-decay for LoRA training")
        from diffusers.training_utils import EMAModel

        self.ema = EMAModel(self.trainable, decay=c.ema_decay, foreach=False)
        # Saved and restored with every checkpoint, so a resumed average continues exactly.
        self.accelerator.register_for_checkpointing(self.ema)

    def _enable_context_cache(self, transformer) -> None:
        try:
            from frameprompt.inference import context_cache
        except ImportError as error:
            raise FramePromptError(
                "--context-cache needs frameprompt.inference.context_cache, which this build does not have",
                "train without --context-cache",
            ) from error
        context_cache.enable_block_causal_attention(transformer, self.layout.context_tokens)

    def _bar(self, description: str):
        def wrap(items):
            from tqdm.auto import tqdm

            return tqdm(items, desc=description, disable=not self.config.progress, leave=False)

        return wrap

    # ---- LoRA-only checkpoint hooks -------------------------------------------------------------
    def _save_lora_hook(self, models: list, weights: list, output_dir: str) -> None:
        if self.accelerator.is_main_process:
            for model in models:
                save_lora(self.accelerator.unwrap_model(model), output_dir)
        weights.clear()  # the frozen base is not written into checkpoints

    def _load_lora_hook(self, models: list, input_dir: str) -> None:
        from peft import set_peft_model_state_dict

        while models:
            model = self.accelerator.unwrap_model(models.pop())
            state = load_file(str(Path(input_dir) / LORA_FILE))
            state = {k.removeprefix("transformer."): v for k, v in state.items()}
            result = set_peft_model_state_dict(model, state, adapter_name="default")
            unexpected = list(getattr(result, "unexpected_keys", []) or [])
            if unexpected:
                raise IncompatibleModelError(
                    f"the checkpoint's LoRA does not fit this base model ({len(unexpected)} unexpected "
                    f"weights, e.g. {unexpected[:2]})",
                    "resume with the --model the checkpoint was trained on",
                )

    # ---- checkpoints ----------------------------------------------------------------------------
    def _state(self, step: int, micro_step: int, epoch: int) -> dict[str, Any]:
        return {
            "step": step,
            "micro_step": micro_step,
            "epoch": epoch,
            "base_model": str(self.config.model),
            "base_fingerprint": self.base_fingerprint,
            "layout": {
                "num_frames": self.layout.num_frames,
                "width": self.layout.width,
                "height": self.layout.height,
            },
            "compatibility": self.config.compatibility(),
            "config": asdict(self.config),
        }

    def save_checkpoint(self, step: int, micro_step: int, epoch: int) -> Path:
        """accelerate save_state into a temp folder, then rename: a checkpoint is complete or absent."""
        acc = self.accelerator
        root = self.out / CHECKPOINT_DIR
        tmp, final = root / f".tmp-step-{step:08d}", root / f"step-{step:08d}"
        previous = latest_checkpoint(self.out)
        if acc.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        try:
            acc.save_state(str(tmp))
            if acc.is_main_process:
                atomic_write_text(
                    tmp / STATE_FILE, json.dumps(self._state(step, micro_step, epoch), indent=1)
                )
            acc.wait_for_everyone()
            if acc.is_main_process:
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                atomic_write_text(root / LATEST_FILE, final.name)
        except Exception as error:  # OSError, RuntimeError, SafetensorError...: never leave a half checkpoint
            if acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            kept = (
                f"the previous checkpoint {previous.name} is kept"
                if previous
                else "no earlier checkpoint exists"
            )
            if _is_disk_full(error):
                raise DiskFullError(
                    f"disk full while writing the checkpoint for step {step} under {root}; {kept}",
                    "free space (or pass --out on a larger disk) and run again with --resume",
                ) from error
            raise CheckpointError(
                f"could not write the checkpoint for step {step} ({error}); {kept}"
            ) from error
        if acc.is_main_process:
            complete = sorted(p for p in root.glob("step-*") if p.is_dir())
            for old in complete[: max(0, len(complete) - self.config.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def _resume(self) -> tuple[int, int, int]:
        checkpoint = latest_checkpoint(self.out)
        if checkpoint is None:
            raise CheckpointError(
                f"--resume: no checkpoint under {self.out / CHECKPOINT_DIR}",
                "run without --resume to start, or pass the --out of the interrupted run",
            )
        state = json.loads((checkpoint / STATE_FILE).read_text())
        if state.get("base_fingerprint") != self.base_fingerprint:
            raise IncompatibleModelError(
                f"checkpoint {checkpoint} was trained on a different base model ({state.get('base_model')})",
                "resume with the same --model as the interrupted run",
            )
        mine, theirs = self.config.compatibility(), state.get("compatibility", {})
        differing = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        layout = {
            "num_frames": self.layout.num_frames,
            "width": self.layout.width,
            "height": self.layout.height,
        }
        if state.get("layout") != layout:
            differing["layout"] = (state.get("layout"), layout)
        if differing:
            what = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differing.items())
            raise IncompatibleModelError(
                f"--resume: settings differ from checkpoint {checkpoint.name} ({what})",
                "resume with the settings of the interrupted run",
            )
        self.accelerator.load_state(str(checkpoint))
        return int(state["step"]), int(state["micro_step"]), int(state["epoch"])

    # ---- logging --------------------------------------------------------------------------------
    def _open_log(self, start_step: int) -> None:
        path = self.out / LOG_FILE
        rows: list[dict[str, str]] = []
        if start_step > 0 and path.is_file():
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= start_step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.log_rows = [(int(r["step"]), float(r["loss"])) for r in rows]

    def _log(self, row: dict[str, Any]) -> None:
        with (self.out / LOG_FILE).open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=LOG_FIELDS).writerow(row)
        self.log_rows.append((int(row["step"]), float(row["loss"])))

    def plot_losses(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [s for s, _ in self.log_rows]
        losses = [v for _, v in self.log_rows]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
        if len(losses) >= 10:
            k = max(2, len(losses) // 20)
            smooth = [
                sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
                for i in range(len(losses))
            ]
            ax.plot(steps, smooth, lw=1.5, label=f"mean of {k}")
        ax.set_xlabel("step")
        ax.set_ylabel(f"MSE ({self.config.loss})")
        ax.set_yscale("log" if losses and min(losses) > 0 else "linear")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.out / LOSS_PLOT
        fig.savefig(path)
        plt.close(fig)
        return path

    # ---- result ---------------------------------------------------------------------------------
    def _training_info(self, step: int) -> dict[str, Any]:
        return {
            "format": "frameprompt-training/1",
            "kind": "full" if self.config.full else "lora",
            "base_model": str(self.config.model),
            "base_fingerprint": self.base_fingerprint,
            "steps": step,
            "lora_rank": None if self.config.full else self.config.lora_rank,
            "lora_alpha": None if self.config.full else self.config.lora_alpha,
            "loss": self.config.loss,
            "objective": self.config.objective,
            "num_frames": self.layout.num_frames,
            "width": self.layout.width,
            "height": self.layout.height,
            "flow_shift": self.config.flow_shift,
            "latent_zero_condition": self.config.latent_zero_condition,
            # Inference must match: block-causal attention and per-token timesteps, or neither.
            "context_cache": self.config.context_cache,
            "attention": "block_causal" if self.config.context_cache else "full",
            "timesteps": "per_token" if self.config.context_cache else "per_sample",
        }

    def _write_result(self, step: int) -> Path:
        acc = self.accelerator
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.transformer)
        output = self.out / (FULL_MODEL_DIR if self.config.full else LORA_FILE)
        if acc.is_main_process:
            info = self._training_info(step)
            if self.config.full:
                if self.config.context_cache:
                    from frameprompt.inference.context_cache import mark_trained_with_context_cache

                    mark_trained_with_context_cache(model)
                self.pipe.transformer = model
                self._save_full_model(output, info)
                if self.ema is not None:
                    # the averaged weights go out as a second model; the live ones continue training
                    self.ema.store(self.trainable)
                    self.ema.copy_to(self.trainable)
                    self._save_full_model(self.out / EMA_MODEL_DIR, {**info, "ema_decay": self.ema.decay})
                    self.ema.restore(self.trainable)
            else:
                save_lora(model, self.out)
            atomic_write_text(self.out / TRAINING_INFO, json.dumps(info, indent=1))
        acc.wait_for_everyone()
        return output

    def _save_full_model(self, output: Path, info: dict[str, Any]) -> None:
        """The whole pipeline with the trained transformer, written to a temp folder and renamed."""
        tmp = output.parent / f".tmp-{output.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.pipe.save_pretrained(tmp)
        atomic_write_text(tmp / TRAINING_INFO, json.dumps(info, indent=1))
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)

    # ---- loop -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self._setup()
        acc = self.accelerator
        step, micro_step, epoch = self._starting_point()
        loop = _LoopState(step, micro_step, epoch, self._batches_per_epoch())
        # A resumed run continues mid-epoch: skip the batches of this epoch it has already trained on.
        skip = loop.micro_step - loop.epoch * loop.batches_per_epoch
        bar = self._progress_bar(loop.step)
        loop.started = time.perf_counter()
        while loop.step < self.config.max_steps:
            if self._train_epoch(loop, skip, bar):
                break
            loop.epoch += 1
            skip = 0
        bar.close()
        output = self._write_result(loop.step)
        plot = self.plot_losses() if acc.is_main_process else None
        acc.end_training()
        return TrainResult(output, loop.step, loop.losses, self.out / LOG_FILE, plot, acc.is_main_process)

    def _starting_point(self) -> tuple[int, int, int]:
        """(step, micro_step, epoch) to start from: zeros, or the latest checkpoint's with --resume."""
        step = micro_step = epoch = 0
        if self.config.resume:
            step, micro_step, epoch = self._resume()
        if self.accelerator.is_main_process:
            self._open_log(step)
        return step, micro_step, epoch

    def _batches_per_epoch(self) -> int:
        batches = len(self.loader)
        if batches == 0:
            raise FramePromptError("the data loader yields no batch", "lower --batch-size")
        return batches

    def _progress_bar(self, initial: int) -> Any:
        from tqdm.auto import tqdm

        c = self.config
        return tqdm(
            total=c.max_steps,
            initial=initial,
            desc="finetune",
            disable=not (c.progress and self.accelerator.is_main_process),
            dynamic_ncols=True,
        )

    def _train_epoch(self, loop: _LoopState, skip: int, bar: Any) -> bool:
        """Train on the rest of `loop.epoch` after its first `skip` batches; True once max_steps is done."""
        acc = self.accelerator
        self.sampler.use_epoch(loop.epoch)
        loader = acc.skip_first_batches(self.loader, skip) if skip else self.loader
        for batch in loader:
            loss, sigmas = self._train_micro_batch(batch, loop)
            loop.micro_step += 1
            loop.accumulated += self._mean_loss(loss) / self.config.gradient_accumulation_steps
            if not acc.sync_gradients:  # mid-accumulation: the optimizer step is not done yet
                continue
            loop.step += 1
            loop.losses.append(loop.accumulated)
            self._log_step(loop, sigmas)
            bar.set_postfix(loss=f"{loop.accumulated:.4f}")
            bar.update()
            loop.accumulated = 0.0
            self._maybe_checkpoint(loop)
            if loop.step >= self.config.max_steps:
                return True
        return False

    def _train_micro_batch(
        self, batch: dict[str, torch.Tensor], loop: _LoopState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward on one micro-batch; accelerate applies the update on the last of each
        accumulation group. Returns (loss, sigmas)."""
        c, acc = self.config, self.accelerator
        # Seeded by the micro-batch index, not drawn from a running generator: a resumed run gets the
        # same noise as an uninterrupted one.
        generator = _micro_batch_generator(c.seed, loop.micro_step, acc.process_index)
        with acc.accumulate(self.transformer):
            loss, sigmas = training_loss(
                self.transformer,
                batch,
                self.layout,
                generator,
                loss_mode=c.loss,
                flow_shift=c.flow_shift,
                per_token_timesteps=c.context_cache,
                objective=c.objective,
            )
            if not torch.isfinite(loss):
                raise FramePromptError(
                    f"the loss became {loss.item()} at step {loop.step + 1}",
                    "lower --learning-rate, or resume from the last checkpoint",
                )
            acc.backward(loss)
            if acc.sync_gradients and c.max_grad_norm > 0:
                acc.clip_grad_norm_(self.trainable, c.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None and acc.sync_gradients:
                self.ema.step(self.trainable)
        return loss, sigmas

    def _mean_loss(self, loss: torch.Tensor) -> float:
        """The micro-batch loss averaged over all processes, so every process logs the same value."""
        return self.accelerator.gather(loss.detach().float().reshape(1)).mean().item()

    def _log_step(self, loop: _LoopState, sigmas: torch.Tensor) -> None:
        if not self.accelerator.is_main_process:
            return
        self._log(
            {
                "step": loop.step,
                "epoch": loop.epoch,
                "loss": f"{loop.accumulated:.6g}",
                "lr": f"{self.scheduler.get_last_lr()[0]:.6g}",
                "sigma_mean": f"{sigmas.mean().item():.4f}",
                "seconds": f"{time.perf_counter() - loop.started:.2f}",
            }
        )

    def _maybe_checkpoint(self, loop: _LoopState) -> None:
        c = self.config
        if loop.step % c.checkpoint_every != 0 and loop.step != c.max_steps:
            return
        self.save_checkpoint(loop.step, loop.micro_step, loop.resume_epoch())
        if self.accelerator.is_main_process:
            self.plot_losses()


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune as configured; see `TrainConfig` and docs/training.md."""
    return Trainer(config).run()


def steps_per_epoch(num_clips: int, batch_size: int, processes: int = 1, accumulation: int = 1) -> int:
    return max(1, math.floor(num_clips / (batch_size * processes)) // accumulation)
