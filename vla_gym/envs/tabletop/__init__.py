"""Tabletop manipulation: an arm, objects on a table and an instruction."""

from vla_gym.envs.tabletop.env import TASKS, TabletopEnv

__all__ = ["TASKS", "TabletopEnv"]
