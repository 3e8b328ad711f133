"""Named discrete action sets mapped onto an env's continuous action contract.

Language-conditioned classifiers (a fixed set of robot actions, one logit each) act through
this wrapper: ``Discrete(n)`` in, the contract's normalised continuous action out. The sets are
data, so a user can pass their own ``{name: vector}`` table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_gym.types import ARM_EE_DELTA, BASE_VELOCITY, ActionContract

# Mobile base, [v, omega] normalised. "approach" creeps forward for a careful final approach;
# "avoid" backs away while turning left, to get clear of something in front.
BASE_ACTION_SET: dict[str, tuple[float, ...]] = {
    "move_forward": (1.0, 0.0),
    "move_backward": (-0.5, 0.0),
    "turn_left": (0.0, 0.6),
    "turn_right": (0.0, -0.6),
    "approach": (0.3, 0.0),
    "avoid": (-0.3, 0.6),
    "stop": (0.0, 0.0),
}


def _arm_set() -> dict[str, tuple[float, ...]]:
    """One unit step along each end-effector axis each way, gripper open/close, hold."""
    actions: dict[str, tuple[float, ...]] = {}
    for index, axis in enumerate(ARM_EE_DELTA.dims[:6]):
        for sign, word in ((1.0, "plus"), (-1.0, "minus")):
            vector = [0.0] * 7
            vector[index] = sign
            vector[6] = np.nan  # keep the gripper as it is
            actions[f"{axis}_{word}"] = tuple(vector)
    actions["open_gripper"] = (0.0,) * 6 + (-1.0,)
    actions["close_gripper"] = (0.0,) * 6 + (1.0,)
    actions["stop"] = (0.0,) * 6 + (np.nan,)
    return actions


# Arm, 7-D end-effector delta. NaN in the gripper slot means "keep the last gripper command".
ARM_ACTION_SET: dict[str, tuple[float, ...]] = _arm_set()


def action_set_for(contract: ActionContract) -> dict[str, tuple[float, ...]]:
    sets = {BASE_VELOCITY.name: BASE_ACTION_SET, ARM_EE_DELTA.name: ARM_ACTION_SET}
    if contract.name not in sets:
        raise ValueError(f"no default action set for contract {contract.name!r}; "
                         f"pass action_set= (defaults exist for {sorted(sets)})")
    return sets[contract.name]


class DiscreteActions(gym.ActionWrapper):
    """``Discrete(len(action_set))`` actions; ``action_names[i]`` says what index ``i`` does."""

    def __init__(self, env: gym.Env,
                 action_set: Mapping[str, tuple[float, ...]] | None = None) -> None:
        super().__init__(env)
        contract = env.unwrapped.action_contract
        table = dict(action_set) if action_set is not None else action_set_for(contract)
        self.action_names: tuple[str, ...] = tuple(table)
        self._vectors = np.array([table[name] for name in self.action_names], np.float64)
        if self._vectors.ndim != 2 or self._vectors.shape[1] != contract.dim:
            raise ValueError(f"every action vector needs {contract.dim} values "
                             f"({', '.join(contract.dims)}) for contract {contract.name!r}")
        self.action_space = spaces.Discrete(len(self.action_names))
        self._held = np.zeros(contract.dim)

    def reset(self, **kwargs: Any):
        self._held[:] = 0.0
        self._held[-1] = -1.0 if self.env.unwrapped.action_contract is ARM_EE_DELTA else 0.0
        return self.env.reset(**kwargs)

    def action(self, action: Any) -> np.ndarray:
        if isinstance(action, str):
            index = self.index(action)
        else:
            index = int(action)
            if not self.action_space.contains(index):
                raise ValueError(f"action must be an index in [0, {self.action_space.n}) or one "
                                 f"of {self.action_names}, got {action!r}")
        vector = self._vectors[index]
        continuous = np.where(np.isnan(vector), self._held, vector)
        self._held = continuous
        return continuous.astype(np.float32)

    def index(self, name: str) -> int:
        if name not in self.action_names:
            raise ValueError(f"unknown action {name!r}; valid: {self.action_names}")
        return self.action_names.index(name)
