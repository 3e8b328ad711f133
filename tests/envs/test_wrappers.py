"""The discrete action wrapper maps named actions onto the continuous contracts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from vla_gym.envs.wrappers import ARM_ACTION_SET, BASE_ACTION_SET, DiscreteActions


def test_base_action_set_names_and_mapping():
    env = DiscreteActions(gym.make("vla_gym/NavGoTo-v0", obs_mode="state"))
    assert env.action_names == ("move_forward", "move_backward", "turn_left", "turn_right",
                                "approach", "avoid", "stop")
    assert env.action_space == spaces.Discrete(7)
    for name, vector in BASE_ACTION_SET.items():
        np.testing.assert_array_equal(env.action(env.index(name)), np.float32(vector))
    env.close()


def test_base_actions_move_the_robot_as_named():
    def drive(name, steps=20):
        env = DiscreteActions(gym.make("vla_gym/NavGoTo-v0", obs_mode="state"))
        env.reset(seed=2)
        for _ in range(steps):
            obs, *_ = env.step(env.index(name))
        env.close()
        return obs["state"]  # x, y, yaw, v, omega in the start frame

    assert drive("move_forward")[0] > 0.2
    assert drive("move_backward")[0] < -0.1
    assert drive("turn_left")[2] > 0.3 and drive("turn_right")[2] < -0.3
    assert 0 < drive("approach")[0] < drive("move_forward")[0]
    stopped = drive("stop")
    np.testing.assert_allclose(stopped, 0.0, atol=1e-6)


def test_arm_set_steps_each_axis_and_holds_the_gripper():
    env = DiscreteActions(gym.make("vla_gym/TabletopPick-v0", obs_mode="state"))
    env.reset(seed=0)
    assert len(env.action_names) == len(ARM_ACTION_SET) == 15
    closed = env.action("close_gripper")
    assert closed[6] == 1.0
    up = env.action("dz_plus")
    np.testing.assert_array_equal(up, [0, 0, 1, 0, 0, 0, 1])  # gripper stays closed
    env.close()


def test_bad_discrete_actions_and_tables_are_rejected():
    env = DiscreteActions(gym.make("vla_gym/NavGoTo-v0", obs_mode="state"))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"index in \[0, 7\)"):
        env.step(9)
    with pytest.raises(ValueError, match="valid"):
        env.index("jump")
    with pytest.raises(ValueError, match="2 values"):
        DiscreteActions(gym.make("vla_gym/NavGoTo-v0"), {"go": (1.0, 0.0, 0.0)})
    env.close()
