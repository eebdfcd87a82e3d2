"""The training data set's folder format, without torch (the Blender renderer writes it too).

DATA/<clip>/meta.json                 {"fps", "width", "height", "num_frames", "source"[, "prompt", ...]}
DATA/<clip>/reference.png             the character, width x height
DATA/<clip>/pose/0000_keypoints.json  OpenPose JSON, one per frame (or one clip file pose.json)
DATA/<clip>/skeleton/0000.png         optional: drawn from the JSON when absent
DATA/<clip>/target/0000.png           the N frames the model learns to generate
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

META_FILE = "meta.json"
REFERENCE_FILE = "reference.png"
POSE_DIR = "pose"
POSE_CLIP_FILE = "pose.json"
SKELETON_DIR = "skeleton"
TARGET_DIR = "target"
NUM_KEYPOINTS = 18


def write_meta(
    folder: str | os.PathLike,
    width: int,
    height: int,
    num_frames: int,
    fps: float = 16,
    source: str = "",
    prompt: str | None = None,
    **extra: Any,
) -> Path:
    """Write meta.json atomically; a clip folder counts as complete once it exists."""
    meta: dict[str, Any] = {
        "fps": fps,
        "width": int(width),
        "height": int(height),
        "num_frames": int(num_frames),
        "source": source,
    }
    if prompt:
        meta["prompt"] = prompt
    meta.update(extra)
    path = Path(folder) / META_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    return path
