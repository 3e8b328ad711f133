"""Session fixtures for the RLHF tests: expert segments and a tiny saved BC-shaped policy."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("stable_baselines3")

from rlhf_helpers import expert_segments, tiny_policy_config  # noqa: E402

from vla_gym.training.preferences import SegmentSet  # noqa: E402
from vla_gym.types import ARM_STATE_FIELDS

STATE_DIM = len(ARM_STATE_FIELDS)


@pytest.fixture(scope="session")
def pick_segments() -> SegmentSet:
    """8 scenes x 3 noise levels x 5 segments of 20 steps = 120 segments."""
    return expert_segments(range(8))


@pytest.fixture(scope="session")
def tiny_bc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny policy saved as a checkpoint, normalised like a BC run would be."""
    import numpy as np

    from vla_gym.policies import VLAPolicy

    rng = np.random.default_rng(0)
    policy = VLAPolicy(tiny_policy_config())
    policy.set_normalization(actions=rng.normal(0.1, 0.3, (64, 7)),
                             states=rng.normal(0.5, 2.0, (64, STATE_DIM)))
    path = tmp_path_factory.mktemp("tiny_bc") / "policy"
    policy.save_pretrained(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small models on a shared 2-core machine: extra threads only spin against each other
    (the tiny loop runs ~5x faster on one thread here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
