"""Helpers for the policy tests: batches from real envs and a tiny policy config."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.policies import VLAConfig
from vla_gym.policies.configuration import (
    FusionConfig,
    HeadConfig,
    LanguageConfig,
    VisionConfig,
)

OBS_KEYS = ("image", "instruction", "state")


def collect_batch(env_id: str, n: int, image_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """``n`` observations (one per seeded episode, after one random step) with targets."""
    env = gym.make(env_id, image_size=image_size)
    rows: dict[str, list] = {k: [] for k in (*OBS_KEYS, "action", "target_pos", "target_pixel",
                                             "target")}
    env.action_space.seed(seed)
    for i in range(n):
        env.reset(seed=seed + i)
        action = env.action_space.sample()
        obs, _, _, _, info = env.step(action)
        for key in OBS_KEYS:
            rows[key].append(obs[key])
        rows["action"].append(env.action_space.sample())
        rows["target_pos"].append(info["target_pos"])
        rows["target_pixel"].append(info["target_pixel"])
        rows["target"].append(info["target"])
    env.close()
    batch = {k: np.stack(v) for k, v in rows.items() if k not in ("instruction", "target")}
    batch["instruction"] = rows["instruction"]
    batch["target"] = rows["target"]
    return batch


def obs_only(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: batch[k] for k in OBS_KEYS}


def tiny_config(**changes: Any) -> VLAConfig:
    """A policy small enough to build and step in milliseconds; sections take dicts."""
    config = VLAConfig(
        name="tiny",
        vision=VisionConfig(kind="cnn", image_size=32, width=8, dim=32, depth=1, heads=2,
                            patch_size=8),
        language=LanguageConfig(kind="embedding", dim=16, vocab_size=512),
        fusion=FusionConfig(kind="concat", dim=32, heads=2, layers=1),
        head=HeadConfig(hidden=32, bins=16),
        hidden=32,
    )
    return config.replace(**changes)
