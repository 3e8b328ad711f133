"""Robot models and their low-level controllers."""

from vla_gym.envs.robots.arm import ArmConfig, ArmRobot

__all__ = ["ArmConfig", "ArmRobot"]
