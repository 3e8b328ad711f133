"""Helpers for the RLHF tests: tiny configs and segment sets from the scripted expert."""

from __future__ import annotations

from typing import Any

import numpy as np

from vla_gym.policies import VLAConfig
from vla_gym.policies.configuration import FusionConfig, HeadConfig, LanguageConfig, VisionConfig
from vla_gym.training.preferences import SegmentSet, Variant, collect_segments
from vla_gym.training.reward_model import RewardModelConfig
from vla_gym.types import ARM_STATE_FIELDS

STATE_DIM = len(ARM_STATE_FIELDS)

PICK = "vla_gym/TabletopPick-v0"
ENV_KWARGS = {"image_size": 32, "terminate_on_success": False}


def tiny_policy_config(**changes: Any) -> VLAConfig:
    """A policy that builds and steps in milliseconds (32 px CNN, hashed-word embedding)."""
    config = VLAConfig(
        name="tiny",
        vision=VisionConfig(kind="cnn", image_size=32, width=8),
        language=LanguageConfig(kind="embedding", dim=16, vocab_size=512),
        fusion=FusionConfig(kind="concat", dim=32),
        head=HeadConfig(hidden=32),
        hidden=32,
    )
    return config.replace(**changes)


def tiny_reward_config(**changes: Any) -> RewardModelConfig:
    base = dict(members=2, image_size=16, width=8, hidden=32, steps=150, batch_pairs=8,
                lr=2e-3, holdout=0.25)
    return RewardModelConfig(**{**base, **changes})


def expert_action(obs: dict[str, Any], info: dict[str, Any]) -> np.ndarray:
    return np.asarray(info["expert_action"], np.float32)


def expert_segments(seeds: range, noise: tuple[float, ...] = (0.0, 0.6, 2.0),
                    segment_length: int = 20) -> SegmentSet:
    """The expert at several noise levels from the same scenes: a wide spread of progress."""
    from vla_gym.experts import ExpertActions

    variants = [Variant(f"expert{n:g}", expert_action, n) for n in noise]
    segments, _ = collect_segments(PICK, variants, seeds, segment_length=segment_length,
                                   env_kwargs=ENV_KWARGS, wrappers=[ExpertActions])
    return segments


def synthetic_segments(n: int = 8, length: int = 4, groups: int = 2, seed: int = 0,
                       env_id: str = PICK, size: int = 32) -> SegmentSet:
    """Random segments (no env): ``groups`` instructions, true rewards rising with the row."""
    rng = np.random.default_rng(seed)
    return SegmentSet(
        env_id=env_id,
        images=rng.integers(0, 255, (n, length, size, size, 3), dtype=np.uint8),
        states=rng.normal(size=(n, length, STATE_DIM)).astype(np.float32),
        instructions=np.array([f"pick up the {'red' if i % groups else 'blue'} cube"
                               for i in range(n)]),
        true_rewards=np.tile(np.arange(n, dtype=np.float32)[:, None], (1, length)),
        successes=np.zeros((n, length), bool),
        seeds=np.arange(n), starts=np.zeros(n, int), variants=np.array(["synthetic"] * n),
        env_kwargs={"image_size": size})
