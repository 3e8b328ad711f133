from __future__ import annotations

import pytest
from data_helpers import PICK, SMALL

from vla_gym.data import collect_demos


@pytest.fixture(scope="module")
def pick_root(tmp_path_factory):
    """Three expert pick episodes (seeds 5, 6, 7) at 32 px, lossless."""
    root = tmp_path_factory.mktemp("pick")
    summary = collect_demos(PICK, 3, root, seed=5, env_kwargs=SMALL)
    assert summary.recorded_now == 3 and not summary.interrupted
    return root
