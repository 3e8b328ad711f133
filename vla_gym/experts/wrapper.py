"""Experts bound to an env, and a wrapper that puts the expert's action into ``info``.

Experts read privileged simulator state, so they must live next to their env. The wrapper
lets them run inside vector-env workers (sync or async) and in data collection: the caller
reads ``info["expert_action"]`` and steps with it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

EXPERT_ACTION = "expert_action"


def make_expert(env: gym.Env) -> Any:
    """The scripted expert for ``env``'s family (any wrapper depth)."""
    from vla_gym.envs.navigation.env import NavEnv
    from vla_gym.envs.tabletop.env import TabletopEnv
    from vla_gym.experts.navigation import NavExpert
    from vla_gym.experts.tabletop import TabletopExpert

    base = env.unwrapped
    if isinstance(base, TabletopEnv):
        return TabletopExpert(base)
    if isinstance(base, NavEnv):
        return NavExpert(base)
    raise ValueError(f"no scripted expert for {type(base).__name__}; expected a vla_gym env")


class ExpertActions(gym.Wrapper):
    """Adds ``info["expert_action"]``: what the scripted expert would do next."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.expert = make_expert(env)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.expert.reset()
        info[EXPERT_ACTION] = self.expert.act(obs)
        return obs, info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[EXPERT_ACTION] = self.expert.act(obs)
        return obs, reward, terminated, truncated, info
