"""Training data sets: the clip folder format, an up-front validator, and the latent cache.

A data set is a folder with one sub-folder per clip (see docs/dataset.md):

    DATA/<clip>/meta.json                 {"fps", "width", "height", "num_frames", "source"[, "prompt"]}
    DATA/<clip>/reference.png             the character, width x height
    DATA/<clip>/pose/0000_keypoints.json  OpenPose JSON, one per frame (or one clip file pose.json)
    DATA/<clip>/skeleton/0000.png         optional: drawn from the JSON when absent
    DATA/<clip>/target/0000.png           the N frames the model learns to generate

`validate_dataset` checks every clip before training and lists every bad clip with its reason;
`build_latent_cache` runs the frozen VAE / CLIP / text encoder once per clip and stores the results as
safetensors, so a training step only runs the transformer.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file

from frameprompt.errors import FramePromptError
from frameprompt_blender.core.dataset_format import (
    META_FILE,
    NUM_KEYPOINTS,
    POSE_CLIP_FILE,
    POSE_DIR,
    REFERENCE_FILE,
    SKELETON_DIR,
    TARGET_DIR,
    write_meta,
)
from frameprompt_blender.core.frame_names import frame_name, pose_file_name

CACHE_MANIFEST = "manifest.json"
NULL_TEXT_FILE = "null_text.safetensors"
CACHE_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class DatasetError(FramePromptError, ValueError):
    """The data set is empty or holds bad clips; `problems` lists (clip, reason) for every one."""

    code = "bad_dataset"

    def __init__(self, message: str, hint: str = "", problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message, hint)
        self.problems = list(problems or [])


@dataclass(frozen=True)
class ClipInfo:
    """One valid clip folder."""

    name: str
    path: Path
    num_frames: int
    width: int
    height: int
    fps: float
    source: str
    prompt: str | None
    target_files: tuple[Path, ...]
    skeleton_files: tuple[Path, ...]  # empty: draw from pose_source
    pose_source: Path | None  # pose/ folder or pose.json


@dataclass
class DatasetReport:
    """What `validate_dataset` found: the good clips and (clip, reason) for every bad one."""

    root: Path
    clips: list[ClipInfo] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.clips) and not self.problems

    def describe(self) -> str:
        lines = [f"{self.root}: {len(self.clips)} valid clip(s), {len(self.problems)} bad"]
        lines += [f"  {clip}: {reason}" for clip, reason in self.problems]
        return "\n".join(lines)


def _frame_files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


def _gaps(files: list[Path], expected: int, suffix: str = "") -> list[int]:
    """Missing indices among files named 0000<suffix>.ext ... (<expected> of them)."""
    found = set()
    for f in files:
        stem = f.name.split(".")[0]
        stem = stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem
        if stem.isdigit():
            found.add(int(stem))
    return [i for i in range(expected) if i not in found]


def _image_size(path: Path) -> tuple[int, int] | str:
    try:
        with PIL.Image.open(path) as image:
            return image.size
    except (OSError, PIL.Image.DecompressionBombError) as error:
        return f"{path.name} is not a readable image ({error.__class__.__name__})"


def _read_poses(source: Path) -> list[Any]:
    from frameprompt_blender.core.openpose_json import read_pose_folder, read_pose_json

    return list(read_pose_json(source) if source.is_file() else read_pose_folder(source))


def _check_clip(path: Path, temporal_factor: int, spatial_multiple: int) -> ClipInfo | list[str]:
    reasons: list[str] = []
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return [f"{META_FILE} is missing"]
    try:
        meta = json.loads(meta_path.read_text())
        width, height, n = int(meta["width"]), int(meta["height"]), int(meta["num_frames"])
        fps = float(meta.get("fps", 16))
    except (ValueError, KeyError, TypeError) as error:
        return [f"{META_FILE} is unreadable or lacks width/height/num_frames ({error})"]
    if n < temporal_factor or n % temporal_factor:
        reasons.append(
            f"num_frames {n} is not a positive multiple of the VAE's temporal factor {temporal_factor}"
        )
    if width % spatial_multiple or height % spatial_multiple:
        reasons.append(f"size {width}x{height} is not a multiple of {spatial_multiple}")

    reference = path / REFERENCE_FILE
    if not reference.is_file():
        reasons.append(f"{REFERENCE_FILE} is missing")
    else:
        size = _image_size(reference)
        if isinstance(size, str):
            reasons.append(size)
        elif size != (width, height):
            reasons.append(f"{REFERENCE_FILE} is {size[0]}x{size[1]}, meta.json says {width}x{height}")

    def check_frames(folder: Path, label: str) -> list[Path]:
        files = _frame_files(folder) if folder.is_dir() else []
        if not folder.is_dir():
            reasons.append(f"{label}/ is missing")
            return []
        if len(files) != n:
            missing = _gaps(files, n)
            detail = (
                f" (missing {', '.join(f'{i:04d}' for i in missing[:5])}{'...' if len(missing) > 5 else ''})"
            )
            reasons.append(f"{label}/ has {len(files)} frames, expected {n}{detail if missing else ''}")
        bad_sizes = []
        for f in files:
            size = _image_size(f)
            if isinstance(size, str):
                reasons.append(f"{label}/{size}")
            elif size != (width, height):
                bad_sizes.append(f"{f.name} is {size[0]}x{size[1]}")
        if bad_sizes:
            reasons.append(f"{label}/ wrong size (expected {width}x{height}): " + ", ".join(bad_sizes[:3]))
        return files

    targets = check_frames(path / TARGET_DIR, TARGET_DIR)
    skeletons: list[Path] = []
    if (path / SKELETON_DIR).is_dir():
        skeletons = check_frames(path / SKELETON_DIR, SKELETON_DIR)

    pose_source: Path | None = None
    if (path / POSE_DIR).is_dir():
        pose_source = path / POSE_DIR
    elif (path / POSE_CLIP_FILE).is_file():
        pose_source = path / POSE_CLIP_FILE
    if pose_source is None and not skeletons:
        reasons.append(
            f"no poses: neither {POSE_DIR}/ (OpenPose JSON) nor {POSE_CLIP_FILE} nor {SKELETON_DIR}/"
        )
    elif pose_source is not None:
        try:
            poses = _read_poses(pose_source)
        except ImportError as error:
            reasons.append(f"cannot read OpenPose JSON here ({error})")
        except Exception as error:  # the reader's own message names the file and the fault
            reasons.append(f"{pose_source.name}: {str(error).splitlines()[0]}")
        else:
            if len(poses) != n:
                reasons.append(f"{pose_source.name} holds {len(poses)} poses, expected {n}")
            for index, pose in enumerate(poses):
                shape = tuple(np.asarray(pose.keypoints).shape)
                if shape != (NUM_KEYPOINTS, 3):
                    reasons.append(
                        f"pose {index:04d} has keypoints of shape {shape}, expected ({NUM_KEYPOINTS}, 3) "
                        "(OpenPose body-18 x,y,confidence)"
                    )
                    break
                canvas = (int(pose.canvas_width), int(pose.canvas_height))
                if canvas != (width, height):
                    reasons.append(
                        f"pose {index:04d} is drawn on a {canvas[0]}x{canvas[1]} canvas, meta.json says {width}x{height}"
                    )
                    break
    if reasons:
        return reasons
    return ClipInfo(
        name=path.name,
        path=path,
        num_frames=n,
        width=width,
        height=height,
        fps=fps,
        source=str(meta.get("source", "")),
        prompt=meta.get("prompt") or None,
        target_files=tuple(targets),
        skeleton_files=tuple(skeletons),
        pose_source=pose_source,
    )


def validate_dataset(
    root: str | os.PathLike, temporal_factor: int = 4, spatial_multiple: int = 16
) -> DatasetReport:
    """Check every clip folder under `root` and report the valid ones and every bad one with its reason.

    Also flags clips whose frame count or size differs from the majority (a batch needs one shape).
    """
    root = Path(root)
    report = DatasetReport(root)
    if not root.is_dir():
        report.problems.append((str(root), "data set folder does not exist"))
        return report
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        result = _check_clip(path, temporal_factor, spatial_multiple)
        if isinstance(result, ClipInfo):
            report.clips.append(result)
        else:
            report.problems.append((path.name, "; ".join(result)))
    if report.clips:
        shapes = Counter((c.num_frames, c.width, c.height) for c in report.clips)
        (n, w, h), _ = shapes.most_common(1)[0]
        keep = []
        for clip in report.clips:
            if (clip.num_frames, clip.width, clip.height) == (n, w, h):
                keep.append(clip)
            else:
                report.problems.append(
                    (
                        clip.name,
                        f"{clip.num_frames} frames at {clip.width}x{clip.height} differs from the data set's "
                        f"{n} frames at {w}x{h}",
                    )
                )
        report.clips = keep
        report.problems.sort()
    return report


def load_dataset(
    root: str | os.PathLike, temporal_factor: int = 4, spatial_multiple: int = 16
) -> list[ClipInfo]:
    """The valid clips of a data set; raises `DatasetError` listing every bad clip (or an empty set)."""
    report = validate_dataset(root, temporal_factor, spatial_multiple)
    if report.problems:
        raise DatasetError(
            f"data set {report.root} has {len(report.problems)} bad clip(s):\n"
            + "\n".join(f"  {c}: {r}" for c, r in report.problems),
            "fix or remove these clip folders (`frameprompt dataset validate DIR` lists them again)",
            report.problems,
        )
    if not report.clips:
        raise DatasetError(
            f"data set {report.root} holds no clips",
            "render one with `frameprompt dataset render` or see docs/dataset.md for the folder format",
        )
    return report.clips


# --- pixels ------------------------------------------------------------------------------------
def _to_tensor(images: Iterable[PIL.Image.Image]) -> torch.Tensor:
    """PIL frames -> (1, 3, F, H, W) float32 in [-1, 1]."""
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    video = torch.from_numpy(arrays).permute(3, 0, 1, 2) / 127.5 - 1.0
    return video.unsqueeze(0)


def clip_skeleton_images(clip: ClipInfo) -> list[PIL.Image.Image]:
    """The N skeleton frames: the stored PNGs, or drawn from the OpenPose JSON with the shared drawer."""
    if clip.skeleton_files:
        return [PIL.Image.open(f).convert("RGB") for f in clip.skeleton_files]
    from frameprompt_blender.core.openpose_draw import draw_pose

    assert clip.pose_source is not None
    return [PIL.Image.fromarray(draw_pose(p, clip.width, clip.height)) for p in _read_poses(clip.pose_source)]


def load_clip_pixels(clip: ClipInfo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reference (1,3,1,H,W), skeleton (1,3,N,H,W), target (1,3,N,H,W)), all in [-1, 1]."""
    reference = _to_tensor([PIL.Image.open(clip.path / REFERENCE_FILE)])
    skeleton = _to_tensor(clip_skeleton_images(clip))
    target = _to_tensor(PIL.Image.open(f) for f in clip.target_files)
    return reference, skeleton, target


# --- latent cache ------------------------------------------------------------------------------
def _clip_signature(clip: ClipInfo) -> str:
    """Names, sizes and mtimes of a clip's files: changes when the clip is re-rendered."""
    digest = hashlib.sha256()
    for f in sorted(p for p in clip.path.rglob("*") if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.relative_to(clip.path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def module_fingerprint(module: torch.nn.Module | None) -> str:
    """A hash of a module's config and weights (every tensor's shape and up to 4096 evenly spaced values,
    so a 14B model hashes in seconds): caches and checkpoints are reused only for the same weights."""
    if module is None:
        return "none"
    # config keys with a leading "_" say where and by which version it was saved, not what it is:
    # the same weights loaded from another folder must give the same fingerprint
    config = {k: v for k, v in dict(getattr(module, "config", {}) or {}).items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)]
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _atomic_save(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a temp file and rename it over `path`: readers see the old text or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class LatentCache:
    """The encoded data set: per clip x0 (z, L, h, w), condition (z, L, h, w), optional text/image."""

    directory: Path
    names: list[str]
    num_frames: int
    width: int
    height: int
    null_text: torch.Tensor  # (512, text_dim)

    def load(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.directory / f"{name}.safetensors"))


def build_latent_cache(
    pipe: Any,
    clips: list[ClipInfo],
    cache_dir: str | os.PathLike,
    latent_zero_condition: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
    write: bool = True,
    frame_independent: bool = False,
) -> LatentCache:
    """Encode every clip once with the pipeline's frozen VAE (and CLIP / text encoder) into safetensors.

    Resumable: a clip already cached for the same encoders, options and source files is skipped.
    With write=False (the other processes of a multi-GPU run, after the main one built it) nothing
    is written and a missing clip is an error. frame_independent=True is for a codec that encodes
    each frame on its own (the embedded model's frame-wise VAE): the condition is then the context
    latents followed by the latent of a black frame, which halves the encoding work.
    Files: `<cache_dir>/<clip>.safetensors` (keys `x0`, `condition`, optional `text`, `image`),
    `null_text.safetensors` (the shared empty-prompt embedding) and `manifest.json`.
    """
    from frameprompt import method
    from frameprompt.method import SequenceLayout
    from frameprompt.vae_io import encode_video

    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    first = clips[0]
    layout = SequenceLayout.for_models(
        first.num_frames, first.height, first.width, pipe.vae, pipe.transformer
    )
    key = {
        "version": CACHE_VERSION,
        "vae": module_fingerprint(pipe.vae),
        "image_encoder": module_fingerprint(getattr(pipe, "image_encoder", None))
        if pipe.transformer.config.image_dim is not None
        else "unused",
        "text_encoder": module_fingerprint(getattr(pipe, "text_encoder", None)),
        "latent_zero_condition": latent_zero_condition,
        "num_frames": layout.num_frames,
        "size": [layout.width, layout.height],
    }
    manifest_path = cache / CACHE_MANIFEST
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
    entries: dict[str, str] = manifest.get("clips", {}) if manifest.get("key") == key else {}

    device = pipe.vae.device
    null_text = pipe.null_prompt_embeds.reshape(-1, pipe.null_prompt_embeds.shape[-1])
    if write:
        _atomic_save({"null_text": null_text.float()}, cache / NULL_TEXT_FILE)
    iterator: Iterable = progress(clips) if progress else clips
    for clip in iterator:
        signature = _clip_signature(clip)
        target_file = cache / f"{clip.name}.safetensors"
        if entries.get(clip.name) == signature and target_file.is_file():
            continue
        if not write:
            raise FramePromptError(
                f"latent cache {cache} lacks clip {clip.name}", "run again (the cache is resumable)"
            )
        reference, skeleton, target = load_clip_pixels(clip)
        with torch.no_grad():
            x0 = encode_video(pipe.vae, torch.cat([reference, skeleton, target], dim=2))
            if latent_zero_condition:
                condition = method.latent_zero_condition(x0[:, :, : layout.context_latent_frames], layout)
            elif frame_independent:
                black = encode_video(pipe.vae, torch.zeros_like(reference))
                target_latents = black.expand(-1, -1, layout.target_latent_frames, -1, -1)
                condition = torch.cat([x0[:, :, : layout.context_latent_frames], target_latents], dim=2)
            else:
                condition = encode_video(pipe.vae, method.condition_pixels(reference, skeleton))
            tensors = {"x0": x0[0].float(), "condition": condition[0].float()}
            if pipe.transformer.config.image_dim is not None:
                image = PIL.Image.open(clip.path / REFERENCE_FILE).convert("RGB")
                tensors["image"] = pipe.encode_image(image, device)[0].float()
            if clip.prompt:
                text, _ = pipe.encode_text(clip.prompt, None, None, None, device, torch.float32)
                tensors["text"] = text[0].float()
        _atomic_save(tensors, target_file)
        entries[clip.name] = signature
        atomic_write_text(manifest_path, json.dumps({"key": key, "clips": entries}, indent=1))
    if write:
        atomic_write_text(manifest_path, json.dumps({"key": key, "clips": entries}, indent=1))
    return LatentCache(
        cache,
        [c.name for c in clips],
        layout.num_frames,
        layout.width,
        layout.height,
        null_text.float().cpu(),
    )


class CachedClips(torch.utils.data.Dataset):
    """Training samples from a `LatentCache`, held in memory (latents are small)."""

    def __init__(self, cache: LatentCache) -> None:
        self.cache = cache
        self.items = [cache.load(name) for name in cache.names]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = dict(self.items[index])
        item.setdefault("text", self.cache.null_text)
        return item


def write_clip(
    folder: str | os.PathLike,
    reference: PIL.Image.Image,
    targets: list[PIL.Image.Image],
    skeletons: list[PIL.Image.Image] | None = None,
    poses: list[Any] | None = None,
    fps: float = 16,
    source: str = "",
    prompt: str | None = None,
) -> Path:
    """Write one clip folder in the data set format (used by the renderer and tests)."""
    folder = Path(folder)
    (folder / TARGET_DIR).mkdir(parents=True, exist_ok=True)
    reference.save(folder / REFERENCE_FILE)
    for i, frame in enumerate(targets):
        frame.save(folder / TARGET_DIR / frame_name(i))
    if skeletons is not None:
        (folder / SKELETON_DIR).mkdir(exist_ok=True)
        for i, frame in enumerate(skeletons):
            frame.save(folder / SKELETON_DIR / frame_name(i))
    if poses is not None:
        from frameprompt_blender.core.openpose_json import write_pose_json

        (folder / POSE_DIR).mkdir(exist_ok=True)
        for i, pose in enumerate(poses):
            write_pose_json(folder / POSE_DIR / pose_file_name(i), pose)
    write_meta(folder, reference.width, reference.height, len(targets), fps, source, prompt)
    return folder


def synthetic_dataset(
    root: str | os.PathLike, clips: int = 2, num_frames: int = 4, size: int = 32, seed: int = 0
) -> Path:
    """A tiny data set of random-colour clips with skeleton PNGs (no poses), for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in range(clips):

        def image() -> PIL.Image.Image:
            return PIL.Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))

        write_clip(
            root / f"clip_{c:04d}",
            image(),
            [image() for _ in range(num_frames)],
            skeletons=[image() for _ in range(num_frames)],
            source="synthetic",
        )
    return root
