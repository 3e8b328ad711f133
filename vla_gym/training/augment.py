"""Image augmentation for behaviour cloning: random shifts (DrQ-style pad-and-crop).

A few pixels of translation is the augmentation that matters most for pixel-based control
from few demonstrations: it keeps the policy from keying on exact pixel positions while
leaving colours, and so the language grounding, untouched.
"""

from __future__ import annotations

import numpy as np


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
