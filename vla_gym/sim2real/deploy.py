"""Run a policy on a robot: fixed rate, latest frame, bounded queues, optional recording.

The loop is ``obs -> policy -> RosRobotEnv.step`` (safety layer, command, wait for the tick).
A policy slower than the period costs ticks, never a backlog: the env always hands over the
newest frame. Whatever happens -- Ctrl-C, a policy exception, a transport error -- the env is
closed, which publishes a zero command.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_gym.sim2real.config import RobotConfig, load_robot
from vla_gym.sim2real.convert import header, twist_from
from vla_gym.sim2real.messages import Float64MultiArray, Twist, TwistStamped
from vla_gym.sim2real.record import RECORD_FORMATS, Recorder, StepRecord
from vla_gym.sim2real.robot_env import RosRobotEnv
from vla_gym.sim2real.transports.base import QOS_DEFAULT, log
from vla_gym.types import IMAGE, INSTRUCTION, STATE

ActFn = Callable[[dict[str, Any], dict[str, Any]], np.ndarray]


@dataclass
class DeploySummary:
    episodes: int = 0
    steps: int = 0
    successes: int = 0
    faults: list[str] = field(default_factory=list)
    policy_ms_p50: float = 0.0
    policy_ms_p99: float = 0.0
    period_ms_p50: float = 0.0
    jitter_ms_p99: float = 0.0
    overruns: int = 0
    record: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def batch_of(obs: dict[str, Any]) -> dict[str, Any]:
    """One observation as a batch of one (images stacked, instructions a tuple of str)."""
    return {k: (v,) if k == INSTRUCTION else np.asarray(v)[None] for k, v in obs.items()}


def as_act_fn(policy: Any) -> ActFn:
    """Accept ``act(obs)`` objects, ``predict(obs_batch)`` objects, batch callables
    ``f(obs_batch, info_batch)`` (``vla_gym.policies.load_batch_policy``) and ``f(obs)``."""
    if hasattr(policy, "act"):
        return lambda obs, info: policy.act(obs)
    if hasattr(policy, "predict"):
        return lambda obs, info: np.asarray(policy.predict(batch_of(obs)))[0]
    if not callable(policy):
        raise TypeError(f"a policy must be callable or have act/predict, got {type(policy)}")
    try:
        arity = len(inspect.signature(policy).parameters)
    except (TypeError, ValueError):
        arity = 2
    if arity >= 2:
        return lambda obs, info: _first(policy(batch_of(obs), {k: [v] for k, v in info.items()}))
    return lambda obs, info: policy(obs)


def _first(out: Any) -> Any:
    if isinstance(out, tuple):  # (actions, features)
        return np.asarray(out[0])[0], np.asarray(out[1])[0]
    return np.asarray(out)[0]


def load_policy(spec: str, env: RosRobotEnv) -> Any:
    """``module:factory`` -> ``factory(env)``; a checkpoint path -> ``load_batch_policy``."""
    if spec == "expert":
        raise ValueError("--policy expert needs the simulator's privileged state, which a robot "
                         "does not have; serve the sim with `vla-gym bridge --expert` and use "
                         "--policy topic:/sim/expert_action, or pass a checkpoint")
    if spec.startswith("topic:"):
        return TopicPolicy(env, spec[len("topic:"):])
    if ":" in spec and not Path(spec).exists():
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)(env)
    from vla_gym.policies import load_batch_policy

    return load_batch_policy(spec)


class TopicPolicy:
    """Actions read from a Float64MultiArray topic (e.g. the bridge's ``/sim/expert_action``)."""

    def __init__(self, env: RosRobotEnv, topic: str) -> None:
        self.sub = env.transport.subscribe(topic, Float64MultiArray, QOS_DEFAULT)
        self.dim = env.action_contract.dim

    def act(self, obs: Any) -> np.ndarray:
        latest = self.sub.latest()
        if latest is None or len(latest.msg.data) != self.dim:
            return np.zeros(self.dim)
        return np.asarray(latest.msg.data)


def _command_msg(env: RosRobotEnv, velocity: list[float], stamp: float) -> Any:
    if env.robot.kind == "base":
        msg = Twist()
        msg.linear.x, msg.angular.z = velocity[0], velocity[1]
        return msg
    return TwistStamped(header(stamp, env.robot.frames.command),
                        twist_from(np.array(velocity[:3]), np.array(velocity[3:])))


class BagTap:
    """What went over the wire since the last step: new inputs, the command, the raw action."""

    def __init__(self, env: RosRobotEnv) -> None:
        self.env = env
        self.seen: dict[str, int] = {}

    def messages(self, action: np.ndarray, info: dict[str, Any],
                 stamp: float) -> list[tuple[str, Any]]:
        out = []
        for sub in self.env.observer.inputs.values():
            latest = sub.latest()
            if latest is not None and latest.count != self.seen.get(sub.topic):
                self.seen[sub.topic] = latest.count
                out.append((sub.topic, latest.msg))
        out.append((self.env.robot.topics.command, _command_msg(self.env, info["command"],
                                                                stamp)))
        out.append(("/vla/action", Float64MultiArray(data=[float(a) for a in action])))
        return out


def run_deploy(policy: Any, robot: RobotConfig | str | Path, *, transport: Any = "auto",
               episodes: int = 1, max_steps: int | None = None, seed: int | None = None,
               instruction: str | None = None, record: str | Path | None = None,
               record_formats: tuple[str, ...] = RECORD_FORMATS, publish_features: bool = False,
               dry_run: bool = False, transport_options: dict[str, Any] | None = None,
               env: RosRobotEnv | None = None) -> DeploySummary:
    """Run ``policy`` (anything ``as_act_fn`` takes, or a spec ``load_policy`` takes) for
    ``episodes`` episodes of at most ``max_steps`` (default: the sim env's limit)."""
    if env is None:
        robot = robot if isinstance(robot, RobotConfig) else load_robot(robot)
        env = RosRobotEnv(robot, transport=transport, instruction=instruction, dry_run=dry_run,
                          transport_options=transport_options)
    recorder = None
    summary = DeploySummary()
    try:
        if isinstance(policy, str):
            policy = load_policy(policy, env)
        act = as_act_fn(policy)
        limit = max_steps or env.max_episode_steps or 1000
        features = (env.transport.publisher(env.robot.topics.features, Float64MultiArray)
                    if publish_features else None)
        if record is not None:
            recorder = Recorder(record, record_formats, meta=_meta(env))
        timings: tuple[list[float], list[float]] = ([], [])
        for index in range(episodes):
            _episode(env, policy, act, index, limit, seed, recorder, features, summary, timings)
        _finish(summary, *timings, env)
    finally:
        env.close()  # zero command first, whatever happened above
        if recorder is not None:
            summary.record = recorder.close()
    return summary


def _meta(env: RosRobotEnv) -> dict[str, Any]:
    return {"robot": env.robot.name, "sim_env": env.robot.sim_env,
            "sim_kwargs": dict(env.robot.sim_kwargs), "rate_hz": env.rate_hz,
            "action_contract": env.action_contract.name, "keys": [IMAGE, STATE, INSTRUCTION]}


def _episode(env: RosRobotEnv, policy: Any, act: ActFn, index: int, limit: int,
             seed: int | None, recorder: Recorder | None, features: Any,
             summary: DeploySummary, timings: tuple[list[float], list[float]]) -> None:
    obs, info = env.reset(seed=None if seed is None else seed + index)
    if hasattr(policy, "reset"):
        policy.reset()
    tap = BagTap(env) if recorder is not None else None
    if recorder is not None:
        recorder.begin(index)
    success, last = False, time.monotonic()
    for _ in range(limit):
        stamp, start = time.time(), time.monotonic()
        out = act(obs, info)
        action, feats = out if isinstance(out, tuple) else (out, getattr(policy, "last_features",
                                                                         None))
        timings[0].append(time.monotonic() - start)
        if features is not None and feats is not None:
            features.publish(Float64MultiArray(data=np.asarray(feats, float).ravel().tolist()))
        next_obs, _, terminated, truncated, info = env.step(action)
        now = time.monotonic()
        timings[1].append(now - last)
        last = now
        if recorder is not None and tap is not None:
            recorder.add(StepRecord(stamp, obs, np.asarray(action, float).copy(),
                                    np.asarray(info["command"]), tap.messages(action, info,
                                                                              stamp)))
        if info["fault"]:
            summary.faults.append(info["fault"])
        summary.steps += 1
        obs, success = next_obs, bool(info.get("is_success", False))
        if terminated or truncated:
            break
    summary.episodes += 1
    summary.successes += int(success)
    if recorder is not None:
        recorder.end({"episode": index, "success": success, "instruction": obs[INSTRUCTION]})
    log.info("deploy: episode %d ended after %d steps (success=%s)", index, summary.steps, success)


def _finish(summary: DeploySummary, policy_s: list[float], periods: list[float],
            env: RosRobotEnv) -> None:
    if policy_s:
        summary.policy_ms_p50 = float(np.percentile(policy_s, 50) * 1e3)
        summary.policy_ms_p99 = float(np.percentile(policy_s, 99) * 1e3)
    if len(periods) > 1:
        dev = np.abs(np.asarray(periods[1:]) - env.period) * 1e3
        summary.period_ms_p50 = float(np.percentile(periods[1:], 50) * 1e3)
        summary.jitter_ms_p99 = float(np.percentile(dev, 99))
    summary.overruns = env._rate.overruns
    summary.faults = sorted(set(summary.faults))

