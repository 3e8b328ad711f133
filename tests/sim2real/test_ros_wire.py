"""Over the wire: RosRobotEnv <-> `vla-gym bridge` (a separate process) on DDS, loopback only.

Each test module uses its own ROS_DOMAIN_ID and a Cyclone config restricted to ``lo`` with
unicast discovery, so nothing leaves the host and parallel runs do not hear each other.
Tolerances for "direct vs through the bridge": the bridge runs the sim in real time and applies
the latest command each sim step, so on a busy machine a command can land a step (or several)
early or late and be applied twice or not at all. The expert is closed-loop, so the same seeded
episode must still succeed on the same target, ending within 5 cm (nav: base position) or 3 cm
(pick: the object's xy) of the direct run, in at most 50% + 10 more or fewer steps.
Typical runs here (2 cores shared with other jobs): nav 110-112 steps vs 109 direct, final
positions 0.1-0.2 mm apart; pick 45 vs 41 steps, object 1-9 mm apart. The worst seen, under a
load average of 6: a pick run of 62 steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import requires_dds
from sim2real_helpers import CommandLog

import vla_gym
from vla_gym.experts import make_expert
from vla_gym.sim2real.config import load_robot
from vla_gym.sim2real.messages import Bool, Float64MultiArray, Twist, TwistStamped
from vla_gym.sim2real.robot_env import RosRobotEnv

pytestmark = [requires_dds, pytest.mark.slow]
NAV, PICK = "vla_gym/NavGoTo-v0", "vla_gym/TabletopPick-v0"
NAV_SEED, PICK_SEED = 3, 0  # a short nav episode (~110 steps = 5.5 s at 20 Hz)
needs_nav = pytest.mark.skipif(NAV not in vla_gym.ENV_TABLE, reason=f"{NAV} not registered yet")
CAMERA_SCRIPT = """
import sys, time, numpy as np
from vla_gym.sim2real.transports.dds import DdsTransport, loopback_config
from vla_gym.sim2real.transports import QOS_SENSOR_DATA
from vla_gym.sim2real.convert import rgb_to_image
from vla_gym.sim2real.messages import Image
t = DdsTransport(int(sys.argv[1]), loopback_config())
pub = t.publisher(sys.argv[2], Image, QOS_SENSOR_DATA)
frame = np.full((480, 640, 3), 120, np.uint8)
while True:
    pub.publish(rgb_to_image(frame, time.time(), "camera_link"))
    time.sleep(1 / 30)
"""


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _bridge(env_id: str, domain: int) -> subprocess.Popen:
    return _spawn(["-m", "vla_gym.sim2real.cli", "bridge", "--env", env_id, "--transport",
                   "dds", "--domain-id", str(domain), "--loopback", "--expert", "--seed", "0"])


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stderr.read() if proc.stderr else ""


def _direct(env_id: str, seed: int) -> tuple[int, dict]:
    """The same seeded episode run directly, expert in the loop."""
    env = gym.make(env_id)
    expert = make_expert(env)
    obs, info = env.reset(seed=seed)
    steps, done = 0, False
    while not done and steps < 600:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps, done = steps + 1, terminated or truncated
    env.close()
    assert info["is_success"]
    return steps, info


def _through_ros(env: RosRobotEnv, seed: int) -> tuple[int, dict]:
    expert = env.transport.subscribe(env.robot.sim_topic("expert_action"), Float64MultiArray)
    obs, _ = env.reset(seed=seed)
    info: dict = {}
    for _ in range(env.max_episode_steps + 50):
        latest = expert.latest()
        action = np.asarray(latest.msg.data) if latest else np.zeros(env.action_space.shape)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    return info["sim"]["step"], info


@pytest.fixture(scope="module")
def nav_domain() -> int:
    return 100 + (os.getpid() * 17 + 61) % 130


@pytest.fixture(scope="module")
def nav_bridge(nav_domain: int):
    proc = _bridge(NAV, nav_domain)
    yield proc
    _stop(proc)


def _options(domain: int) -> dict:
    from vla_gym.sim2real.transports.dds import loopback_config

    return {"domain_id": domain, "config": loopback_config()}


@needs_nav
def test_nav_expert_reaches_the_target_through_ros2(nav_bridge, nav_domain, nav_robot) -> None:
    direct_steps, direct = _direct(NAV, NAV_SEED)
    with RosRobotEnv(nav_robot, transport="dds", transport_options=_options(nav_domain)) as env:
        steps, info = _through_ros(env, NAV_SEED)
    sim = info["sim"]
    assert info["is_success"] and sim["is_success"], sim
    assert sim["target"] == direct["target"]  # the same seeded episode
    assert np.allclose(sim["target_pos"], direct["target_pos"])
    assert abs(steps - direct_steps) <= 0.5 * direct_steps + 10, (steps, direct_steps)
    assert np.linalg.norm(np.subtract(sim["robot_pose"][:2], direct["robot_pose"][:2])) < 0.05


@needs_nav
def test_estop_over_dds_stops_commands_and_the_robot(nav_bridge, nav_domain, nav_robot) -> None:
    opts = _options(nav_domain)
    with RosRobotEnv(nav_robot, transport="dds", transport_options=opts) as env:
        commands = CommandLog()
        env.transport.subscribe(nav_robot.topics.command, Twist, callback=commands)
        estop = env.transport.publisher(nav_robot.topics.estop, Bool)
        env.reset(seed=NAV_SEED)
        for _ in range(20):
            obs, *_ = env.step(np.array([1.0, 0.0]))
        assert obs["state"][3] > 0.3  # moving at ~0.5 m/s
        pressed = time.monotonic()
        estop.publish(Bool(True))
        for _ in range(20):
            obs, *_, info = env.step(np.array([1.0, 0.0]))
        zero_at = commands.first_zero_after(pressed)
        assert zero_at is not None and zero_at - pressed < 2 * env.period
        assert all(not np.any(v) for _, v in commands.since(zero_at))
        assert info["estop"] and abs(obs["state"][3]) < 0.02  # the bridge obeyed: stopped
        estop.publish(Bool(False))
        time.sleep(0.2)
        *_, info = env.step(np.array([1.0, 0.0]))
        assert np.any(info["command"])


@needs_nav
def test_killed_camera_process_gives_zero_within_two_periods(nav_bridge, nav_domain,
                                                             nav_robot) -> None:
    robot = load_robot("turtlebot_like.yaml", topics={"sim": "/sim"},
                       camera={"topic": "/test_camera/image_raw"}, watchdog_timeout_s=0.07)
    camera = _spawn(["-c", CAMERA_SCRIPT, str(nav_domain), robot.camera.topic])
    try:
        with RosRobotEnv(robot, transport="dds", transport_options=_options(nav_domain)) as env:
            commands = CommandLog()
            env.transport.subscribe(robot.topics.command, Twist, callback=commands)
            env.reset(seed=NAV_SEED)
            moving = 0
            for _ in range(20):
                *_, info = env.step(np.array([0.6, 0.3]))
                moving += bool(np.any(info["command"]))
            assert moving >= 15  # the stream is steady enough to drive on
            camera.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            for _ in range(6):
                *_, info = env.step(np.array([0.6, 0.3]))
            zero_at = commands.first_zero_after(killed)
            assert zero_at is not None and zero_at - killed <= 2 * env.period
            assert all(not np.any(v) for _, v in commands.since(zero_at))
            assert "no fresh image on /test_camera/image_raw" in info["fault"]
    finally:
        _stop(camera, signal.SIGKILL)


def test_tabletop_expert_through_ros2_then_the_robot_dies(domain_id, arm_robot) -> None:
    """Pick through `vla-gym bridge`; then SIGKILL the bridge: zero command, then truncation."""
    direct_steps, direct = _direct(PICK, PICK_SEED)
    bridge = _bridge(PICK, domain_id)
    robot = load_robot("servo_arm.yaml", topics={"sim": "/sim"}, fault_timeout_s=0.5)
    try:
        with RosRobotEnv(robot, transport="dds", transport_options=_options(domain_id)) as env:
            steps, info = _through_ros(env, PICK_SEED)
            sim = info["sim"]
            assert info["is_success"] and sim["target"] == direct["target"], sim
            assert abs(steps - direct_steps) <= 0.5 * direct_steps + 10, (steps, direct_steps)
            xy = np.subtract(sim["target_pos"][:2], direct["target_pos"][:2])
            assert np.linalg.norm(xy) < 0.03, (sim["target_pos"], direct["target_pos"])
            commands = CommandLog()
            env.transport.subscribe(robot.topics.command, TwistStamped, callback=commands)
            bridge.send_signal(signal.SIGKILL)
            dead = time.monotonic()
            truncated = False
            for _ in range(60):
                *_, truncated, info = env.step(np.array([0.5, 0, 0, 0, 0, 0, -1.0]))
                if truncated:
                    break
            assert truncated and "no fresh" in info["fault"]
            zero_at = commands.first_zero_after(dead)
            assert zero_at is not None and zero_at - dead <= robot.watchdog_timeout_s + 0.1
    finally:
        _stop(bridge, signal.SIGKILL)


@needs_nav
def test_deploy_command_over_dds_records_a_bag_and_dataset(nav_bridge, nav_domain,
                                                           tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vla_gym.sim2real.cli import app
    from vla_gym.sim2real.record import load_episodes
    from vla_gym.sim2real.rosbag import read_bag

    robot_file = tmp_path / "robot.yaml"
    robot_file.write_text((Path(vla_gym.__file__).parent / "sim2real/robots/turtlebot_like.yaml")
                          .read_text().replace("max_velocity: [0.46, 1.5]",
                                               "max_velocity: [0.5, 1.5]"))
    result = CliRunner().invoke(app, [
        "deploy", "--policy", "topic:/sim/expert_action", "--robot", str(robot_file),
        "--transport", "dds", "--domain-id", str(nav_domain), "--loopback", "--sim-bridge",
        "--seed", str(NAV_SEED), "--max-steps", "40", "--record", str(tmp_path / "rec"),
        "--json", str(tmp_path / "summary.json")])
    assert result.exit_code == 0, result.output
    assert "40 steps" in result.output
    episode = load_episodes(tmp_path / "rec")[0]
    assert episode["image"].shape == (40, 96, 96, 3) and episode["action"].shape == (40, 2)
    topics = {topic for topic, _, _ in read_bag(tmp_path / "rec" / "rosbag2")}
    assert {"/camera/image_raw", "/odom", "/cmd_vel", "/vla/action"} <= topics
