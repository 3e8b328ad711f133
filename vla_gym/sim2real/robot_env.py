"""``RosRobotEnv``: a real robot behind the same Gymnasium interface as the sim env it mirrors.

The observation and action spaces are the sim env's own objects, and the action contract is the
very object the sim declares, so a policy means the same thing on both sides. Each ``step``
publishes the filtered command, waits for the next tick of a fixed wall-clock rate and returns
the latest observation (latest-frame semantics: nothing queues). Every path out -- reset,
close, an exception, a fault -- leaves a zero command on the wire.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from vla_gym.sim2real.config import RobotConfig, load_robot
from vla_gym.sim2real.messages import MessageError, String
from vla_gym.sim2real.observer import RobotObserver, state_dim
from vla_gym.sim2real.safety import SafetyLayer
from vla_gym.sim2real.transports import QOS_DEFAULT, Transport, make_transport
from vla_gym.sim2real.transports.base import log
from vla_gym.types import IMAGE, INSTRUCTION, STATE

SYNC_MODES = ("rate", "frame")


class Rate:
    """Deadline-based ticks (no drift); a late loop re-anchors instead of bursting to catch up."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.next = time.monotonic() + self.period
        self.overruns = 0

    def reset(self) -> None:
        self.next = time.monotonic() + self.period

    def sleep(self) -> float:
        """Sleep to the next tick; return how late we woke (s, >= 0)."""
        now = time.monotonic()
        if now > self.next + self.period:
            self.overruns += 1
            self.next = now
        else:
            time.sleep(max(self.next - now, 0.0))
        late = max(time.monotonic() - self.next, 0.0)
        self.next += self.period
        return late


def describe_spaces(sim: gym.Env, robot: RobotConfig) -> list[str]:
    """What the robot file cannot supply of the sim's observation space (empty: all good)."""
    problems = []
    space = sim.observation_space
    if not isinstance(space, gym.spaces.Dict):
        return [f"{robot.sim_env} has a {type(space).__name__} observation space, not Dict"]
    for key, sub in space.spaces.items():
        if key == IMAGE:
            if sub.shape is None or sub.shape[0] != sub.shape[1]:
                problems.append(f"the sim image {sub.shape} is not square")
        elif key == STATE:
            if sub.shape != (state_dim(robot),):
                problems.append(f"sim state has shape {sub.shape}; the {robot.kind} robot file "
                                f"yields ({state_dim(robot)},)")
        elif key != INSTRUCTION:
            problems.append(f"the robot file has no source for observation key {key!r} "
                            "(use obs_mode='rgb' and the main camera only)")
    if IMAGE not in space.spaces:
        problems.append("the sim env has no 'image' key (obs_mode='state'?)")
    contract = _base(sim).action_contract
    if contract.name != robot.action_contract:
        problems.append(f"robot file says action contract {robot.action_contract!r}, "
                        f"{robot.sim_env} uses {contract.name!r}")
    expected = 2 if robot.kind == "base" else 7
    if contract.dim != expected:
        problems.append(f"a {robot.kind} robot takes {expected}-D actions, the contract has "
                        f"{contract.dim}")
    return problems


def _base(env: gym.Env) -> Any:
    """The innermost env, typed loosely: vla_gym envs add ``action_contract`` and ``dt``."""
    return env.unwrapped


class RosRobotEnv(gym.Env):
    """A ROS 2 robot as a Gymnasium env with the mirrored sim env's spaces.

    ``robot``: a robot file (path, shipped name or ``RobotConfig``). ``instruction``: fixed
    text; otherwise the instruction topic, then the file's default. ``sync="frame"`` waits for
    a new camera frame instead of the next tick (lowest latency, for benchmarks).

    The reward is always 0 (a robot has no reward function); with a sim bridge, its episode
    info -- success, reward terms -- arrives in ``info["sim"]`` and success terminates.
    ``info`` also carries the command on the wire, the active fault, limits that acted,
    the e-stop state, input ages and how late the tick was.
    """

    metadata = {"render_modes": []}

    def __init__(self, robot: RobotConfig | str | Path, *, transport: str | Transport = "auto",
                 instruction: str | None = None, dry_run: bool = False, sync: str = "rate",
                 transport_options: dict[str, Any] | None = None) -> None:
        self.robot = robot if isinstance(robot, RobotConfig) else load_robot(robot)
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}, got {sync!r}")
        self.sync, self.dry_run = sync, dry_run
        self._mirror_sim()
        self.rate_hz = self.robot.rate_hz or 1.0 / self.sim_dt
        self.period = 1.0 / self.rate_hz
        self._instruction_param = self._check_instruction(instruction) if instruction else None
        self._owns_transport = not isinstance(transport, Transport)
        self.transport: Transport = (
            transport if isinstance(transport, Transport)
            else make_transport(transport, **(transport_options or {})))
        try:
            self.observer = RobotObserver(self.robot, self.transport, self.image_size)
            self.safety = SafetyLayer(self.robot, self.action_contract, self.transport,
                                      self.period, self.observer.inputs, dry_run=dry_run)
            self._setup_sim_topics()
        except Exception:
            self._close_transport()
            raise
        self._rate = Rate(self.rate_hz)
        self._obs: dict[str, Any] | None = None
        self._episode_id = ""
        self._fault_since: float | None = None
        self.closed = False

    # -- construction -------------------------------------------------------------------------
    def _mirror_sim(self) -> None:
        """Copy spaces, contract and dt from the sim env; refuse a robot file that cannot match."""
        sim = gym.make(self.robot.sim_env, **self.robot.sim_kwargs)
        try:
            problems = describe_spaces(sim, self.robot)
            if problems:
                raise ValueError(f"robot {self.robot.name!r} cannot mirror {self.robot.sim_env}: "
                                 + "; ".join(problems))
            space: Any = sim.observation_space
            self.observation_space = space
            self.action_space = sim.action_space
            base = _base(sim)
            self.action_contract = base.action_contract
            self.sim_dt = float(base.dt)
            self.image_size = int(space[IMAGE].shape[0])
            self.max_episode_steps = sim.spec.max_episode_steps if sim.spec else None
            accel = getattr(base, "accel_limits", None)
            limits = self.robot.limits
            if limits.max_accel is None and accel is not None \
                    and len(accel) == self.robot.command_dim:
                self.robot = replace(self.robot, limits=replace(
                    limits, max_accel=tuple(float(a) for a in accel)))
        finally:
            sim.close()

    def _setup_sim_topics(self) -> None:
        """A sim bridge also takes reset requests and reports episode info (not a real robot)."""
        self._reset_pub = self._episode_sub = self._info_sub = None
        if self.robot.topics.sim:
            t = self.transport
            self._reset_pub = t.publisher(self.robot.sim_topic("reset"), String, QOS_DEFAULT)
            self._episode_sub = t.subscribe(self.robot.sim_topic("episode"), String, QOS_DEFAULT)
            self._info_sub = t.subscribe(self.robot.sim_topic("info"), String, QOS_DEFAULT)

    def _check_instruction(self, text: str) -> str:
        from vla_gym.envs.base import check_instruction

        return check_instruction(text)

    # -- episode ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self._require_open()
        self.safety.disarm()
        self.safety.stop("reset")
        episode = self._request_sim_reset(seed, options) if self._reset_pub else {}
        since = time.monotonic()
        self._wait_fresh_inputs(since)
        self.observer.mark_start()
        text = (options or {}).get("instruction") or episode.get("instruction")
        self._current_instruction = self._resolve_instruction(text)
        self._obs = self._observe()
        self._fault_since = None
        self._rate.reset()
        self.safety.arm()
        info = {"episode": episode, "rate_hz": self.rate_hz, "transport": self.transport.name}
        return self._obs, info

    def _request_sim_reset(self, seed: int | None, options: dict[str, Any] | None) -> dict:
        """Ask the bridge for a new episode; repeat until acknowledged (discovery may lag)."""
        assert self._reset_pub is not None and self._episode_sub is not None
        request_id = uuid.uuid4().hex
        request = String(json.dumps({"id": request_id, "seed": seed, "options": options or {}}))
        deadline = time.monotonic() + self.robot.reset_timeout_s
        seen = self._episode_sub.count
        while time.monotonic() < deadline:
            self._reset_pub.publish(request)
            got = self._episode_sub.wait_newer(seen, 0.5)
            while got is not None:
                seen = got.count
                episode = json.loads(got.msg.data)
                if episode.get("id") == request_id:
                    if "error" in episode:
                        raise ValueError(f"sim bridge refused the reset: {episode['error']}")
                    self._episode_id = request_id
                    return episode
                got = self._episode_sub.wait_newer(seen, 0.05)
        raise TimeoutError(f"no answer from a sim bridge on {self.robot.sim_topic('reset')} "
                           f"within {self.robot.reset_timeout_s} s")

    def _wait_fresh_inputs(self, since: float) -> None:
        deadline = since + self.robot.reset_timeout_s
        for name, sub in self.observer.inputs.items():
            while True:
                latest = sub.latest()
                if latest is not None and latest.received >= since:
                    break
                if sub.wait_newer(sub.count, max(deadline - time.monotonic(), 0.0)) is None:
                    raise TimeoutError(
                        f"robot {self.robot.name!r}: no {name} on {sub.topic} within "
                        f"{self.robot.reset_timeout_s} s; is the robot (or `vla-gym bridge`) "
                        "running on this ROS_DOMAIN_ID?")

    def _resolve_instruction(self, from_episode: str | None) -> str:
        text = self._instruction_param or from_episode or self.observer.instruction() \
            or self.robot.instruction
        if not text:
            raise ValueError("no instruction: pass instruction=..., publish a std_msgs/String "
                             f"on {self.robot.topics.instruction}, or set it in the robot file")
        return self._check_instruction(text)

    # -- stepping -----------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        self._require_open()
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        try:
            bad_input = self._input_fault()
            cmd = (self.safety.stop(bad_input) if bad_input
                   else self.safety.send(action, self.observer.safety_pose()))
            late = self._wait()
            obs, fault = self._observe_safely()
        except BaseException:
            self.safety.stop("exception in step")
            raise
        now = time.monotonic()
        fault = fault or cmd.reason or None
        truncated = self._fault_timed_out(fault, now)
        sent = self.safety.last_command  # what is on the wire now (zero if a fault struck)
        info = {"command": sent.velocity.tolist(), "grip": sent.grip, "fault": fault,
                "limits": cmd.notes, "estop": self.safety.estopped, "late_s": late,
                "input_age_s": self.observer.ages(now)}
        terminated = self._sim_feedback(info)
        return obs, 0.0, terminated, truncated, info

    def _input_fault(self) -> str | None:
        """Never command on an unusable latest frame or state (decoding is cached per frame)."""
        try:
            self.observer.image()
            self.observer.state()
        except MessageError as exc:
            return str(exc)
        return None

    def _wait(self) -> float:
        if self.sync == "rate":
            return self._rate.sleep()
        cam = self.observer.camera
        cam.wait_newer(cam.count, self.robot.watchdog_timeout_s)
        return 0.0

    def _observe(self) -> dict[str, Any]:
        obs: dict[str, Any] = {IMAGE: self.observer.image(), STATE: self.observer.state()}
        obs[INSTRUCTION] = self._current_instruction
        return obs

    def _observe_safely(self) -> tuple[dict[str, Any], str | None]:
        """The latest observation; on a bad input keep the last good one and stop the robot."""
        text = self.observer.instruction()
        if text and not self._instruction_param and text != self._current_instruction:
            try:
                self._current_instruction = self._check_instruction(text)
            except ValueError as exc:
                log.error("ignoring instruction %r: %s", text, exc)
        try:
            self._obs = self._observe()
            fault = self.safety.fault()
        except MessageError as exc:
            fault = str(exc)
            self.safety.stop(fault)
        assert self._obs is not None
        return self._obs, fault

    def _fault_timed_out(self, fault: str | None, now: float) -> bool:
        if fault is None:
            self._fault_since = None
            return False
        self._fault_since = self._fault_since or now
        if now - self._fault_since > self.robot.fault_timeout_s:
            log.error("robot %s: fault for %.1f s (%s); truncating the episode",
                      self.robot.name, now - self._fault_since, fault)
            return True
        return False

    def _sim_feedback(self, info: dict[str, Any]) -> bool:
        """With a sim bridge, its episode info (success, target) comes back over a topic."""
        latest = None if self._info_sub is None else self._info_sub.latest()
        if latest is None:
            return False
        try:
            sim_info = json.loads(latest.msg.data)
        except ValueError:
            return False
        if sim_info.get("id") != self._episode_id:
            return False
        info["sim"] = sim_info
        info["is_success"] = bool(sim_info.get("is_success", False))
        return info["is_success"]

    # -- teardown -----------------------------------------------------------------------------
    def _require_open(self) -> None:
        if self.closed:
            raise RuntimeError("RosRobotEnv is closed")

    def close(self) -> None:
        """Zero command, stop the watchdog, release the transport (if this env made it)."""
        if getattr(self, "closed", True):
            return
        self.closed = True
        try:
            self.safety.close()
        finally:
            self._close_transport()

    def _close_transport(self) -> None:
        if self._owns_transport:
            self.transport.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
