"""A robot's sensor topics -> the sim's observation layout (image, instruction, state).

Subscriptions keep only the latest message; decoding happens when an observation is asked
for, once per new frame, so a 30 Hz camera costs nothing between control steps.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_gym.sim2real.config import RobotConfig
from vla_gym.sim2real.convert import (
    compressed_to_rgb,
    fit_image,
    image_to_rgb,
    joint_values,
    odometry_to_array,
    pose_to_arrays,
)
from vla_gym.sim2real.messages import (
    CompressedImage,
    Image,
    JointState,
    MessageError,
    Odometry,
    PoseStamped,
    String,
)
from vla_gym.sim2real.transports.base import (
    QOS_DEFAULT,
    QOS_SENSOR_DATA,
    Subscription,
    Transport,
)


def wrap_angle(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@dataclass(frozen=True)
class ArmStateLayout:
    """Where each part of an arm's state sits, for an arm of ``joints`` joints (the sim arm's
    ``ARM_STATE_FIELDS`` with 6): q, dq, gripper opening, EE pos, EE quat wxyz, gripper
    opening velocity."""

    joints: int

    @property
    def opening(self) -> int:
        return 2 * self.joints

    @property
    def ee_pos(self) -> slice:
        return slice(self.opening + 1, self.opening + 4)

    @property
    def ee_quat(self) -> slice:
        return slice(self.opening + 4, self.opening + 8)

    @property
    def gripper_velocity(self) -> int:
        return self.opening + 8

    @property
    def dim(self) -> int:
        return self.gripper_velocity + 1


def state_dim(robot: RobotConfig) -> int:
    """Base: odometry [x, y, yaw, v, omega]; arm: :class:`ArmStateLayout`."""
    return 5 if robot.kind == "base" else ArmStateLayout(len(robot.arm.joints)).dim


class JointCache:
    """Joint name -> (position, velocity), merged across JointState messages (drivers often
    publish the arm and the gripper separately)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: dict[str, tuple[float, float]] = {}
        self.error: str | None = None

    def update(self, msg: JointState) -> None:
        try:
            pos = joint_values(msg, tuple(msg.name), "position")
            vel = (joint_values(msg, tuple(msg.name), "velocity") if msg.velocity
                   else np.zeros(len(msg.name)))
        except MessageError as exc:
            self.error = str(exc)
            return
        with self._lock:
            self.values.update({n: (float(p), float(v)) for n, p, v in zip(msg.name, pos, vel)})
            self.error = None

    def get(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            missing = [n for n in names if n not in self.values]
            if missing:
                known = sorted(self.values)
                raise MessageError(f"joint_states lacks joints {missing}; received {known}")
            pairs = [self.values[n] for n in names]
        return np.array([p for p, _ in pairs]), np.array([v for _, v in pairs])


class RobotObserver:
    """Latest image, state and instruction of one robot."""

    def __init__(self, robot: RobotConfig, transport: Transport, image_size: int) -> None:
        self.robot, self.image_size = robot, image_size
        cam = robot.camera
        self.camera: Subscription = transport.subscribe(
            cam.topic, CompressedImage if cam.compressed else Image, QOS_SENSOR_DATA)
        self.instruction_sub = transport.subscribe(robot.topics.instruction, String, QOS_DEFAULT)
        self.joints = JointCache()
        self.inputs: dict[str, Subscription] = {"image": self.camera}
        if robot.kind == "base":
            self.odom = transport.subscribe(robot.topics.odom, Odometry, QOS_SENSOR_DATA)
            self.inputs["odometry"] = self.odom
        else:
            self.joint_sub = transport.subscribe(robot.topics.joint_states, JointState,
                                                 QOS_SENSOR_DATA, callback=self.joints.update)
            self.ee = transport.subscribe(robot.topics.ee_pose, PoseStamped, QOS_SENSOR_DATA)
            self.inputs.update({"joint states": self.joint_sub, "end-effector pose": self.ee})
        self.start_pose = np.zeros(3)
        self._image_count = -1
        self._image: np.ndarray | None = None
        self._image_error: str | None = None

    # -- image --------------------------------------------------------------------------------
    def image(self) -> np.ndarray:
        """The latest frame as uint8 (S, S, 3); MessageError if it is missing or unusable."""
        latest = self.camera.latest()
        if latest is None:
            raise MessageError(f"no image received on {self.camera.topic}")
        if latest.count != self._image_count:
            self._image_count, self._image, self._image_error = latest.count, None, None
            msg = latest.msg
            try:
                rgb = (compressed_to_rgb(msg) if isinstance(msg, CompressedImage)
                       else image_to_rgb(msg))
                self._image = fit_image(rgb, self.image_size)
            except MessageError as exc:
                self._image_error = str(exc)
        if self._image is None:
            raise MessageError(self._image_error or "the latest image could not be decoded")
        return self._image

    # -- state --------------------------------------------------------------------------------
    def odometry(self) -> np.ndarray:
        latest = self.odom.latest()
        if latest is None:
            raise MessageError(f"no odometry received on {self.odom.topic}")
        return odometry_to_array(latest.msg)

    def mark_start(self) -> None:
        """Make the current odometry pose the origin of the state (as the sim does at reset)."""
        if self.robot.kind == "base":
            self.start_pose = self.odometry()[:3].copy()

    def state(self) -> np.ndarray:
        if self.robot.kind == "base":
            return self._base_state()
        return self._arm_state()

    def _base_state(self) -> np.ndarray:
        x, y, yaw, v, omega = self.odometry()
        x0, y0, yaw0 = self.start_pose
        c, s = math.cos(yaw0), math.sin(yaw0)
        dx, dy = x - x0, y - y0
        return np.array([c * dx + s * dy, -s * dx + c * dy, wrap_angle(yaw - yaw0), v, omega],
                        dtype=np.float32)

    def _arm_state(self) -> np.ndarray:
        arm = self.robot.arm
        if self.joints.error:
            raise MessageError(self.joints.error)
        q, dq = self.joints.get(arm.joints)
        fingers, finger_velocities = self.joints.get(arm.gripper_joints)
        latest = self.ee.latest()
        if latest is None:
            raise MessageError(f"no end-effector pose received on {self.ee.topic}")
        pos, quat = pose_to_arrays(latest.msg)
        norm = float(np.linalg.norm(quat))
        if norm < 1e-6:
            raise MessageError("end-effector quaternion has zero length")
        quat = quat / norm
        if float(quat @ np.asarray(arm.ee_quat_reference)) < 0.0:
            quat = -quat
        return np.concatenate([q, dq, [fingers.sum()], pos, quat, [finger_velocities.sum()]]
                              ).astype(np.float32)

    def safety_pose(self) -> np.ndarray | None:
        """What the workspace check needs: base [x, y, yaw] from the start; arm EE xyz."""
        try:
            state = self.state()
        except MessageError:
            return None
        if self.robot.kind == "base":
            return state[:3].astype(np.float64)
        return state[ArmStateLayout(len(self.robot.arm.joints)).ee_pos].astype(np.float64)

    def instruction(self) -> str | None:
        latest = self.instruction_sub.latest()
        return None if latest is None else latest.msg.data

    def ages(self, now: float) -> dict[str, Any]:
        """Seconds since each input last arrived (None if never)."""
        ages: dict[str, Any] = {}
        for name, sub in self.inputs.items():
            latest = sub.latest()
            ages[name] = None if latest is None else round(now - latest.received, 4)
        return ages
