"""Differential-drive mobile base driven by ``[v, omega]`` velocity actions.

The action follows :data:`vla_gym.types.BASE_VELOCITY`: forward speed and turn rate, scaled to
the declared maximum speeds and rate-limited by the declared accelerations -- the same numbers
the ROS 2 safety layer applies to ``cmd_vel``, so a policy sees the same response on both sides.

The base is modelled at the velocity level (``assets/navigation/base.xml``): planar joints
driven by force-limited velocity servos. Every physics substep the commanded body-frame
velocity is rotated into the world frame at the current heading, which gives the
non-holonomic motion of a diff-drive base; the force limit lets walls and furniture stop it.

``state`` is odometry as a real base publishes it: pose relative to where the episode started
(x forward, y left of the start heading), and the measured body-frame velocities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from vla_gym.envs.base import diverged_since, divergence_count
from vla_gym.types import BASE_STATE_FIELDS, BASE_VELOCITY

STATE_FIELDS = BASE_STATE_FIELDS


def wrap_angle(angle: float) -> float:
    """Angle in [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@dataclass(frozen=True)
class DiffDriveConfig:
    """Speeds and accelerations; defaults are the base's action contract."""

    max_speed: float = BASE_VELOCITY.scale[0]  # m/s at action 1.0
    max_turn_rate: float = BASE_VELOCITY.scale[1]  # rad/s at action 1.0
    linear_accel: float = (BASE_VELOCITY.rate_limit or (1.0, 3.0))[0]  # m/s^2
    angular_accel: float = (BASE_VELOCITY.rate_limit or (1.0, 3.0))[1]  # rad/s^2
    radius: float = 0.18  # m: chassis footprint, for planners
    joint_names: tuple[str, str, str] = ("base_x", "base_y", "base_yaw")
    actuator_names: tuple[str, str, str] = ("drive_x", "drive_y", "drive_yaw")
    body_name: str = "base"


class DiffDriveBase:
    """Controller and odometry of the base; bind to a compiled model before use."""

    STATE_DIM = len(STATE_FIELDS)

    def __init__(self, config: DiffDriveConfig | None = None) -> None:
        self.config = config or DiffDriveConfig()
        self.command = np.zeros(2)  # rate-limited [v, omega] being tracked, physical units
        self._start = np.zeros(3)  # world (x, y, yaw) at reset: the odometry origin

    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        cfg = self.config
        joints = [model.joint(name) for name in cfg.joint_names]
        self._qpos = np.array([int(j.qposadr[0]) for j in joints])
        self._qvel = np.array([int(j.dofadr[0]) for j in joints])
        self._act = np.array([model.actuator(name).id for name in cfg.actuator_names])
        self.body_id = model.body(cfg.body_name).id
        self.geom_ids = tuple(np.flatnonzero(
            (model.geom_bodyid == self.body_id) & (model.geom_contype != 0)).tolist())

    # -- episode -----------------------------------------------------------------------------
    def reset(self, data: mujoco.MjData, x: float, y: float, yaw: float) -> None:
        data.qpos[self._qpos] = (x, y, yaw)
        data.qvel[self._qvel] = 0.0
        data.ctrl[self._act] = 0.0
        self.command[:] = 0.0
        self._start[:] = (x, y, yaw)

    def step(self, model: mujoco.MjModel, data: mujoco.MjData, action: np.ndarray,
             substeps: int) -> bool:
        """Rate-limit the command, then run ``substeps`` physics steps steering the servos.

        ``action`` is normalised and already clipped. Returns True if physics diverged.
        """
        cfg = self.config
        dt = model.opt.timestep * substeps
        target = np.array([action[0] * cfg.max_speed, action[1] * cfg.max_turn_rate])
        max_change = np.array([cfg.linear_accel, cfg.angular_accel]) * dt
        self.command += np.clip(target - self.command, -max_change, max_change)
        v, omega = self.command
        before = divergence_count(data)
        yaw_index = self._qpos[2]
        act_x, act_y, act_yaw = (int(a) for a in self._act)
        data.ctrl[act_yaw] = omega
        for _ in range(substeps):
            yaw = data.qpos[yaw_index]
            data.ctrl[act_x] = v * math.cos(yaw)
            data.ctrl[act_y] = v * math.sin(yaw)
            mujoco.mj_step(model, data)
        return diverged_since(data, before)

    # -- readings ----------------------------------------------------------------------------
    def world_pose(self, data: mujoco.MjData) -> np.ndarray:
        """(x, y, yaw) in the world frame."""
        x, y, yaw = data.qpos[self._qpos]
        return np.array([x, y, wrap_angle(yaw)])

    def velocity(self, data: mujoco.MjData) -> tuple[float, float]:
        """Measured forward speed (m/s) and turn rate (rad/s) in the body frame."""
        vx, vy, omega = data.qvel[self._qvel]
        yaw = data.qpos[self._qpos[2]]
        return float(vx * math.cos(yaw) + vy * math.sin(yaw)), float(omega)

    def state(self, data: mujoco.MjData) -> np.ndarray:
        """Odometry ``[x, y, yaw, v, omega]`` relative to the start pose, float32."""
        x, y, yaw = self.world_pose(data)
        x0, y0, yaw0 = self._start
        c, s = math.cos(yaw0), math.sin(yaw0)
        dx, dy = x - x0, y - y0
        v, omega = self.velocity(data)
        return np.array([c * dx + s * dy, -s * dx + c * dy, wrap_angle(yaw - yaw0), v, omega],
                        dtype=np.float32)
