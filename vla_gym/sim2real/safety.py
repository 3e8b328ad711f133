"""The safety layer between a policy and a robot.

``CommandFilter`` is the pure part: any policy output (NaN, inf, 1e9, wrong sign) becomes a
finite command within the declared velocity limits, acceleration limits and workspace.
``SafetyLayer`` owns the command publishers and adds what needs time and topics: a watchdog
(no fresh image or state, or a stalled control loop -> zero command), an e-stop topic, zero
commands on reset/close/exception, and a dry-run mode that publishes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vla_gym.sim2real.config import RobotConfig
from vla_gym.sim2real.convert import header, twist_from
from vla_gym.sim2real.messages import Bool, Float64MultiArray, Twist, TwistStamped
from vla_gym.sim2real.transports.base import QOS_DEFAULT, Subscription, Transport, log
from vla_gym.types import ActionContract

ROUTINE_STOPS = ("reset", "closing")


@dataclass
class Command:
    """A physical command: base ``[v, omega]`` or arm twist ``[vx..wz]``, plus the gripper."""

    velocity: np.ndarray
    grip: float | None = None  # gripper command value (arm); None = leave the gripper alone
    reason: str = ""  # non-empty when the command was zeroed, and why
    notes: list[str] = field(default_factory=list)  # limits that changed the command


class CommandFilter:
    """Normalised action -> safe physical command (the stateless part, plus the last command
    for acceleration limiting)."""

    def __init__(self, robot: RobotConfig, contract: ActionContract, period: float) -> None:
        self.robot, self.contract, self.period = robot, contract, float(period)
        self.max_velocity = np.asarray(robot.limits.max_velocity, dtype=np.float64)
        accel = robot.limits.max_accel
        if accel is None and contract.rate_limit is not None \
                and len(contract.rate_limit) == robot.command_dim:
            accel = contract.rate_limit
        self.max_accel = None if accel is None else np.asarray(accel, dtype=np.float64)
        lim = robot.limits
        self.low = None if lim.workspace_low is None else np.asarray(lim.workspace_low, float)
        self.high = None if lim.workspace_high is None else np.asarray(lim.workspace_high, float)
        self.scales = np.ones(robot.command_dim) if robot.scales is None \
            else np.asarray(robot.scales, dtype=np.float64)
        self.previous = np.zeros(robot.command_dim)

    def reset(self) -> None:
        self.previous[:] = 0.0

    def zero(self, reason: str) -> Command:
        self.reset()
        return Command(np.zeros(self.robot.command_dim), None, reason)

    def __call__(self, action: np.ndarray, pose: np.ndarray | None, dt: float) -> Command:
        """``pose``: base [x, y, yaw] relative to the start; arm EE [x, y, z]; None if unknown.
        ``dt``: seconds since the previous command (for the acceleration limit)."""
        array = np.asarray(action, dtype=np.float64).reshape(-1)
        if array.shape != (self.contract.dim,):
            return self.zero(f"action has shape {array.shape}, expected ({self.contract.dim},)")
        if not np.all(np.isfinite(array)):
            return self.zero("action contains NaN or inf")
        physical = self.contract.to_physical(array)
        grip = None
        if self.robot.kind == "arm":
            grip = self._gripper_value(float(physical[6]))
            physical = physical[:6]
        if self.contract.mode == "delta":
            physical = physical / self.period  # per-step displacement -> velocity
        cmd = Command(np.clip(physical, -self.max_velocity, self.max_velocity), grip)
        if not np.array_equal(cmd.velocity, physical):
            cmd.notes.append("velocity limit")
        self._limit_accel(cmd, dt)
        self._limit_workspace(cmd, pose)
        self.previous = cmd.velocity.copy()
        cmd.velocity = cmd.velocity * self.scales
        return cmd

    def _gripper_value(self, grip: float) -> float:
        arm = self.robot.arm
        return arm.gripper_open + (arm.gripper_closed - arm.gripper_open) * (grip + 1.0) / 2.0

    def _limit_accel(self, cmd: Command, dt: float) -> None:
        if self.max_accel is None:
            return
        step = self.max_accel * float(np.clip(dt, 0.0, 10.0 * self.period))
        limited = self.previous + np.clip(cmd.velocity - self.previous, -step, step)
        if not np.allclose(limited, cmd.velocity):
            cmd.notes.append("acceleration limit")
        cmd.velocity = limited

    def _limit_workspace(self, cmd: Command, pose: np.ndarray | None) -> None:
        """Never command motion that would leave the box (or go further out) within a period.

        Only shrinks components toward zero: stopping at a boundary wins over the
        acceleration limit; the layer never drives the robot back in by itself.
        """
        if self.low is None or self.high is None:
            return
        if pose is None or not np.all(np.isfinite(pose)):
            cmd.velocity[: 1 if self.robot.kind == "base" else 3] = 0.0
            cmd.notes.append("no pose for the workspace check")
            return
        if self.robot.kind == "arm":
            pos = np.asarray(pose[:3], dtype=np.float64)
            lo = np.minimum((self.low - pos) / self.period, 0.0)
            hi = np.maximum((self.high - pos) / self.period, 0.0)
            limited = np.clip(cmd.velocity[:3], lo, hi)
        else:
            limited = self._base_speed(cmd.velocity[0], np.asarray(pose, dtype=np.float64))
        if not np.allclose(limited, cmd.velocity[: np.size(limited)]):
            cmd.notes.append("workspace")
        cmd.velocity[: np.size(limited)] = limited

    def _base_speed(self, v: float, pose: np.ndarray) -> np.ndarray:
        """Largest fraction of ``v`` that keeps the base inside its odometry box."""
        assert self.low is not None and self.high is not None
        direction = np.array([np.cos(pose[2]), np.sin(pose[2])]) * v * self.period
        lo = np.minimum(self.low - pose[:2], 0.0)
        hi = np.maximum(self.high - pose[:2], 0.0)
        scale = 1.0
        for d, a, b in zip(direction, lo, hi):
            if d > b:
                scale = min(scale, b / d)
            elif d < a:
                scale = min(scale, a / d)
        return np.array([v * max(scale, 0.0)])


class SafetyLayer:
    """Publishes only filtered commands, and zero when anything is wrong.

    ``inputs`` are the subscriptions that must stay fresh (camera, state); the watchdog thread
    checks them every quarter period while armed and sends a zero command within one check of a
    fault. Thread-safe: the control loop and the watchdog share one lock.
    """

    def __init__(self, robot: RobotConfig, contract: ActionContract, transport: Transport,
                 period: float, inputs: dict[str, Subscription], dry_run: bool = False) -> None:
        self.robot, self.period, self.dry_run = robot, float(period), dry_run
        self.filter = CommandFilter(robot, contract, period)
        self.inputs = inputs
        self.timeout = robot.watchdog_timeout_s
        self.stall_timeout = max(robot.watchdog_timeout_s, 3.0 * self.period)
        self.events: deque[tuple[float, str]] = deque(maxlen=256)
        self.last_command = Command(np.zeros(robot.command_dim))
        self.published = 0
        self._lock = threading.RLock()
        self._last_send = time.monotonic()
        self._last_zero = 0.0
        self._fault: str | None = None
        self._armed = False
        self._closed = threading.Event()
        self._cmd_pub = self._grip_pub = None
        if not dry_run:
            kind = Twist if robot.kind == "base" else TwistStamped
            self._cmd_pub = transport.publisher(robot.topics.command, kind, QOS_DEFAULT)
            if robot.kind == "arm":
                self._grip_pub = transport.publisher(robot.topics.gripper, Float64MultiArray)
        self.estop = transport.subscribe(robot.topics.estop, Bool, QOS_DEFAULT,
                                         callback=self._on_estop)
        self._thread = threading.Thread(target=self._watch, name="vla-watchdog", daemon=True)
        self._thread.start()

    # -- state --------------------------------------------------------------------------------
    @property
    def estopped(self) -> bool:
        latest = self.estop.latest()
        return latest is not None and bool(latest.msg.data)

    def fault(self, now: float | None = None) -> str | None:
        """Why commanding is unsafe right now (e-stop, stale inputs), or None."""
        if self.estopped:
            return "e-stop engaged"
        now = time.monotonic() if now is None else now
        for name, sub in self.inputs.items():
            latest = sub.latest()
            if latest is None:
                return f"no {name} received on {sub.topic}"
            if now - latest.received > self.timeout:
                return f"no fresh {name} on {sub.topic} for {now - latest.received:.2f} s"
        return None

    def arm(self) -> None:
        """Start watching (after reset): from now on stale inputs force zero commands."""
        with self._lock:
            self._armed, self._last_send = True, time.monotonic()

    def disarm(self) -> None:
        with self._lock:
            self._armed = False

    # -- commands -----------------------------------------------------------------------------
    def send(self, action: np.ndarray, pose: np.ndarray | None) -> Command:
        """Filter ``action`` and publish it, or publish zero if a fault is active."""
        with self._lock:
            now = time.monotonic()
            fault = self.fault(now)
            if fault is not None:
                return self._stop_locked(fault, now)
            self._note_fault(None)
            cmd = self.filter(action, pose, now - self._last_send)
            if cmd.reason:
                self._note_fault(cmd.reason)
            self._publish(cmd, now)
            return cmd

    def stop(self, reason: str) -> Command:
        with self._lock:
            return self._stop_locked(reason, time.monotonic())

    def _stop_locked(self, reason: str, now: float) -> Command:
        self._note_fault(reason)
        cmd = self.filter.zero(reason)
        self._publish(cmd, now)
        self._last_zero = now
        return cmd

    def _publish(self, cmd: Command, now: float) -> None:
        self.last_command, self._last_send = cmd, now
        if self._cmd_pub is None:
            return
        if self.robot.kind == "base":
            msg = Twist()
            msg.linear.x, msg.angular.z = float(cmd.velocity[0]), float(cmd.velocity[1])
            self._cmd_pub.publish(msg)
        else:
            self._cmd_pub.publish(TwistStamped(
                header(time.time(), self.robot.frames.command),
                twist_from(cmd.velocity[:3], cmd.velocity[3:])))
            if cmd.grip is not None and self._grip_pub is not None:
                self._grip_pub.publish(Float64MultiArray(data=[float(cmd.grip)]))
        self.published += 1

    def _note_fault(self, reason: str | None) -> None:
        """Log transitions only, so a dead camera is one clear line, not one per period."""
        if reason == self._fault:
            return
        if reason is not None:
            level = logging.INFO if reason in ROUTINE_STOPS else logging.WARNING
            log.log(level, "safety: zero command: %s", reason)
            self.events.append((time.monotonic(), reason))
        elif self._fault is not None:
            log.info("safety: cleared (%s)", self._fault)
        self._fault = reason

    # -- background ---------------------------------------------------------------------------
    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            self.stop("e-stop engaged")

    def _watch(self) -> None:
        interval = min(max(self.period / 4.0, 0.005), 0.05)
        while not self._closed.wait(interval):
            with self._lock:
                if not self._armed:
                    continue
                now = time.monotonic()
                fault = self.fault(now)
                if fault is None and now - self._last_send > self.stall_timeout \
                        and np.any(self.last_command.velocity):
                    fault = f"no command from the control loop for {now - self._last_send:.2f} s"
                if fault is not None and now - self._last_zero >= self.period:
                    self._stop_locked(fault, now)

    def close(self) -> None:
        """Zero command, then stop the watchdog. Idempotent."""
        if self._closed.is_set():
            return
        try:
            self.stop("closing")
        finally:
            self.disarm()
            self._closed.set()
            self._thread.join(timeout=1.0)
