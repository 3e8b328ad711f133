"""Trainers: behaviour cloning, and learning from preferences (queries, oracle labels, reward
model, RL fine-tuning). Importing this package is cheap; torch and stable-baselines3 load on
first use of the names below."""

from __future__ import annotations

from vla_gym.lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = list(_LAZY)
