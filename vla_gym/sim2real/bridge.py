"""Sim-as-robot: a vla_gym MuJoCo env served as a ROS 2 robot, in real time.

It publishes what the robot file says a robot publishes (camera, odometry or joint states and
end-effector pose) at their rates, and obeys the command topics (``cmd_vel`` Twist, or MoveIt
Servo TwistStamped plus a gripper command). Like ``diff_drive_controller`` it stops when
commands stop arriving for ``command_timeout_s`` (0.5 s). Sim-only extras live under
``/sim``: ``reset`` (String JSON ``{"id", "seed", "options"}``), ``episode`` (the answer),
``info`` (success and task terms each step) and ``expert_action`` (what the scripted expert
would do now, with ``expert=True``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np

from vla_gym.sim2real.config import RobotConfig, load_robot
from vla_gym.sim2real.convert import (
    array_to_odometry,
    header,
    pose_stamped,
    rgb_to_compressed,
    rgb_to_image,
    twist_to_arrays,
)
from vla_gym.sim2real.messages import (
    Bool,
    CompressedImage,
    Float64MultiArray,
    Image,
    JointState,
    MessageError,
    Odometry,
    PoseStamped,
    String,
    Twist,
    TwistStamped,
)
from vla_gym.sim2real.observer import ArmStateLayout
from vla_gym.sim2real.transports import (
    QOS_DEFAULT,
    QOS_LATCHED,
    QOS_SENSOR_DATA,
    Subscription,
    Transport,
)
from vla_gym.sim2real.transports.base import log
from vla_gym.types import IMAGE, INSTRUCTION, STATE

DEFAULT_ROBOTS = {"base_velocity": "turtlebot_like.yaml", "arm_ee_delta": "servo_arm.yaml"}


def default_robot(env: gym.Env) -> RobotConfig:
    """The shipped robot file matching ``env``'s action contract."""
    base: Any = env.unwrapped
    name = base.action_contract.name
    if name not in DEFAULT_ROBOTS:
        raise ValueError(f"no shipped robot file for action contract {name!r}; pass robot=...")
    return load_robot(DEFAULT_ROBOTS[name])


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


class SimBridge:
    """Serve ``env_id`` over ``transport``. ``run()`` blocks; ``start()`` runs it in a thread."""

    def __init__(self, env_id: str, transport: Transport, robot: RobotConfig | None = None, *,
                 env_kwargs: dict[str, Any] | None = None, seed: int | None = None,
                 expert: bool = False, auto_reset: bool = False) -> None:
        self.env_id, self.transport, self.auto_reset = env_id, transport, auto_reset
        self._robot_arg, self._env_kwargs = robot, dict(env_kwargs or {})
        self._seed, self._use_expert = seed, expert
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pending: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.env: Any = None  # a gym.Env once open() ran
        self.episode: dict[str, Any] = {}
        self.steps = 0
        self.done = False
        self._obs: dict[str, Any] = {}
        self._next_camera = self._next_state = self._next_instruction = 0.0

    @property
    def observation(self) -> dict[str, Any]:
        """The sim's own latest observation (what the robot's topics were built from)."""
        return self._obs

    def open(self) -> SimBridge:
        """Make the env, the topics and the first episode, in the thread that will step it
        (an OpenGL context belongs to the thread that made it current)."""
        if self.env is not None:
            return self
        kwargs = dict(self._robot_arg.sim_kwargs) if self._robot_arg is not None else {}
        kwargs.update(self._env_kwargs)
        self.env = gym.make(self.env_id, **kwargs)
        self.robot = self._robot_arg or default_robot(self.env)
        base: Any = self.env.unwrapped
        self.contract = base.action_contract
        self.dt = float(base.dt)
        self.expert = None
        if self._use_expert:
            from vla_gym.experts import make_expert

            self.expert = make_expert(self.env)
        self._make_topics()
        self.reset(seed=self._seed)
        return self

    # -- topics -------------------------------------------------------------------------------
    def _make_topics(self) -> None:
        r, t = self.robot, self.transport
        image_type: Any = CompressedImage if r.camera.compressed else Image
        self.command: Subscription[Any]
        self.camera_pub = t.publisher(r.camera.topic, image_type, QOS_SENSOR_DATA)
        if r.kind == "base":
            self.odom_pub = t.publisher(r.topics.odom, Odometry, QOS_DEFAULT)
            self.command = t.subscribe(r.topics.command, Twist, QOS_DEFAULT)
        else:
            self.joint_pub = t.publisher(r.topics.joint_states, JointState, QOS_DEFAULT)
            self.pose_pub = t.publisher(r.topics.ee_pose, PoseStamped, QOS_DEFAULT)
            self.command = t.subscribe(r.topics.command, TwistStamped, QOS_DEFAULT)
            self.gripper = t.subscribe(r.topics.gripper, Float64MultiArray, QOS_DEFAULT)
        self.estop = t.subscribe(r.topics.estop, Bool, QOS_DEFAULT)
        self.instruction_pub = t.publisher(r.topics.instruction, String, QOS_LATCHED)
        self.episode_pub = t.publisher(r.sim_topic("episode"), String, QOS_LATCHED)
        self.info_pub = t.publisher(r.sim_topic("info"), String, QOS_DEFAULT)
        self.expert_pub = t.publisher(r.sim_topic("expert_action"), Float64MultiArray,
                                      QOS_DEFAULT)
        t.subscribe(r.sim_topic("reset"), String, QOS_DEFAULT, callback=self._on_reset)

    def _on_reset(self, msg: String) -> None:
        try:
            request = json.loads(msg.data)
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            log.error("bridge: ignoring reset request %r: %s", msg.data[:80], exc)
            return
        with self._lock:
            self._pending = request

    # -- episode ------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None,
              request_id: str = "") -> dict[str, Any]:
        obs, info = self.env.reset(seed=seed, options=options)
        if self.expert is not None:
            self.expert.reset()
        self._obs, self.steps, self.done = obs, 0, False
        self.episode = {"id": request_id, "seed": seed, "instruction": obs[INSTRUCTION],
                        **{k: _jsonable(v) for k, v in info.items() if k in ("task", "target")}}
        self.episode_pub.publish(String(json.dumps(self.episode)))
        self.instruction_pub.publish(String(obs[INSTRUCTION]))
        self._publish_sensors(time.monotonic(), force=True)
        self._publish_info(info)
        return self.episode

    def _handle_reset_request(self) -> None:
        with self._lock:
            request, self._pending = self._pending, None
        if request is None:
            return
        request_id = str(request.get("id", ""))
        if request_id and request_id == self.episode.get("id"):
            self.episode_pub.publish(String(json.dumps(self.episode)))  # a repeated request
            return
        try:
            self.reset(request.get("seed"), request.get("options") or None, request_id)
        except (ValueError, TypeError) as exc:
            log.error("bridge: reset request failed: %s", exc)
            self.episode_pub.publish(String(json.dumps({"id": request_id, "error": str(exc)})))

    # -- stepping -----------------------------------------------------------------------------
    def action(self, now: float) -> np.ndarray:
        """The normalised action the latest command asks for; zero velocity when it is stale."""
        action = np.zeros(self.contract.dim)
        latest = self.command.latest()
        estop = self.estop.latest()
        stale = latest is None or now - latest.received > self.robot.command_timeout_s
        estopped = estop is not None and estop.msg.data
        if latest is not None and not (stale or estopped):
            try:
                twist = latest.msg if isinstance(latest.msg, Twist) else latest.msg.twist
                linear, angular = twist_to_arrays(twist)
            except MessageError as exc:
                log.error("bridge: ignoring command: %s", exc)
                linear, angular = np.zeros(3), np.zeros(3)
            scale = np.asarray(self.contract.scale)
            if self.robot.kind == "base":
                action[:2] = np.array([linear[0], angular[2]]) / scale[:2]
            else:
                action[:6] = np.concatenate([linear, angular]) * self.dt / scale[:6]
        if self.robot.kind == "arm":
            action[6] = self._grip()
        return np.clip(action, -1.0, 1.0)

    def _grip(self) -> float:
        latest = self.gripper.latest()
        arm = self.robot.arm
        if latest is None or not latest.msg.data or not np.isfinite(latest.msg.data[0]):
            return -1.0  # open until told otherwise
        span = arm.gripper_closed - arm.gripper_open
        return float(np.clip(2.0 * (latest.msg.data[0] - arm.gripper_open) / span - 1.0, -1, 1))

    def step_once(self) -> None:
        """One sim step with the latest command, then publish what is due."""
        self._handle_reset_request()
        now = time.monotonic()
        if self.done:
            if self.auto_reset:
                self.reset(seed=None)
            self._publish_sensors(now)
            return
        obs, _, terminated, truncated, info = self.env.step(self.action(now))
        self._obs, self.steps = obs, self.steps + 1
        self.done = bool(terminated or truncated)
        info.update(terminated=bool(terminated), truncated=bool(truncated))
        self._publish_sensors(time.monotonic())
        self._publish_info(info)

    def _publish_info(self, info: dict[str, Any]) -> None:
        keep = {k: _jsonable(v) for k, v in info.items()
                if isinstance(v, (bool, int, float, str, np.generic, np.ndarray))}
        self.info_pub.publish(String(json.dumps({**keep, "id": self.episode.get("id", ""),
                                                 "step": self.steps})))
        if self.expert is not None and not self.done:
            action = np.asarray(self.expert.act(self._obs), dtype=np.float64)
            self.expert_pub.publish(Float64MultiArray(data=action.tolist()))

    def _publish_sensors(self, now: float, force: bool = False) -> None:
        stamp, r = time.time(), self.robot
        if force or now >= self._next_camera:
            self._next_camera = max(self._next_camera + 1.0 / r.camera.rate_hz, now)
            self.camera_pub.publish(self._image_msg(stamp))
        if force or now >= self._next_state:
            self._next_state = max(self._next_state + 1.0 / r.state_rate_hz, now)
            self._publish_state(np.asarray(self._obs[STATE], dtype=np.float64), stamp)
        if now >= self._next_instruction:  # for late joiners whose QoS is volatile
            self._next_instruction = now + 1.0
            self.instruction_pub.publish(String(self._obs[INSTRUCTION]))

    def _image_msg(self, stamp: float) -> Image | CompressedImage:
        cam = self.robot.camera
        rgb = self._obs[IMAGE]
        if cam.compressed:
            return rgb_to_compressed(rgb, stamp, cam.frame_id)
        return rgb_to_image(rgb, stamp, cam.frame_id, cam.encoding)

    def _publish_state(self, state: np.ndarray, stamp: float) -> None:
        r = self.robot
        if r.kind == "base":
            x, y, yaw, v, omega = (float(s) for s in state[:5])
            self.odom_pub.publish(array_to_odometry(x, y, yaw, v, omega, stamp, r.frames.odom,
                                                    r.frames.base))
            return
        n, k = len(r.arm.joints), len(r.arm.gripper_joints)
        at = ArmStateLayout(n)
        # the opening and its velocity, shared evenly by the finger joints (they sum back)
        fingers = [float(state[at.opening]) / k] * k
        finger_velocities = [float(state[at.gripper_velocity]) / k] * k
        names = list(r.arm.joints) + list(r.arm.gripper_joints)
        self.joint_pub.publish(JointState(
            header(stamp, r.frames.base), names, [*state[:n].tolist(), *fingers],
            [*state[n:2 * n].tolist(), *finger_velocities], []))
        self.pose_pub.publish(pose_stamped(state[at.ee_pos], state[at.ee_quat], stamp,
                                           r.frames.base))

    # -- loop ---------------------------------------------------------------------------------
    def run(self, duration: float | None = None) -> None:
        """Step in real time (one env step per ``dt``) until ``stop()`` or ``duration``."""
        self.open()
        self._ready.set()
        end = None if duration is None else time.monotonic() + duration
        next_tick = time.monotonic()
        while not self._stop.is_set() and (end is None or time.monotonic() < end):
            self.step_once()
            next_tick += self.dt
            delay = next_tick - time.monotonic()
            if delay < -self.dt:  # fell behind (slow machine): run on, don't burst
                next_tick = time.monotonic()
            elif delay > 0 and self._stop.wait(delay):
                break

    def _run_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
            log.exception("bridge stopped")
        finally:
            if self.env is not None:
                self.env.close()

    def start(self, timeout: float = 30.0) -> SimBridge:
        """Run in a background thread; return once the first episode is being served."""
        self._thread = threading.Thread(target=self._run_thread, name="vla-sim-bridge",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"bridge for {self.env_id} did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"bridge for {self.env_id} failed to start") from self._error
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def close(self) -> None:
        """Stop the loop; the env is closed by the thread that used it."""
        self.stop()
        if self._thread is None and self.env is not None:
            self.env.close()
