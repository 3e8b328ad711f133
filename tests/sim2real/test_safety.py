"""Safety layer: limits hold for any policy output; watchdog, e-stop, dry run, close."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim2real_helpers import CommandLog

from vla_gym.sim2real.config import load_robot
from vla_gym.sim2real.convert import array_to_odometry, rgb_to_image
from vla_gym.sim2real.messages import Bool, Image, Odometry, Twist
from vla_gym.sim2real.safety import CommandFilter, SafetyLayer
from vla_gym.types import ARM_EE_DELTA, BASE_VELOCITY

BASE = load_robot("turtlebot_like.yaml")
ARM = load_robot("servo_arm.yaml")
PERIOD = 0.05
EPS = 1e-9

wild = st.floats(allow_nan=True, allow_infinity=True, width=64)
any_action = st.one_of(st.lists(wild, min_size=1, max_size=9),
                       st.lists(st.floats(-3, 3), min_size=7, max_size=7))


def _previous(limits: np.ndarray) -> st.SearchStrategy[np.ndarray]:
    n = len(limits)
    return st.lists(st.floats(-1, 1), min_size=n, max_size=n).map(
        lambda v: np.asarray(v) * limits)


def _violation(pos: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.maximum(low - pos, 0.0) + np.maximum(pos - high, 0.0)


@given(any_action, st.lists(st.floats(-8, 8), min_size=2, max_size=2),
       st.floats(-np.pi, np.pi), st.floats(0, 0.5), st.data())
@settings(max_examples=300, deadline=None)
def test_base_limits_hold_for_any_policy_output(action, xy, yaw, dt, data) -> None:
    filt = CommandFilter(BASE, BASE_VELOCITY, PERIOD)
    filt.previous = data.draw(_previous(filt.max_velocity))
    prev = filt.previous.copy()
    pose = np.array([*xy, yaw])
    cmd = filt(np.asarray(action[:2] if len(action) > 2 else action), pose, dt)
    v = cmd.velocity
    assert v.shape == (2,) and np.all(np.isfinite(v))
    assert np.all(np.abs(v) <= filt.max_velocity + EPS)
    step = filt.max_accel * min(dt, 10 * PERIOD)
    braking = (np.abs(v) <= np.abs(prev) + EPS) & (v * prev >= -EPS)
    assert np.all((np.abs(v - prev) <= step + 1e-7) | braking)
    moved = pose[:2] + v[0] * PERIOD * np.array([np.cos(yaw), np.sin(yaw)])
    low, high = filt.low, filt.high
    assert _violation(moved, low, high).sum() <= _violation(pose[:2], low, high).sum() + 1e-9


@given(any_action, st.lists(st.floats(-1, 1.5), min_size=3, max_size=3), st.floats(0, 0.5),
       st.data())
@settings(max_examples=300, deadline=None)
def test_arm_limits_hold_for_any_policy_output(action, ee, dt, data) -> None:
    filt = CommandFilter(ARM, ARM_EE_DELTA, PERIOD)
    filt.previous = data.draw(_previous(filt.max_velocity))
    pos = np.asarray(ee)
    cmd = filt(np.asarray(action), pos, dt)
    v = cmd.velocity
    assert v.shape == (6,) and np.all(np.isfinite(v))
    assert np.all(np.abs(v) <= filt.max_velocity + EPS)
    moved = pos + v[:3] * PERIOD
    assert np.all(_violation(moved, filt.low, filt.high) <= _violation(pos, filt.low, filt.high)
                  + 1e-9)
    if cmd.grip is not None:
        assert ARM.arm.gripper_closed - EPS <= cmd.grip <= ARM.arm.gripper_open + EPS


def test_non_finite_or_misshaped_actions_give_zero() -> None:
    filt = CommandFilter(BASE, BASE_VELOCITY, PERIOD)
    filt.previous[:] = 0.3
    for bad in ([np.nan, 0.0], [0.0, np.inf], [1.0, 2.0, 3.0], []):
        cmd = filt(np.asarray(bad), np.zeros(3), PERIOD)
        assert not np.any(cmd.velocity) and cmd.reason
    assert not np.any(filt.previous)


def test_arm_delta_becomes_twist_at_the_control_rate() -> None:
    filt = CommandFilter(ARM, ARM_EE_DELTA, period=0.1)
    cmd = filt(np.array([0.5, 0, 0, 0, 0, 0.2, 1.0]), np.array([0.5, 0.0, 0.2]), 0.1)
    # 0.5 * 1 cm per step at 10 Hz = 0.05 m/s; 0.2 * 0.05 rad per step = 0.1 rad/s
    assert np.allclose(cmd.velocity, [0.05, 0, 0, 0, 0, 0.1])
    assert cmd.grip == pytest.approx(ARM.arm.gripper_closed)


def test_velocity_accel_and_workspace_limits() -> None:
    filt = CommandFilter(BASE, BASE_VELOCITY, PERIOD)
    cmd = filt(np.array([1.0, 0.0]), np.zeros(3), PERIOD)
    assert cmd.velocity[0] == pytest.approx(1.0 * PERIOD)  # 1 m/s^2 from rest
    assert "acceleration limit" in cmd.notes
    for _ in range(40):
        cmd = filt(np.array([1.0, 0.0]), np.zeros(3), PERIOD)
    assert cmd.velocity[0] == pytest.approx(0.46)  # the robot file's limit, not 0.5
    at_fence = filt(np.array([1.0, 0.0]), np.array([6.0, 0.0, 0.0]), PERIOD)
    assert at_fence.velocity[0] == 0.0 and "workspace" in at_fence.notes
    facing_in = filt(np.array([1.0, 0.0]), np.array([6.0, 0.0, np.pi]), PERIOD)
    assert facing_in.velocity[0] == 0.0 or facing_in.velocity[0] > 0.0  # may drive back in
    blind = filt(np.array([1.0, 1.0]), None, PERIOD)
    assert blind.velocity[0] == 0.0 and blind.velocity[1] != 0.0


# -- the layer, on an in-memory robot ------------------------------------------------------
class FakeBase:
    """Publishes camera and odometry on demand; logs the commands it receives."""

    def __init__(self, transport) -> None:
        self.cam = transport.publisher(BASE.camera.topic, Image)
        self.odom = transport.publisher(BASE.topics.odom, Odometry)
        self.estop = transport.publisher(BASE.topics.estop, Bool)
        self.commands = CommandLog()
        transport.subscribe(BASE.topics.command, Twist, callback=self.commands)

    def tick(self, camera: bool = True) -> None:
        if camera:
            self.cam.publish(rgb_to_image(np.zeros((8, 8, 3), np.uint8)))
        self.odom.publish(array_to_odometry(0, 0, 0, 0, 0, time.time()))


def _layer(transport, dry_run=False) -> SafetyLayer:
    inputs = {"image": transport.subscribe(BASE.camera.topic, Image),
              "odometry": transport.subscribe(BASE.topics.odom, Odometry)}
    return SafetyLayer(BASE, BASE_VELOCITY, transport, PERIOD, inputs, dry_run=dry_run)


def test_watchdog_zeroes_when_camera_goes_quiet(memory_pair) -> None:
    robot_side, policy_side = memory_pair
    robot = FakeBase(robot_side)
    layer = _layer(policy_side)
    try:
        robot.tick()
        layer.arm()
        cmd = layer.send(np.array([1.0, 0.5]), np.zeros(3))
        assert np.any(cmd.velocity) and not cmd.reason
        quiet_from = time.monotonic()
        while time.monotonic() - quiet_from < BASE.watchdog_timeout_s + 4 * PERIOD:
            robot.tick(camera=False)  # odometry keeps coming, the camera does not
            time.sleep(0.01)
        zero_at = robot.commands.first_zero_after(quiet_from)
        assert zero_at is not None
        assert zero_at - quiet_from <= BASE.watchdog_timeout_s + PERIOD
        assert "image" in layer.events[-1][1]
        refused = layer.send(np.array([1.0, 0.0]), np.zeros(3))
        assert not np.any(refused.velocity) and "no fresh image" in refused.reason
    finally:
        layer.close()


def test_estop_stops_now_and_holds_until_released(memory_pair) -> None:
    robot_side, policy_side = memory_pair
    robot = FakeBase(robot_side)
    layer = _layer(policy_side)
    try:
        robot.tick()
        layer.arm()
        assert np.any(layer.send(np.array([1.0, 0.0]), np.zeros(3)).velocity)
        pressed = time.monotonic()
        robot.estop.publish(Bool(True))
        assert robot.commands.first_zero_after(pressed) is not None  # synchronous: at once
        robot.tick()
        assert layer.send(np.array([1.0, 0.0]), np.zeros(3)).reason == "e-stop engaged"
        robot.estop.publish(Bool(False))
        assert np.any(layer.send(np.array([1.0, 0.0]), np.zeros(3)).velocity)
    finally:
        layer.close()


def test_stalled_control_loop_is_stopped(memory_pair) -> None:
    robot_side, policy_side = memory_pair
    robot = FakeBase(robot_side)
    layer = _layer(policy_side)
    try:
        robot.tick()
        layer.arm()
        sent = time.monotonic()
        layer.send(np.array([1.0, 0.0]), np.zeros(3))
        while time.monotonic() - sent < layer.stall_timeout + 0.2:
            robot.tick()  # inputs fresh, but the policy never sends again
            time.sleep(0.01)
        assert robot.commands.first_zero_after(sent + 0.001) is not None
        assert "control loop" in layer.events[-1][1]
    finally:
        layer.close()


def test_dry_run_publishes_nothing(memory_pair) -> None:
    robot_side, policy_side = memory_pair
    robot = FakeBase(robot_side)
    layer = _layer(policy_side, dry_run=True)
    robot.tick()
    layer.arm()
    cmd = layer.send(np.array([1.0, 0.0]), np.zeros(3))
    layer.close()
    assert np.any(cmd.velocity)  # computed ...
    assert robot.commands.entries == []  # ... but never sent
    assert policy_side.bus.published.get(BASE.topics.command, 0) == 0


def test_close_sends_zero(memory_pair) -> None:
    robot_side, policy_side = memory_pair
    robot = FakeBase(robot_side)
    layer = _layer(policy_side)
    robot.tick()
    layer.arm()
    layer.send(np.array([1.0, 0.0]), np.zeros(3))
    closing = time.monotonic()
    layer.close()
    assert robot.commands.first_zero_after(closing) is not None
