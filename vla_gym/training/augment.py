"""Image augmentation for behaviour cloning: random shifts (DrQ-style pad-and-crop).

A few pixels of translation is the augmentation that matters most for pixel-based control
from few demonstrations: it keeps the policy from keying on exact pixel positions while
leaving colours, and so the language grounding, untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_gym.types import landmark_label, pixel_label, shift_key


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator,
                 pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Shift each uint8 image (B, H, W, C) by up to ``pad`` pixels, edges replicated.

    ``pixels`` (B, 2): points in each image as (column, row) fractions in [0, 1] (e.g. where
    the target is); they are returned moved with their image, so labels stay on the content.
    """
    if pad <= 0:
        return images, pixels
    batch, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = rng.integers(0, 2 * pad + 1, size=(batch, 2))
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy:dy + height, dx:dx + width]
    if pixels is not None:  # content at row r lands on row r + pad - dy (columns alike)
        moved = (pad - offsets[:, ::-1]) / np.array([width, height])
        pixels = (np.asarray(pixels) + moved).astype(np.float32)
    return out, pixels


def shift_views(batch: dict[str, Any], views: tuple[str, ...] | list[str], pad: int,
                rng: np.random.Generator) -> dict[str, Any]:
    """A training batch with each camera view shifted independently (:func:`random_shift`):
    the view's target and landmark pixel labels move with its images, and the move itself
    goes along under ``shift_key(view)`` (a policy's target geometry undoes it). In place;
    returns ``batch``."""
    for view in views:
        size = len(batch[view])
        batch[view], moves = random_shift(batch[view], pad, rng, np.zeros((size, 2), np.float32))
        batch[shift_key(view)] = moves
        for label in (pixel_label(view), landmark_label(view)):
            if batch.get(label) is not None:
                batch[label] = (np.asarray(batch[label]) + moves).astype(np.float32)
    return batch
