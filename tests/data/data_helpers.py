"""Shared constants and checks for the data tests."""

from __future__ import annotations

import numpy as np

PICK = "vla_gym/TabletopPick-v0"
NAV = "vla_gym/NavGoTo-v0"
SMALL = {"image_size": 32}


def assert_same_episodes(a, b) -> None:
    """Two DemoDatasets hold the same episodes, bit for bit."""
    assert len(a) == len(b)
    for x, y in zip(a.episodes(), b.episodes()):
        assert x.metadata == y.metadata
        assert x.observations["instruction"] == y.observations["instruction"]
        for key in ("image", "state"):
            np.testing.assert_array_equal(x.observations[key], y.observations[key])
        for key in x.infos:
            np.testing.assert_array_equal(x.infos[key], y.infos[key])
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.rewards, y.rewards)
        np.testing.assert_array_equal(x.terminations, y.terminations)
