"""Standard OpenPose JSON: one file per frame (`0000_keypoints.json` ...) or one file for a clip.

Pure module (json + numpy). The per-frame format is what OpenPose, ControlNet tools, the
sd-webui-openpose-editor and ComfyUI use:

    {"version": 1.3, "people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}],
     "canvas_width": W, "canvas_height": H}

Depth (our extra) rides along as `people[0]["frameprompt_depth"]` (18 numbers), which other tools ignore,
so a write/read round trip loses nothing. A clip file is a JSON list of such frame objects (ComfyUI's
POSE_KEYPOINT convention); `{"frames": [...]}` is accepted too.

Reading is lenient where it is safe (BODY_25 files are converted to the 18-point layout; coordinates
normalised to 0..1 are scaled to the canvas) and strict elsewhere: a wrong keypoint count or a missing
canvas size raises ValueError naming the file and the fix.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .frame_names import POSE_SUFFIX
from .keypoints import NUM_KEYPOINTS, Pose

OPENPOSE_VERSION = 1.3
DEPTH_FIELD = "frameprompt_depth"

# BODY_25 -> COCO-18: BODY_25 inserts MidHip at 8 and appends 6 foot points.
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


def _num(v) -> float:
    """Shortest decimal that reads back as the same float32 (so a round trip is exact)."""
    v = np.float32(v)
    return float(str(v)) if math.isfinite(v) else 0.0


def pose_to_openpose_dict(pose: Pose) -> dict:
    """The OpenPose frame object for one pose (one person; an empty pose still lists the person with all
    confidences 0, so frame files stay aligned)."""
    person: dict = {
        "person_id": [-1],
        "pose_keypoints_2d": [_num(v) for v in pose.keypoints.reshape(-1)],
        "face_keypoints_2d": [],
        "hand_left_keypoints_2d": [],
        "hand_right_keypoints_2d": [],
    }
    if pose.depth is not None:
        person[DEPTH_FIELD] = [_num(v) for v in pose.depth]
    return {
        "version": OPENPOSE_VERSION,
        "people": [person],
        "canvas_width": int(pose.canvas_width),
        "canvas_height": int(pose.canvas_height),
    }


def pose_from_openpose_dict(
    d: dict, source: str = "<dict>", canvas_size: tuple[int, int] | None = None
) -> Pose:
    """Parse one OpenPose frame object. The first person is used; no person = an empty pose.

    canvas_size: used when the object has no canvas_width/canvas_height (OpenPose's own output has none).
    """
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected an OpenPose frame object with 'people', got {type(d).__name__}")
    w, h = d.get("canvas_width"), d.get("canvas_height")
    if w is None or h is None:
        if canvas_size is None:
            raise ValueError(
                f"{source}: no 'canvas_width'/'canvas_height'; add them to the file (the pixel size the "
                "keypoints refer to) or pass canvas_size=(width, height) when reading"
            )
        w, h = canvas_size
    try:
        w, h = int(w), int(h)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: canvas_width/canvas_height must be integers, got {w!r}/{h!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{source}: canvas size must be positive, got {w}x{h}")
    people = d.get("people")
    if people is None:
        raise ValueError(f"{source}: no 'people' list; this does not look like OpenPose JSON")
    if not isinstance(people, list):
        raise ValueError(f"{source}: 'people' must be a list of persons")
    if not people:
        return Pose.empty(w, h)
    person = people[0]
    flat = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
    if flat is None:
        raise ValueError(f"{source}: people[0] has no 'pose_keypoints_2d'")
    try:
        arr = np.asarray(flat, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: 'pose_keypoints_2d' must be a flat list of numbers") from None
    if arr.ndim != 1 or arr.size % 3:
        raise ValueError(
            f"{source}: 'pose_keypoints_2d' must be a flat list of x, y, confidence triples; got {arr.size} "
            f"numbers (expected {NUM_KEYPOINTS * 3})"
        )
    kp = arr.reshape(-1, 3)
    if kp.shape[0] == 25:
        kp = kp[list(_BODY25_TO_COCO18)]
    elif kp.shape[0] != NUM_KEYPOINTS:
        raise ValueError(
            f"{source}: 'pose_keypoints_2d' has {kp.shape[0]} keypoints; FramePrompt needs the 18-point "
            "COCO/OpenPose body layout (54 numbers) or BODY_25 (75 numbers). Re-export the pose with the "
            "COCO-18 body model"
        )
    kp = np.nan_to_num(kp.copy(), nan=0.0)
    vis = kp[:, 2] > 0
    # Some tools write coordinates normalised to 0..1; a real pixel pose never fits inside one pixel.
    if vis.any() and max(w, h) > 16 and np.all(kp[vis, :2] >= 0) and np.all(kp[vis, :2] <= 1.0):
        kp[:, 0] *= w
        kp[:, 1] *= h
    depth = person.get(DEPTH_FIELD)
    if depth is not None:
        depth = np.asarray(depth, np.float32).reshape(-1)
        if depth.shape != (NUM_KEYPOINTS,):
            raise ValueError(f"{source}: '{DEPTH_FIELD}' must hold {NUM_KEYPOINTS} numbers, got {depth.size}")
    return Pose(kp, w, h, depth)


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-export the pose file") from None


def _atomic_write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def write_pose_json(path: str | os.PathLike, pose: Pose) -> Path:
    """Write one frame as standard OpenPose JSON."""
    path = Path(path)
    _atomic_write_json(path, pose_to_openpose_dict(pose))
    return path


def write_clip_json(path: str | os.PathLike, poses: list[Pose]) -> Path:
    """Write a whole clip as one JSON list of OpenPose frame objects."""
    path = Path(path)
    _atomic_write_json(path, [pose_to_openpose_dict(p) for p in poses])
    return path


def read_pose_json(path: str | os.PathLike, canvas_size: tuple[int, int] | None = None) -> list[Pose]:
    """Read a per-frame file (-> [pose]) or a clip file (-> one pose per frame)."""
    path = Path(path)
    data = _read_json(path)
    if isinstance(data, dict) and "frames" in data and "people" not in data:
        frames = data["frames"]
        if not isinstance(frames, list):
            raise ValueError(f"{path}: 'frames' must be a list of OpenPose frame objects")
        if canvas_size is None and "canvas_width" in data and "canvas_height" in data:
            canvas_size = (data["canvas_width"], data["canvas_height"])
        return [pose_from_openpose_dict(fr, f"{path} frame {i}", canvas_size) for i, fr in enumerate(frames)]
    if isinstance(data, list):
        if not data:
            raise ValueError(f"{path}: the clip holds no frames")
        return [pose_from_openpose_dict(fr, f"{path} frame {i}", canvas_size) for i, fr in enumerate(data)]
    return [pose_from_openpose_dict(data, str(path), canvas_size)]


def read_pose_folder(folder: str | os.PathLike, canvas_size: tuple[int, int] | None = None) -> list[Pose]:
    """All `*_keypoints.json` in a folder, sorted by file name, one pose per frame."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"{folder}: not a folder; point at the 'pose' folder holding 0000_keypoints.json ..."
        )
    files = sorted(folder.glob(f"*{POSE_SUFFIX}"))
    if not files:
        raise ValueError(
            f"{folder}: no *{POSE_SUFFIX} files; export the skeleton first (one OpenPose JSON per frame, "
            "named 0000_keypoints.json, 0001_keypoints.json ...)"
        )
    poses: list[Pose] = []
    for f in files:
        poses.extend(read_pose_json(f, canvas_size))
    return poses
