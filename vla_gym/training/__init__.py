"""Trainers: behaviour cloning, and learning from preferences (queries, oracle labels, reward
model, RL fine-tuning). Importing this package is cheap; torch and stable-baselines3 load on
first use of the names below."""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it (imported on first access)
_LAZY = {
    "Oracle": "vla_gym.training.preferences",
    "OracleConfig": "vla_gym.training.preferences",
    "SegmentSet": "vla_gym.training.preferences",
    "collect_segments": "vla_gym.training.preferences",
    "write_query_set": "vla_gym.training.preferences",
    "read_query_set": "vla_gym.training.preferences",
    "RewardEnsemble": "vla_gym.training.reward_model",
    "RewardModelConfig": "vla_gym.training.reward_model",
    "train_reward_model": "vla_gym.training.reward_model",
    "LearnedReward": "vla_gym.training.rlhf",
    "RLConfig": "vla_gym.training.rlhf",
    "RLHFConfig": "vla_gym.training.rlhf",
    "run_rlhf": "vla_gym.training.rlhf",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vla_gym.training' has no attribute {name!r}")


__all__ = list(_LAZY)
