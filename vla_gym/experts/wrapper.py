"""Experts bound to an env, and a wrapper that puts the expert's action into ``info``.

Experts read privileged simulator state, so they must live next to their env. The wrapper
lets them run inside vector-env workers (sync or async) and in data collection: the caller
reads ``info["expert_action"]`` and steps with it.
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
import numpy as np

EXPERT_ACTION = "expert_action"


def make_expert(env: gym.Env, **options: Any) -> Any:
    """The scripted expert for ``env``'s family (any wrapper depth); ``options`` go to its
    constructor (``TabletopExpert``: ``lift_speed``, ``square_cubes``; ``NavExpert``:
    ``stop_distance``)."""
    from vla_gym.envs.navigation.env import NavEnv
    from vla_gym.envs.tabletop.env import TabletopEnv
    from vla_gym.experts.navigation import NavExpert
    from vla_gym.experts.tabletop import TabletopExpert

    base = env.unwrapped
    if isinstance(base, TabletopEnv):
        expert_class: type = TabletopExpert
    elif isinstance(base, NavEnv):
        expert_class = NavExpert
    else:
        raise ValueError(
            f"no scripted expert for {type(base).__name__}; expected a vla_gym env")
    try:
        inspect.signature(expert_class).bind(base, **options)
    except TypeError:
        valid = [p for p in inspect.signature(expert_class).parameters if p != "env"]
        raise ValueError(f"{expert_class.__name__} takes options {valid}, got "
                         f"{sorted(options)}") from None
    return expert_class(base, **options)


class ExpertActions(gym.Wrapper):
    """Adds ``info["expert_action"]``: what the scripted expert would do next; ``options`` go
    to ``make_expert``."""

    def __init__(self, env: gym.Env, **options: Any) -> None:
        super().__init__(env)
        self.expert = make_expert(env, **options)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.expert.reset()
        info[EXPERT_ACTION] = self.expert.act(obs)
        return obs, info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[EXPERT_ACTION] = self.expert.act(obs)
        return obs, reward, terminated, truncated, info
