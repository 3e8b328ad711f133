"""Random-shift augmentation moves labelled points with the image content."""

from __future__ import annotations

import numpy as np

from vla_gym.training.augment import random_shift


def test_shifted_target_pixels_still_point_at_the_target():
    rng = np.random.default_rng(0)
    images = np.zeros((64, 16, 20, 3), np.uint8)
    rows, cols = rng.integers(5, 11, 64), rng.integers(5, 15, 64)
    images[np.arange(64), rows, cols] = 255  # one bright "target" pixel per image
    pixels = np.stack([(cols + 0.5) / 20, (rows + 0.5) / 16], axis=1)  # (column, row) fractions
    shifted, moved = random_shift(images, 4, rng, pixels)
    assert shifted.shape == images.shape and moved.shape == (64, 2)
    found = np.array([np.argwhere(img[..., 0] == 255)[0] for img in shifted])  # (row, col)
    np.testing.assert_allclose(moved[:, 0] * 20 - 0.5, found[:, 1], atol=1e-4)
    np.testing.assert_allclose(moved[:, 1] * 16 - 0.5, found[:, 0], atol=1e-4)
    assert (found != np.stack([rows, cols], 1)).any()  # it did move


def test_no_padding_returns_images_and_points_untouched():
    images = np.ones((2, 8, 8, 3), np.uint8)
    pixels = np.full((2, 2), 0.5, np.float32)
    out, moved = random_shift(images, 0, np.random.default_rng(0), pixels)
    assert out is images and moved is pixels
