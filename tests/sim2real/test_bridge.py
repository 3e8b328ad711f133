"""The sim bridge as a robot: command timeout, what it publishes, resets (in-memory bus)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import vla_gym
from vla_gym.sim2real.bridge import SimBridge
from vla_gym.sim2real.convert import odometry_to_array
from vla_gym.sim2real.messages import (
    Float64MultiArray,
    Image,
    JointState,
    Odometry,
    PoseStamped,
    String,
    Twist,
)
from vla_gym.sim2real.robot_env import RosRobotEnv
from vla_gym.sim2real.transports.memory import MemoryTransport

NAV = "vla_gym/NavGoTo-v0"
needs_nav = pytest.mark.skipif(NAV not in vla_gym.ENV_TABLE, reason=f"{NAV} not registered yet")


@needs_nav
def test_base_stops_on_its_own_after_the_command_timeout(bus) -> None:
    bridge = SimBridge(NAV, MemoryTransport(bus), seed=3).start()
    client = MemoryTransport(bus)
    odom = client.subscribe(bridge.robot.topics.odom, Odometry)
    cmd = client.publisher(bridge.robot.topics.command, Twist)
    try:
        drive = Twist()
        drive.linear.x = 0.3
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            cmd.publish(drive)
            time.sleep(0.05)
        last_command = time.monotonic()
        speeds = []
        while time.monotonic() - last_command < 1.2:
            speeds.append((time.monotonic() - last_command,
                           odometry_to_array(odom.latest().msg)[3]))
            time.sleep(0.02)
    finally:
        bridge.close()
    before = [v for t, v in speeds if t < 0.4]
    after = [v for t, v in speeds if t > 0.5 + 0.3 / 1.0 + 0.15]  # timeout + braking at 1 m/s^2
    assert min(before) > 0.2  # still obeying the last command inside the 0.5 s timeout
    assert max(abs(v) for v in after) < 0.02


def test_arm_bridge_publishes_joint_states_pose_and_obeys_the_gripper(arm_robot, bus) -> None:
    bridge = SimBridge("vla_gym/TabletopPick-v0", MemoryTransport(bus), arm_robot,
                       seed=0).start()
    client = MemoryTransport(bus)
    joints = client.subscribe(arm_robot.topics.joint_states, JointState)
    pose = client.subscribe(arm_robot.topics.ee_pose, PoseStamped)
    image = client.subscribe(arm_robot.camera.topic, Image)
    gripper = client.publisher(arm_robot.topics.gripper, Float64MultiArray)
    try:
        time.sleep(0.2)
        names = joints.latest().msg.name
        assert names == [*arm_robot.arm.joints, *arm_robot.arm.gripper_joints]
        opening = sum(joints.latest().msg.position[-2:])
        assert opening > 0.05  # open at reset
        assert 0.2 < pose.latest().msg.pose.position.z < 0.3
        assert image.latest().msg.encoding == "rgb8" and image.latest().msg.width == 96
        for _ in range(40):
            gripper.publish(Float64MultiArray(data=[arm_robot.arm.gripper_closed]))
            time.sleep(0.02)
        assert sum(joints.latest().msg.position[-2:]) < opening / 2
        assert bridge.action(time.monotonic())[6] == pytest.approx(1.0)
    finally:
        bridge.close()


def test_reset_requests_and_refusals(arm_robot, bus) -> None:
    bridge = SimBridge("vla_gym/TabletopPick-v0", MemoryTransport(bus), arm_robot,
                       seed=0).start()
    env = RosRobotEnv(arm_robot, transport=MemoryTransport(bus))
    episodes = env.transport.subscribe(arm_robot.sim_topic("episode"), String)
    try:
        _, info = env.reset(seed=4, options={"instruction": "pick up the thing"})
        assert info["episode"]["seed"] == 4
        assert json.loads(episodes.latest().msg.data)["instruction"] == "pick up the thing"
        with pytest.raises(ValueError, match="refused the reset.*unknown reset option"):
            env.reset(seed=1, options={"colour": "red"})
        # a malformed request is logged and ignored; the bridge keeps serving
        env.transport.publisher(arm_robot.sim_topic("reset"), String).publish(String("{oops"))
        obs, _ = env.reset(seed=2)
        assert np.isfinite(obs["state"]).all()
    finally:
        env.close()
        bridge.close()
