"""RosRobotEnv on in-memory transports: same spaces as the sim, faults end in zero commands."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest
from sim2real_helpers import FakeBaseRobot

from vla_gym.sim2real.bridge import SimBridge
from vla_gym.sim2real.config import load_robot
from vla_gym.sim2real.convert import rgb_to_image
from vla_gym.sim2real.messages import Float64MultiArray, Image, String
from vla_gym.sim2real.robot_env import RosRobotEnv
from vla_gym.sim2real.transports.memory import MemoryTransport
from vla_gym.types import ARM_EE_DELTA, ARM_STATE_FIELDS, BASE_VELOCITY

NAV = "vla_gym/NavGoTo-v0"
needs_nav = pytest.mark.skipif(NAV not in __import__("vla_gym").ENV_TABLE,
                               reason=f"{NAV} is not registered yet")


@pytest.fixture
def base_robot():
    """A real-robot file (no sim topics), 10 Hz control, a fixed instruction."""
    return load_robot("turtlebot_like.yaml", rate_hz=10, watchdog_timeout_s=0.12,
                      fault_timeout_s=0.6, reset_timeout_s=3.0, instruction="go to the cone")


@pytest.fixture
def fake(memory_pair, base_robot):
    robot = FakeBaseRobot(memory_pair[0], base_robot)
    yield robot
    robot.close()


@pytest.fixture
def env(memory_pair, base_robot, fake):
    robot_env = RosRobotEnv(base_robot, transport=memory_pair[1])
    yield robot_env
    robot_env.close()


@needs_nav
def test_spaces_and_contract_are_the_sims(env) -> None:
    sim = gym.make(NAV)
    assert env.observation_space == sim.observation_space
    assert env.action_space == sim.action_space
    assert env.action_contract is BASE_VELOCITY is sim.unwrapped.action_contract
    assert env.rate_hz == 10
    obs, info = env.reset()
    assert env.observation_space.contains(obs)  # a 160x120 camera frame, cropped and resized
    assert obs["instruction"] == "go to the cone"
    assert np.allclose(obs["state"], 0.0)  # odometry is relative to the pose at reset
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)


def test_construction_refuses_a_robot_that_cannot_mirror_the_sim(memory_pair) -> None:
    wrong = load_robot("turtlebot_like.yaml", sim_env="vla_gym/TabletopPick-v0")
    with pytest.raises(ValueError, match="cannot mirror"):
        RosRobotEnv(wrong, transport=memory_pair[1])
    state_mode = load_robot("servo_arm.yaml", sim_kwargs={"obs_mode": "state"})
    with pytest.raises(ValueError, match="no 'image' key"):
        RosRobotEnv(state_mode, transport=memory_pair[1])
    with pytest.raises(ValueError, match="unknown key"):
        load_robot("servo_arm.yaml", limits={"max_velocty": [1, 1]})


@needs_nav
def test_camera_stop_gives_zero_within_two_periods(env, fake) -> None:
    env.reset()
    for _ in range(3):
        *_, info = env.step(np.array([0.8, 0.2]))
        assert np.any(info["command"])
    killed = fake.stop_camera()
    for _ in range(4):
        *_, info = env.step(np.array([0.8, 0.2]))
    zero_at = fake.commands.first_zero_after(killed)
    assert zero_at is not None and zero_at - killed <= 2 * env.period
    assert all(not np.any(v) for t, v in fake.commands.since(zero_at))
    assert "no fresh image" in info["fault"]


@needs_nav
def test_robot_that_stops_answering_is_stopped_then_truncated(env, fake) -> None:
    env.reset()
    env.step(np.array([1.0, 0.0]))
    fake.odom_on = False
    silent = fake.stop_camera()
    truncated = False
    for _ in range(15):
        *_, truncated, info = env.step(np.array([1.0, 0.0]))
        if truncated:
            break
    assert truncated and "no fresh" in info["fault"]
    zero_at = fake.commands.first_zero_after(silent)
    assert zero_at - silent <= 2 * env.period
    assert all(not np.any(v) for _, v in fake.commands.since(zero_at))


@needs_nav
@pytest.mark.parametrize("bad, words", [
    (lambda: Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64)),
     "not supported"),
    (lambda: Image(height=40, width=40, encoding="rgb8", step=120, data=bytes(99)), "need"),
])
def test_bad_images_give_zero_and_keep_the_last_good_frame(env, fake, bad, words) -> None:
    obs, _ = env.reset()
    good = obs["image"].copy()
    fake.image = bad
    time.sleep(0.1)
    obs, _, _, _, info = env.step(np.array([1.0, 0.0]))
    assert words in info["fault"] and not np.any(info["command"])
    assert np.array_equal(obs["image"], good)


@needs_nav
def test_any_frame_size_and_encoding_becomes_the_sim_size(env, fake) -> None:
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[:, :, 2] = 255  # blue
    fake.image = lambda: rgb_to_image(rgb, time.time(), encoding="bgr8")
    time.sleep(0.1)
    obs, _ = env.reset()
    assert obs["image"].shape == (96, 96, 3)
    assert obs["image"][..., 2].min() == 255 and obs["image"][..., 0].max() == 0


@needs_nav
def test_instruction_from_topic_and_bad_text_is_ignored(memory_pair, base_robot, fake) -> None:
    robot = load_robot("turtlebot_like.yaml", rate_hz=10, reset_timeout_s=3.0)
    env = RosRobotEnv(robot, transport=memory_pair[1])
    try:
        with pytest.raises(ValueError, match="no instruction"):
            env.reset()
        say = memory_pair[0].publisher(robot.topics.instruction, String)
        say.publish(String("find the red ball"))
        obs, _ = env.reset()
        assert obs["instruction"] == "find the red ball"
        say.publish(String("go <home>"))  # characters outside the instruction charset
        obs, *_ = env.step(np.zeros(2))
        assert obs["instruction"] == "find the red ball"
        say.publish(String("now go to the door"))
        obs, *_ = env.step(np.zeros(2))
        assert obs["instruction"] == "now go to the door"
    finally:
        env.close()


@needs_nav
def test_reset_close_and_exceptions_send_zero(env, fake, monkeypatch) -> None:
    env.reset()
    env.step(np.array([1.0, 0.0]))
    before = time.monotonic()
    env.reset()
    assert fake.commands.first_zero_after(before) is not None
    env.step(np.array([1.0, 0.0]))

    def broken() -> None:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(env.observer, "image", broken)
    before = time.monotonic()
    with pytest.raises(RuntimeError, match="exploded"):
        env.step(np.array([1.0, 0.0]))
    assert fake.commands.first_zero_after(before) is not None
    before = time.monotonic()
    env.close()
    assert fake.commands.first_zero_after(before) is not None


@needs_nav
def test_estop_through_the_env(env, fake) -> None:
    from vla_gym.sim2real.messages import Bool

    env.reset()
    env.step(np.array([1.0, 0.0]))
    fake.estop.publish(Bool(True))
    *_, info = env.step(np.array([1.0, 0.0]))
    assert info["estop"] and not np.any(info["command"])
    fake.estop.publish(Bool(False))
    *_, info = env.step(np.array([1.0, 0.0]))
    assert np.any(info["command"])


@needs_nav
def test_dry_run_env_publishes_no_command(memory_pair, base_robot, fake) -> None:
    env = RosRobotEnv(base_robot, transport=memory_pair[1], dry_run=True)
    env.reset()
    *_, info = env.step(np.array([1.0, 0.0]))
    env.close()
    assert np.any(info["command"]) and fake.commands.entries == []


def test_reset_without_a_robot_times_out_clearly(bus) -> None:
    robot = load_robot("servo_arm.yaml", reset_timeout_s=0.3, instruction="pick it up")
    env = RosRobotEnv(robot, transport=MemoryTransport(bus))
    try:
        with pytest.raises(TimeoutError, match="no image on /camera/color/image_raw"):
            env.reset()
    finally:
        env.close()


def test_tabletop_expert_episode_through_an_in_memory_bridge(arm_robot, bus) -> None:
    bridge = SimBridge("vla_gym/TabletopPick-v0", MemoryTransport(bus), arm_robot, seed=0,
                       expert=True).start()
    env = RosRobotEnv(arm_robot, transport=MemoryTransport(bus))
    expert = env.transport.subscribe(arm_robot.sim_topic("expert_action"), Float64MultiArray)
    try:
        assert env.action_contract is ARM_EE_DELTA
        obs, info = env.reset(seed=1)
        assert info["episode"]["seed"] == 1 and obs["instruction"] == info["episode"][
            "instruction"]
        closing = []
        for _ in range(100):
            obs, _, terminated, truncated, info = env.step(np.asarray(expert.latest().msg.data))
            # the robot's state is the sim's, quaternion sign and gripper velocity included
            np.testing.assert_allclose(obs["state"], bridge.observation["state"], atol=1e-6)
            closing.append(obs["state"][ARM_STATE_FIELDS.index("gripper_velocity")] < -0.1)
            if terminated or truncated:
                break
        assert terminated and info["is_success"]
        assert any(closing)  # the grasp showed in the velocity the joint states carried
    finally:
        env.close()
        bridge.close()
