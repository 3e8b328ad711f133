"""Wrappers over vla_gym envs."""

from vla_gym.envs.wrappers.discrete import (
    ARM_ACTION_SET,
    BASE_ACTION_SET,
    DiscreteActions,
    action_set_for,
)

__all__ = ["ARM_ACTION_SET", "BASE_ACTION_SET", "DiscreteActions", "action_set_for"]
