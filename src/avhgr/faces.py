"""Face crops from key frames with MTCNN (facenet-pytorch; its weights ship inside the wheel).

Per video: MTCNN runs on all key frames as one batch, on frames downscaled so their longer
side is ``detect_size`` pixels; the most confident face's box is scaled back and the square
crop is cut from the full-resolution frame, then resized to ``face_size``. A window with no
face reuses the box of the nearest window (in time) of the same video that has one; a video
with no face at all gets centre crops. Each window records whether its own face was found.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

Box = tuple[float, float, float, float]


class FaceCropper:
    def __init__(
        self, face_size: int = 224, margin: float = 0.0, detect_size: int = 480, min_face: int = 40, device: str = "cpu"
    ):
        from facenet_pytorch import MTCNN  # imported here: loading it costs a second

        self.face_size = face_size
        self.margin = margin
        self.detect_size = detect_size
        self.device = torch.device(device)
        # select_largest=False: boxes come sorted by confidence; we keep the first.
        self.mtcnn = MTCNN(
            keep_all=True, select_largest=False, post_process=False, min_face_size=min_face, device=self.device
        )

    def detect(self, frames: list[np.ndarray]) -> list[tuple[Box, float] | None]:
        """The most confident face box (full-resolution pixels) and its probability, per frame."""
        out: list[tuple[Box, float] | None] = [None] * len(frames)
        # MTCNN batches only frames of one size; a video's frames share one, but be safe.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, fr in enumerate(frames):
            by_shape.setdefault(fr.shape, []).append(i)
        for shape, idx in by_shape.items():
            h, w = shape[:2]
            scale = min(1.0, self.detect_size / max(h, w))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            # MTCNN's first pyramid scale maps min_face px onto its 12 px P-Net window. A frame
            # whose shorter side is under min_face gets no scale at all and MTCNN fails inside
            # (torch.cat of nothing); it cannot hold a face that large anyway: no face.
            if min(size) * (12.0 / self.mtcnn.min_face_size) < 12:  # MTCNN's own test
                continue
            # PIL's reducing resize in uint8: antialiased, and 4x cheaper than a float torch resize.
            small = [frames[i] if scale == 1.0 else np.asarray(Image.fromarray(frames[i]).resize(size, Image.BILINEAR, reducing_gap=2.0)) for i in idx]
            batch = torch.from_numpy(np.stack(small)).to(self.device)
            boxes, probs = self.mtcnn.detect(batch.float())
            for j, i in enumerate(idx):
                if boxes[j] is None or len(boxes[j]) == 0:
                    continue
                box = np.asarray(boxes[j], dtype=np.float64)[0] / scale  # numpy 2: object arrays
                out[i] = (tuple(float(v) for v in box), float(np.asarray(probs[j], dtype=np.float64)[0]))
        return out

    def crop(self, frame: np.ndarray, box: Box | None) -> np.ndarray:
        """A square crop around ``box`` (centre crop when None), resized to face_size × face_size."""
        h, w = frame.shape[:2]
        if box is None:
            side = min(h, w)
            cx, cy = w / 2, h / 2
        else:
            x1, y1, x2, y2 = box
            side = max(x2 - x1, y2 - y1) * (1.0 + self.margin)
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        side = max(side, 2.0)
        left, top = round(cx - side / 2), round(cy - side / 2)
        right, bottom = left + round(side), top + round(side)
        # PIL pads whatever falls outside the frame with black.
        crop = Image.fromarray(frame).crop((left, top, right, bottom))
        return np.asarray(crop.resize((self.face_size, self.face_size), Image.BILINEAR), dtype=np.uint8)

    def crop_video(self, frames: list[np.ndarray], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Face crops (n, S, S, 3) uint8 and a bool per window: was a face found in its frame."""
        detections = self.detect(frames)
        boxes = [d[0] if d is not None else None for d in detections]
        found = np.array([b is not None for b in boxes], dtype=bool)
        fill = nearest_boxes(boxes, times)
        faces = np.empty((len(frames), self.face_size, self.face_size, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            faces[i] = self.crop(frame, fill[i])
        return faces, found


def nearest_boxes(boxes: list[Box | None], times) -> list[Box | None]:
    """Each window's own box, or else the box of the window nearest in time that has one
    (None, a centre crop, when no window of the video has a face)."""
    times = np.asarray(times, dtype=np.float64)
    with_face = np.flatnonzero([b is not None for b in boxes])
    if len(with_face) == 0:
        return list(boxes)
    return [b if b is not None else boxes[with_face[np.argmin(np.abs(times[with_face] - times[i]))]] for i, b in enumerate(boxes)]
