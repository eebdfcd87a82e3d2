"""The 18-keypoint OpenPose (COCO-18) body schema and the `Pose` container.

Pure module: numpy only. Shared by the Blender add-on (export) and the backend (drawing, loading).

Conventions
- Keypoint order is OpenPose/COCO-18: 0 Nose, 1 Neck, 2-4 right shoulder/elbow/wrist, 5-7 left,
  8-10 right hip/knee/ankle, 11-13 left, 14/15 right/left eye, 16/17 right/left ear.
  "Right" is the subject's right (Blender's `.R` side).
- Coordinates are pixels on a `canvas_width` x `canvas_height` canvas, origin top-left, x right, y down.
- Confidence 0 means "missing" (not drawn). Anything > 0 is drawn.
- `depth` (optional) is the distance from the camera along its view axis, bigger = farther; it lets the
  drawing put near limbs on top of far ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "Nose",
    "Neck",
    "RShoulder",
    "RElbow",
    "RWrist",
    "LShoulder",
    "LElbow",
    "LWrist",
    "RHip",
    "RKnee",
    "RAnkle",
    "LHip",
    "LKnee",
    "LAnkle",
    "REye",
    "LEye",
    "REar",
    "LEar",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# Index constants, for readable code elsewhere.
NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST = 2, 3, 4
L_SHOULDER, L_ELBOW, L_WRIST = 5, 6, 7
R_HIP, R_KNEE, R_ANKLE = 8, 9, 10
L_HIP, L_KNEE, L_ANKLE = 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17

FACE_KEYPOINTS: tuple[int, ...] = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)

# controlnet_aux `draw_bodypose` limbSeq (1-based there), 0-based here. It has 19 pairs; only the first
# 17 are drawn (the two shoulder->ear pairs are not), so LIMBS holds those 17.
LIMB_SEQ_ALL: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
    (2, 16),
    (5, 17),
)
LIMBS: tuple[tuple[int, int], ...] = LIMB_SEQ_ALL[:17]

# Standard OpenPose colours (RGB). Limb i uses COLORS[i], keypoint j uses COLORS[j].
_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
KEYPOINT_COLORS: tuple[tuple[int, int, int], ...] = _COLORS
LIMB_COLORS: tuple[tuple[int, int, int], ...] = _COLORS[: len(LIMBS)]

_ALIASES: dict[str, int] = {}


def _register_aliases() -> None:
    long_names = (
        "nose",
        "neck",
        "right_shoulder",
        "right_elbow",
        "right_wrist",
        "left_shoulder",
        "left_elbow",
        "left_wrist",
        "right_hip",
        "right_knee",
        "right_ankle",
        "left_hip",
        "left_knee",
        "left_ankle",
        "right_eye",
        "left_eye",
        "right_ear",
        "left_ear",
    )
    for i, (short, long) in enumerate(zip(KEYPOINT_NAMES, long_names, strict=True)):
        for alias in (short, long, long.replace("right_", "r_").replace("left_", "l_"), str(i)):
            _ALIASES[_norm(alias)] = i


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


_register_aliases()


def keypoint_index(name: str | int) -> int:
    """Index of a keypoint from its OpenPose name ("RShoulder"), a long name ("right_shoulder", "r_shoulder"),
    or its index (as int or string). Case and separators are ignored."""
    if isinstance(name, int | np.integer):
        if 0 <= int(name) < NUM_KEYPOINTS:
            return int(name)
        raise ValueError(f"keypoint index {name} is out of range 0..{NUM_KEYPOINTS - 1}")
    idx = _ALIASES.get(_norm(str(name)))
    if idx is None:
        raise ValueError(
            f"unknown keypoint name {name!r}; use one of {', '.join(KEYPOINT_NAMES)} "
            "(or right_shoulder-style names, or an index 0-17)"
        )
    return idx


@dataclass
class Pose:
    """One person's 18 body keypoints on a canvas.

    keypoints: (18, 3) float32 rows of x, y (pixels, origin top-left) and confidence (0 = missing).
    depth: optional (18,) float32 distance from the camera along its view axis (bigger = farther).
    """

    keypoints: np.ndarray
    canvas_width: int
    canvas_height: int
    depth: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        kp = np.asarray(self.keypoints, dtype=np.float32)
        if kp.shape == (NUM_KEYPOINTS, 2):
            kp = np.concatenate([kp, np.ones((NUM_KEYPOINTS, 1), np.float32)], axis=1)
        if kp.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(
                f"Pose.keypoints must have shape ({NUM_KEYPOINTS}, 3) (x, y, confidence per OpenPose-18 keypoint), "
                f"got {kp.shape}"
            )
        self.keypoints = kp
        self.canvas_width = int(self.canvas_width)
        self.canvas_height = int(self.canvas_height)
        if self.canvas_width <= 0 or self.canvas_height <= 0:
            raise ValueError(f"Pose canvas must be positive, got {self.canvas_width}x{self.canvas_height}")
        if self.depth is not None:
            d = np.asarray(self.depth, dtype=np.float32).reshape(-1)
            if d.shape != (NUM_KEYPOINTS,):
                raise ValueError(f"Pose.depth must have shape ({NUM_KEYPOINTS},), got {d.shape}")
            self.depth = d

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def empty(cls, width: int, height: int) -> Pose:
        """A pose with every keypoint missing (draws as a black frame)."""
        return cls(np.zeros((NUM_KEYPOINTS, 3), np.float32), width, height)

    @classmethod
    def from_normalized(cls, xy: np.ndarray, width: int, height: int, confidence=None, depth=None) -> Pose:
        """Build from (18, 2) coordinates in [0, 1] (origin top-left)."""
        xy = np.asarray(xy, np.float32).reshape(NUM_KEYPOINTS, 2)
        conf = (
            np.ones(NUM_KEYPOINTS, np.float32) if confidence is None else np.asarray(confidence, np.float32)
        )
        kp = np.column_stack([xy[:, 0] * width, xy[:, 1] * height, conf])
        return cls(kp, width, height, depth)

    # -- views ---------------------------------------------------------------------------------------
    @property
    def xy(self) -> np.ndarray:
        return self.keypoints[:, :2]

    @property
    def confidence(self) -> np.ndarray:
        return self.keypoints[:, 2]

    @property
    def visible(self) -> np.ndarray:
        """(18,) bool: keypoints that are present (confidence > 0)."""
        return self.keypoints[:, 2] > 0

    def normalized(self) -> np.ndarray:
        """(18, 2) coordinates divided by the canvas size."""
        return self.xy / np.array([self.canvas_width, self.canvas_height], np.float32)

    # -- transforms ----------------------------------------------------------------------------------
    def copy(self) -> Pose:
        return Pose(
            self.keypoints.copy(),
            self.canvas_width,
            self.canvas_height,
            None if self.depth is None else self.depth.copy(),
        )

    def scaled(self, width: int, height: int) -> Pose:
        """The same pose on a width x height canvas (coordinates rescaled per axis; depth unchanged)."""
        kp = self.keypoints.copy()
        kp[:, 0] *= width / self.canvas_width
        kp[:, 1] *= height / self.canvas_height
        return Pose(kp, width, height, None if self.depth is None else self.depth.copy())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pose):
            return NotImplemented
        if (self.canvas_width, self.canvas_height) != (other.canvas_width, other.canvas_height):
            return False
        if not np.array_equal(self.keypoints, other.keypoints):
            return False
        if (self.depth is None) != (other.depth is None):
            return False
        return self.depth is None or np.array_equal(self.depth, other.depth)  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    def __repr__(self) -> str:
        return (
            f"Pose({int(self.visible.sum())}/{NUM_KEYPOINTS} visible, canvas {self.canvas_width}x{self.canvas_height}"
            f"{', depth' if self.depth is not None else ''})"
        )
