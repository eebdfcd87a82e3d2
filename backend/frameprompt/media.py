"""Reading skeleton inputs and writing results: frame folders and MP4."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist", "check the path")
    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, PIL.Image.DecompressionBombError) as error:
        raise InputError(f"{path} is not a readable image ({error})", "export it again as PNG") from error


def load_pose_frames(path: str | os.PathLike, width: int, height: int) -> list[PIL.Image.Image]:
    """Skeleton frames from a folder of OpenPose JSON (`0000_keypoints.json`, ...) or of images
    (`0000.png`, ...), or from one clip JSON file; JSON poses are drawn at width x height."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        from frameprompt_blender.core.openpose_json import read_pose_json

        poses = read_pose_json(path)
    elif path.is_dir() and any(path.glob("*_keypoints.json")):
        from frameprompt_blender.core.openpose_json import read_pose_folder

        poses = read_pose_folder(path)
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(
                f"{path} holds no skeleton frames",
                "pass a folder of OpenPose JSON files (0000_keypoints.json, ...) or skeleton PNGs (0000.png, ...)",
            )
        return [load_image(f).resize((width, height), PIL.Image.Resampling.BILINEAR) for f in files]
    else:
        raise InputError(
            f"pose input {path} does not exist", "pass the pose/ folder that the Blender export wrote"
        )
    from frameprompt_blender.core.openpose_draw import draw_pose

    return [PIL.Image.fromarray(draw_pose(pose, width, height)) for pose in poses]


def write_frames(frames: list[PIL.Image.Image], folder: str | os.PathLike) -> list[Path]:
    """Write frames as folder/0000.png, ... and return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(frames):
        path = folder / f"{index:04d}.png"
        frame.save(path)
        paths.append(path)
    return paths


def write_video(frames: list[PIL.Image.Image], path: str | os.PathLike, fps: int = 16) -> Path:
    """H.264 MP4 through imageio-ffmpeg's bundled ffmpeg (16 fps: Wan2.1's frame rate)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # yuv420p needs even sizes; macro_block_size=1 keeps the exact size when it is already even.
    with imageio.get_writer(
        path, fps=fps, codec="libx264", quality=8, macro_block_size=2, pixelformat="yuv420p"
    ) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame.convert("RGB")))  # type: ignore[attr-defined]
    return path
