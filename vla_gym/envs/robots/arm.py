"""Six-joint arm with a parallel-jaw gripper, driven by 7-D end-effector delta actions.

The action follows :data:`vla_gym.types.ARM_EE_DELTA`: ``[dx, dy, dz, droll, dpitch, dyaw, grip]``
with deltas in the robot base frame (= world frame) and an absolute gripper command.

Control is a hand-written damped-least-squares (DLS) differential IK step on the 6-D
``ee_site`` Jacobian (``mujoco.mj_jacSite``), feeding joint position actuators. We chose this
over ``mink`` because one DLS step is a 6x6 Cholesky solve with preallocated buffers, whereas
mink solves a QP per call; the hot loop stays in the tens of microseconds.

The controller keeps an internal *commanded* end-effector pose that integrates the deltas, so a
zero action holds the pose (no drift under load). The commanded pose is clamped to a workspace
box and leashed to within a few centimetres / a few tenths of a radian of the measured pose, so
it does not wind up when the arm is blocked.

Kinematic quantities are read from ``data`` as left by the last ``mj_step`` / ``mj_forward``;
call ``mj_forward`` after :meth:`ArmRobot.reset` (``reset`` does it for you).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from vla_gym.envs.base import clip_into
from vla_gym.types import ARM_EE_DELTA, ARM_STATE_FIELDS

# Gripper pointing straight down with the fingers closing along world y (rotation pi about y).
_DOWN_QUAT = np.array([0.0, 0.0, 1.0, 0.0])


@dataclass(frozen=True)
class ArmConfig:
    """Tunable parameters of the arm controller; defaults match ``assets/tabletop/arm.xml``."""

    # Gripper pointing down, fingers along y, EE at (0.45, 0, 0.25).
    home_qpos: tuple[float, ...] = (0.0, 0.22235, 1.81427, 1.10498, 0.0, 0.0)
    ik_damping: float = 0.05  # DLS damping (m / rad); keeps steps bounded near singularities
    max_joint_step: float = 0.15  # rad per env step; the whole dq is scaled if exceeded
    max_pos_error: float = 0.03  # m: commanded position leash around the measured position
    max_rot_error: float = 0.25  # rad: commanded orientation leash around the measured one
    finger_range: tuple[float, float] = (0.0, 0.04)  # per-finger travel; opening = 2 * travel
    workspace_low: tuple[float, float, float] = (0.2, -0.4, 0.0)
    workspace_high: tuple[float, float, float] = (0.8, 0.4, 0.45)
    pos_scale: float = ARM_EE_DELTA.scale[0]  # m per unit action per env step
    rot_scale: float = ARM_EE_DELTA.scale[3]  # rad per unit action per env step
    site_name: str = "ee_site"
    joint_names: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
    actuator_names: tuple[str, ...] = (
        "actuator1",
        "actuator2",
        "actuator3",
        "actuator4",
        "actuator5",
        "actuator6",
    )
    finger_joint_names: tuple[str, str] = ("finger_left", "finger_right")
    finger_actuator_names: tuple[str, str] = ("gripper_left", "gripper_right")
    finger_pad_names: tuple[str, str] = ("finger_left_pad", "finger_right_pad")
    root_body_name: str = "base"


class ArmRobot:
    """Six-joint arm + parallel gripper, driven by 7-D end-effector delta actions."""

    STATE_DIM: int = len(ARM_STATE_FIELDS)

    def __init__(self, config: ArmConfig | None = None) -> None:
        self.config = config or ArmConfig()
        self._home = np.asarray(self.config.home_qpos, dtype=np.float64)
        if self._home.shape != (6,):
            raise ValueError(f"home_qpos must have 6 entries, got {self._home.shape}")
        self._low = np.asarray(self.config.workspace_low, dtype=np.float64)
        self._high = np.asarray(self.config.workspace_high, dtype=np.float64)
        # Commanded target and scratch buffers (preallocated for the hot loop).
        self.target_pos = np.zeros(3)
        self.target_quat = _DOWN_QUAT.copy()
        self._quat = np.zeros(4)
        self._quat_neg = np.zeros(4)
        self._quat_tmp = np.zeros(4)
        self._quat_delta = np.zeros(4)
        self._err = np.zeros(6)
        self._jjt = np.zeros((6, 6))
        self._sol = np.zeros(6)
        self._dq = np.zeros(6)
        self._eye = np.eye(6) * self.config.ik_damping**2
        self._model: mujoco.MjModel | None = None

    # ------------------------------------------------------------------ binding
    def bind(self, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        """Resolve joint, actuator, site and geom ids by name after the model is compiled."""
        cfg = self.config
        self._model = model
        joints = [model.joint(n) for n in cfg.joint_names]
        self._qadr = np.array([j.qposadr[0] for j in joints])
        self._dadr = np.array([j.dofadr[0] for j in joints])
        self._act = np.array([model.actuator(n).id for n in cfg.actuator_names])
        fingers = [model.joint(n) for n in cfg.finger_joint_names]
        self._fqadr = np.array([j.qposadr[0] for j in fingers])
        self._fdadr = np.array([j.dofadr[0] for j in fingers])
        self._fact = np.array([model.actuator(n).id for n in cfg.finger_actuator_names])
        self._site = model.site(cfg.site_name).id
        pads = tuple(model.geom(n).id for n in cfg.finger_pad_names)
        self._pads: tuple[int, int] = (int(pads[0]), int(pads[1]))
        self._geom_body = model.geom_bodyid.copy()
        self._geoms = _subtree_geoms(model, model.body(cfg.root_body_name).id)
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self._jac = np.zeros((6, 6))
        # Contiguous index ranges let us use cheap slices instead of fancy indexing.
        self._qsl = _as_slice(self._qadr)
        self._dsl = _as_slice(self._dadr)
        self._asl = _as_slice(self._act)
        # What to index qpos / qvel with: the slice where there is one, else the id array.
        self._qix = self._qadr if self._qsl is None else self._qsl
        self._dix = self._dadr if self._dsl is None else self._dsl
        self._ctrl_lo = model.actuator_ctrlrange[self._act, 0].copy()
        self._ctrl_hi = model.actuator_ctrlrange[self._act, 1].copy()

    @property
    def finger_geom_ids(self) -> tuple[int, int]:
        """Geom ids of the left and right finger pads."""
        return self._pads

    @property
    def arm_geom_ids(self) -> set[int]:
        """All geom ids belonging to the robot (base, links, hand, fingers)."""
        return set(self._geoms)

    # ------------------------------------------------------------------ reset
    def reset(self, data: mujoco.MjData, rng: np.random.Generator, noise: float = 0.0) -> None:
        """Home pose (+ uniform joint noise), zero velocity, gripper open, target = EE pose."""
        model = self._require_model()
        qpos = self._home + (rng.uniform(-noise, noise, size=6) if noise > 0 else 0.0)
        data.qpos[self._qadr] = qpos
        data.qvel[self._dadr] = 0.0
        data.qpos[self._fqadr] = self.config.finger_range[1]
        data.qvel[self._fdadr] = 0.0
        data.ctrl[self._act] = qpos
        data.ctrl[self._fact] = self.config.finger_range[1]
        mujoco.mj_forward(model, data)
        self.sync_target(data)

    def sync_target(self, data: mujoco.MjData) -> None:
        """Set the commanded EE pose to the measured one (e.g. after teleporting the arm)."""
        self.target_pos[:] = data.site_xpos[self._site]
        mujoco.mju_mat2Quat(self.target_quat, data.site_xmat[self._site])

    # ------------------------------------------------------------------ control
    def apply_action(self, data: mujoco.MjData, action: np.ndarray) -> None:
        """Integrate the EE delta into the commanded pose, run one DLS IK step, write ctrl."""
        self._integrate_target(action)
        self._clamp_target(data)
        self._ik_step(data)
        self._set_gripper(data, float(action[6]))

    def _integrate_target(self, action: np.ndarray) -> None:
        cfg = self.config
        self.target_pos += cfg.pos_scale * action[:3]
        if action[3] != 0.0 or action[4] != 0.0 or action[5] != 0.0:
            omega = cfg.rot_scale * np.asarray(action[3:6], dtype=np.float64)
            self._quat_delta[:] = (1.0, 0.0, 0.0, 0.0)
            mujoco.mju_quatIntegrate(self._quat_delta, omega, 1.0)
            # Left-multiply: rotation expressed in the base frame.
            mujoco.mju_mulQuat(self._quat_tmp, self._quat_delta, self.target_quat)
            mujoco.mju_normalize4(self._quat_tmp)
            self.target_quat[:] = self._quat_tmp

    def _clamp_target(self, data: mujoco.MjData) -> None:
        """Clamp to the workspace box and leash to the measured pose; fill the 6-D error."""
        cfg = self.config
        clip_into(self.target_pos, self._low, self._high)
        pos = data.site_xpos[self._site]
        err = self._err
        np.subtract(self.target_pos, pos, out=err[:3])
        ex, ey, ez = err[:3].tolist()  # plain floats: cheaper than three numpy scalar reads
        dist = math.sqrt(ex * ex + ey * ey + ez * ez)
        if dist > cfg.max_pos_error:
            err[:3] *= cfg.max_pos_error / dist
            np.add(pos, err[:3], out=self.target_pos)
        mujoco.mju_mat2Quat(self._quat, data.site_xmat[self._site])
        mujoco.mju_negQuat(self._quat_neg, self._quat)
        mujoco.mju_mulQuat(self._quat_tmp, self.target_quat, self._quat_neg)
        rot = err[3:]
        mujoco.mju_quat2Vel(rot, self._quat_tmp, 1.0)
        rx, ry, rz = rot.tolist()
        angle = math.sqrt(rx * rx + ry * ry + rz * rz)
        if angle > cfg.max_rot_error:
            rot *= cfg.max_rot_error / angle
            self._quat_delta[:] = (1.0, 0.0, 0.0, 0.0)
            mujoco.mju_quatIntegrate(self._quat_delta, rot, 1.0)
            mujoco.mju_mulQuat(self.target_quat, self._quat_delta, self._quat)

    def _ik_step(self, data: mujoco.MjData) -> None:
        """One damped-least-squares step: dq = J^T (J J^T + lambda^2 I)^-1 e."""
        model = self._require_model()
        mujoco.mj_jacSite(model, data, self._jacp, self._jacr, self._site)
        jac = self._jac
        jac[:3] = self._jacp[:, self._dix]
        jac[3:] = self._jacr[:, self._dix]
        np.matmul(jac, jac.T, out=self._jjt)
        self._jjt += self._eye
        mujoco.mju_cholFactor(self._jjt, 0.0)
        mujoco.mju_cholSolve(self._sol, self._jjt, self._err)
        dq = np.matmul(jac.T, self._sol, out=self._dq)
        biggest = max(map(abs, dq.tolist()))
        if biggest > self.config.max_joint_step:
            dq *= self.config.max_joint_step / biggest
        if self._qsl is not None and self._asl is not None:
            ctrl = data.ctrl[self._asl]
            np.add(data.qpos[self._qsl], dq, out=ctrl)
            clip_into(ctrl, self._ctrl_lo, self._ctrl_hi)
        else:
            data.ctrl[self._act] = np.clip(data.qpos[self._qadr] + dq, self._ctrl_lo, self._ctrl_hi)

    def _set_gripper(self, data: mujoco.MjData, grip: float) -> None:
        """Absolute grip command: +1 closed, -1 fully open, linear in between."""
        lo, hi = self.config.finger_range
        travel = hi - (hi - lo) * 0.5 * (min(max(grip, -1.0), 1.0) + 1.0)
        data.ctrl[self._fact[0]] = travel
        data.ctrl[self._fact[1]] = travel

    # ------------------------------------------------------------------ readouts
    def state(self, data: mujoco.MjData) -> np.ndarray:
        """float32 (21,): joint qpos(6), qvel(6), gripper opening(1), EE pos(3), EE quat wxyz(4),
        gripper opening velocity(1) (``ARM_STATE_FIELDS``)."""
        out = np.empty(self.STATE_DIM, dtype=np.float32)
        out[0:6] = data.qpos[self._qix]
        out[6:12] = data.qvel[self._dix]
        out[12] = self.gripper_opening(data)
        out[13:16] = data.site_xpos[self._site]
        out[16:20] = self.ee_quat(data)
        out[20] = self.gripper_velocity(data)
        return out

    def ee_pos(self, data: mujoco.MjData) -> np.ndarray:
        """Grasp-point position in the base frame (copy)."""
        return data.site_xpos[self._site].copy()

    def ee_quat(self, data: mujoco.MjData) -> np.ndarray:
        """Grasp-point orientation, quaternion wxyz, sign chosen near the gripper-down pose."""
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, data.site_xmat[self._site])
        if float(quat @ _DOWN_QUAT) < 0.0:
            quat *= -1.0
        return quat

    def ee_yaw(self, data: mujoco.MjData) -> float:
        """Yaw of the finger closing axis about base z (0 at home, + for positive dyaw)."""
        mat = data.site_xmat[self._site]
        return math.atan2(-float(mat[1]), float(mat[4]))

    def gripper_opening(self, data: mujoco.MjData) -> float:
        """Distance between the inner faces of the two finger pads, in metres."""
        return float(data.qpos[self._fqadr[0]] + data.qpos[self._fqadr[1]])

    def gripper_velocity(self, data: mujoco.MjData) -> float:
        """How fast the gripper opening changes, in m/s: negative while closing."""
        return float(data.qvel[self._fdadr[0]] + data.qvel[self._fdadr[1]])

    def gripper_speed(self, data: mujoco.MjData) -> float:
        """How fast the gripper opening changes (m/s, either way)."""
        return abs(self.gripper_velocity(data))

    def is_grasping(self, data: mujoco.MjData, body_id: int) -> bool:
        """True when both finger pads touch geoms of ``body_id``. One pass over the contacts
        for both pads (rewards and success ask every step): the geoms paired with the body's,
        then whether both pads are among them."""
        self._require_model()
        if data.ncon == 0:
            return False
        geoms = data.contact.geom[: data.ncon]
        on_body = self._geom_body[geoms] == body_id
        partners = set(geoms[:, ::-1][on_body].tolist())  # each pair's other geom
        return self._pads[0] in partners and self._pads[1] in partners

    def _require_model(self) -> mujoco.MjModel:
        if self._model is None:
            raise RuntimeError("ArmRobot.bind(model, data) must be called first")
        return self._model


def _subtree_geoms(model: mujoco.MjModel, root: int) -> tuple[int, ...]:
    """Geom ids of every body in the subtree rooted at ``root``."""
    bodies = {root}
    for b in range(root + 1, model.nbody):
        if int(model.body_parentid[b]) in bodies:
            bodies.add(b)
    return tuple(g for g in range(model.ngeom) if int(model.geom_bodyid[g]) in bodies)


def _as_slice(idx: np.ndarray) -> slice | None:
    """A slice equal to ``idx`` when it is a contiguous ascending range, else None."""
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return slice(int(idx[0]), int(idx[0]) + len(idx))
    return None
