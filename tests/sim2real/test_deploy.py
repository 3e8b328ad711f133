"""Deploy loop on an in-memory bridge: policy forms, features, recording, dry run, failures;
robot files; the bridge command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_dds

from vla_gym.sim2real.bridge import SimBridge
from vla_gym.sim2real.config import ROBOT_FILES, load_robot
from vla_gym.sim2real.deploy import as_act_fn, load_policy, run_deploy
from vla_gym.sim2real.messages import Float64MultiArray, TwistStamped
from vla_gym.sim2real.record import load_demos, load_episodes
from vla_gym.sim2real.robot_env import RosRobotEnv
from vla_gym.sim2real.rosbag import read_bag
from vla_gym.sim2real.transports.memory import MemoryTransport
from vla_gym.types import ARM_EE_DELTA

PICK = "vla_gym/TabletopPick-v0"


@pytest.fixture
def bridge(arm_robot, bus):
    server = SimBridge(PICK, MemoryTransport(bus), arm_robot, seed=0, expert=True).start()
    yield server
    server.close()


def _env(robot, bus, **kwargs) -> RosRobotEnv:
    return RosRobotEnv(robot, transport=MemoryTransport(bus), **kwargs)


class ExpertTopic:
    """A policy object (``act`` + ``reset``) reading the bridge's expert over the bus."""

    def __init__(self, env: RosRobotEnv) -> None:
        self.sub = env.transport.subscribe("/sim/expert_action", Float64MultiArray)
        self.resets = 0

    def act(self, obs):
        latest = self.sub.latest()
        return np.asarray(latest.msg.data) if latest else np.zeros(7)

    def reset(self) -> None:
        self.resets += 1


def test_expert_policy_object_with_recording(bridge, arm_robot, bus, tmp_path: Path) -> None:
    env = _env(arm_robot, bus)
    policy = ExpertTopic(env)
    summary = run_deploy(policy, arm_robot, env=env, episodes=2, seed=0,
                         record=tmp_path / "rec")
    assert summary.episodes == 2 and summary.successes == 2 and policy.resets == 2
    assert summary.period_ms_p50 == pytest.approx(20.0, abs=3.0)  # 50 Hz, the sim's rate
    assert summary.record["dropped"] == 0 and summary.record["episodes"] == 2
    episodes = load_episodes(tmp_path / "rec")
    assert len(episodes) == 2
    first = episodes[0]
    steps = len(first["action"])
    assert first["image"].shape == (steps, 96, 96, 3) and first["state"].shape == (steps, 21)
    assert first["action"].shape == (steps, 7) and first["command"].shape == (steps, 6)
    assert len(set(first["instruction"].tolist())) == 1
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    assert meta["action_contract"] == "arm_ee_delta" and meta["sim_env"] == PICK
    demos = load_demos(tmp_path / "rec")  # what the BC trainer samples from
    assert len(demos.actions) == summary.steps and demos.contract is ARM_EE_DELTA
    assert demos.images.shape[1:] == (96, 96, 3) and set(demos.episode.tolist()) == {0, 1}
    bag = read_bag(tmp_path / "rec" / "rosbag2")
    commands = [msg for topic, _, msg in bag if topic == arm_robot.topics.command]
    assert len(commands) == summary.steps and isinstance(commands[0], TwistStamped)
    images = [t for topic, t, _ in bag if topic == arm_robot.camera.topic]
    assert len(images) <= summary.steps  # each frame once, not once per step


def test_batch_callable_policy_and_features(bridge, arm_robot, bus) -> None:
    env = _env(arm_robot, bus)
    features = env.transport.subscribe(arm_robot.topics.features, Float64MultiArray)
    seen = []

    def batch_policy(obs_batch, info_batch):  # the load_batch_policy signature
        seen.append((obs_batch["image"].shape, obs_batch["instruction"]))
        return np.zeros((1, 7)), np.arange(4.0)[None]

    summary = run_deploy(batch_policy, arm_robot, env=env, max_steps=5,
                         publish_features=True)
    assert summary.steps == 5
    assert seen[0][0] == (1, 96, 96, 3) and isinstance(seen[0][1], tuple)
    assert features.latest().msg.data == [0.0, 1.0, 2.0, 3.0]


def test_policy_exception_leaves_a_zero_command(bridge, arm_robot, bus) -> None:
    env = _env(arm_robot, bus)
    commands: list[TwistStamped] = []
    MemoryTransport(bus).subscribe(arm_robot.topics.command, TwistStamped,
                                   callback=commands.append)
    calls = []

    def flaky(obs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("CUDA out of memory")
        return np.array([1.0, 0, 0, 0, 0, 0, -1.0])

    with pytest.raises(RuntimeError, match="out of memory"):
        run_deploy(flaky, arm_robot, env=env, max_steps=10)
    assert env.closed
    last = commands[-1].twist
    assert last.linear.x == 0.0 and commands[-2].twist.linear.x > 0.0


def test_dry_run_deploy_sends_nothing(bridge, arm_robot, bus) -> None:
    commands: list = []
    MemoryTransport(bus).subscribe(arm_robot.topics.command, TwistStamped,
                                   callback=commands.append)
    summary = run_deploy(lambda obs: np.ones(7), arm_robot, transport="memory", max_steps=5,
                         dry_run=True, transport_options={"bus": bus})
    assert summary.steps == 5 and commands == []


def test_policy_adapters_and_specs(bridge, arm_robot, bus) -> None:
    obs = {"image": np.zeros((96, 96, 3), np.uint8), "state": np.zeros(21, np.float32),
           "instruction": "pick up the cube"}

    class Predictor:
        def predict(self, batch):
            return np.full((len(batch["instruction"]), 7), 0.5)

    assert as_act_fn(Predictor())(obs, {}).tolist() == [0.5] * 7
    assert as_act_fn(lambda o: np.ones(7))(obs, {}).tolist() == [1.0] * 7
    with pytest.raises(TypeError):
        as_act_fn(42)
    env = _env(arm_robot, bus)
    try:
        with pytest.raises(ValueError, match="privileged state"):
            load_policy("expert", env)
        factory = load_policy("test_deploy:ExpertTopic", env)
        assert isinstance(factory, ExpertTopic)
        assert load_policy("topic:/sim/expert_action", env).dim == 7
    finally:
        env.close()


# -- robot files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ROBOT_FILES)
def test_shipped_robot_files_load(name: str) -> None:
    robot = load_robot(name)
    assert robot.topics.sim == ""  # a real robot: no sim reset handshake
    assert len(robot.limits.max_velocity) == robot.command_dim


@pytest.mark.parametrize("override, words", [
    ({"limits": {"max_velocity": [1.0]}}, "max_velocity needs 2"),
    ({"limits": {"max_velocity": [1.0, -1.0]}}, "positive"),
    ({"limits": {"workspace_low": [0, 0], "workspace_high": None}}, "both"),
    ({"kind": "legged"}, "kind must be"),
    ({"camera": {"topic": "/c", "fps": 30}}, "unknown key"),
    ({"watchdog_timeout_s": 0}, "positive"),
])
def test_bad_robot_files_are_refused(override: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        load_robot("turtlebot_like.yaml", **override)


# -- the bridge command ---------------------------------------------------------------------
@requires_dds
def test_bridge_command_serves_and_reports(domain_id: int, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vla_gym.sim2real.cli import app

    start = time.monotonic()
    result = CliRunner().invoke(app, [
        "bridge", "--env", PICK, "--transport", "dds", "--domain-id", str(domain_id),
        "--loopback", "--duration", "1.0", "--json", str(tmp_path / "bridge.json")])
    assert result.exit_code == 0, result.output
    assert "serving vla_gym/TabletopPick-v0 as 'servo_arm'" in result.output
    report = json.loads((tmp_path / "bridge.json").read_text())
    assert report["steps"] >= 25 and time.monotonic() - start < 30  # ~50 steps/s in real time
    bad = CliRunner().invoke(app, ["bridge", "--env", "vla_gym/Nope-v0"])
    assert bad.exit_code != 0


def test_checkpoint_runs_on_the_robot_env(bridge, arm_robot, bus, tmp_path: Path) -> None:
    """A saved VLAPolicy, loaded by path as `vla-gym deploy --policy DIR` does."""
    pytest.importorskip("torch", reason="policies need torch (pip install 'vla_gym[vla]')")
    from vla_gym.policies import VLAPolicy

    VLAPolicy.from_preset("small").save_pretrained(tmp_path / "ckpt")
    env = _env(arm_robot, bus)
    summary = run_deploy(str(tmp_path / "ckpt"), arm_robot, env=env, max_steps=8)
    assert summary.steps == 8 and summary.policy_ms_p50 > 0.0, summary
    assert not summary.faults
