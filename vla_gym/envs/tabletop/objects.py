"""Tabletop object catalogue and the procedural object pool.

Each env compiles one model holding a fixed pool of object slots (built with ``mujoco.MjSpec``);
an episode shows a subset of them with colours chosen per episode and parks the rest off the
table. Recompiling per episode would cost a GL context upload on every reset, so colour and
placement are what varies, through ``geom_rgba`` and the free joints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

from vla_gym.envs.rendering import set_geoms_drawn

# How many slots of each shape a scene can hold (stacking needs two cubes).
POOL: dict[str, int] = {"cube": 3, "ball": 2, "can": 2, "plate": 1, "bowl": 1}

CUBE_HALF = 0.02
BALL_RADIUS = 0.02
CAN_RADIUS, CAN_HALF_HEIGHT = 0.025, 0.035
PLATE_RADIUS, PLATE_HALF_HEIGHT = 0.07, 0.005
BOWL_RADIUS, BOWL_WALL_HEIGHT, BOWL_WALL_THICKNESS, BOWL_BASE_HALF = 0.07, 0.04, 0.008, 0.004
BOWL_WALL_SEGMENTS = 12

# Sliding friction 0.5 (MuJoCo takes the larger of two geoms' values, so the table must match):
# a can pushed at mid-height stays upright when friction x push height < its radius.
OBJECT_FRICTION = (0.5, 0.01, 0.001)
# Balls get rolling friction (condim 6) so one set down on a flat plate comes to rest on it.
BALL_FRICTION = (0.5, 0.01, 0.004)


@dataclass(frozen=True)
class ShapeInfo:
    """Geometry facts the layout sampler, tasks and experts need."""

    footprint_radius: float  # radius of the disc the object occupies on the table
    rest_height: float  # z of the body origin when resting on the table
    top_height: float  # z of the object's top surface when resting
    mass: float


SHAPE_INFO: dict[str, ShapeInfo] = {
    "cube": ShapeInfo(CUBE_HALF * math.sqrt(2), CUBE_HALF, 2 * CUBE_HALF, 0.05),
    "ball": ShapeInfo(BALL_RADIUS, BALL_RADIUS, 2 * BALL_RADIUS, 0.04),
    "can": ShapeInfo(CAN_RADIUS, CAN_HALF_HEIGHT, 2 * CAN_HALF_HEIGHT, 0.05),
    "plate": ShapeInfo(PLATE_RADIUS, PLATE_HALF_HEIGHT, 2 * PLATE_HALF_HEIGHT, 0.3),
    "bowl": ShapeInfo(BOWL_RADIUS, BOWL_BASE_HALF, BOWL_WALL_HEIGHT, 0.3),
}


def slot_names() -> list[str]:
    return [f"{shape}{i}" for shape, count in POOL.items() for i in range(count)]


def slot_shape(slot: str) -> str:
    return slot.rstrip("0123456789")


def _add_geom(body: mujoco.MjsBody, gtype: mujoco.mjtGeom, size, mass: float, pos=(0, 0, 0),
              quat=None):
    geom = body.add_geom(type=gtype, size=list(size) + [0] * (3 - len(size)), pos=list(pos))
    geom.mass = mass
    if quat is not None:
        geom.quat = list(quat)
    geom.friction = list(OBJECT_FRICTION)
    geom.condim = 4
    geom.rgba = [0.5, 0.5, 0.5, 1.0]
    return geom


def _build_bowl(body: mujoco.MjsBody, mass: float) -> None:
    part = mass / (BOWL_WALL_SEGMENTS + 1)
    _add_geom(body, mujoco.mjtGeom.mjGEOM_CYLINDER, (BOWL_RADIUS, BOWL_BASE_HALF), part)
    ring = BOWL_RADIUS - BOWL_WALL_THICKNESS / 2
    half_len = ring * math.tan(math.pi / BOWL_WALL_SEGMENTS) + 0.002
    # Walls start on the base (not the table) so only the base touches the table.
    bottom = BOWL_BASE_HALF - 0.001
    half_h = (BOWL_WALL_HEIGHT - BOWL_BASE_HALF - bottom) / 2
    for k in range(BOWL_WALL_SEGMENTS):
        angle = 2 * math.pi * k / BOWL_WALL_SEGMENTS
        pos = (ring * math.cos(angle), ring * math.sin(angle), bottom + half_h)
        quat = (math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2))
        _add_geom(body, mujoco.mjtGeom.mjGEOM_BOX, (BOWL_WALL_THICKNESS / 2, half_len, half_h),
                  part, pos, quat)


def _build_shape(body: mujoco.MjsBody, shape: str) -> None:
    g = mujoco.mjtGeom
    mass = SHAPE_INFO[shape].mass
    if shape == "cube":
        _add_geom(body, g.mjGEOM_BOX, (CUBE_HALF, CUBE_HALF, CUBE_HALF), mass)
    elif shape == "ball":
        geom = _add_geom(body, g.mjGEOM_SPHERE, (BALL_RADIUS,), mass)
        geom.friction, geom.condim = list(BALL_FRICTION), 6
    elif shape == "can":
        _add_geom(body, g.mjGEOM_CYLINDER, (CAN_RADIUS, CAN_HALF_HEIGHT), mass)
    elif shape == "plate":
        _add_geom(body, g.mjGEOM_CYLINDER, (PLATE_RADIUS, PLATE_HALF_HEIGHT), mass)
    elif shape == "bowl":
        _build_bowl(body, mass)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {tuple(POOL)}")


def parking_pose(index: int, shape: str, floor_z: float) -> np.ndarray:
    """Off-table resting pose (x, y, z, qw, qx, qy, qz) for an unused slot; out of every view."""
    x, y = 3.0 + 0.3 * (index % 5), 3.0 + 0.3 * (index // 5)
    return np.array([x, y, floor_z + SHAPE_INFO[shape].rest_height + 1e-3, 1, 0, 0, 0])


def add_object_pool(spec: mujoco.MjSpec, floor_z: float) -> list[str]:
    """Add every pool slot as a free body parked on the floor; return the slot names."""
    names = slot_names()
    for index, name in enumerate(names):
        shape = slot_shape(name)
        pose = parking_pose(index, shape, floor_z)
        body = spec.worldbody.add_body(name=name, pos=list(pose[:3]))
        body.add_freejoint(name=f"{name}_joint")
        _build_shape(body, shape)
    return names


@dataclass(frozen=True)
class CompiledGeoms:
    """Per-geom fields as compiled, for putting a parked slot back as it was built."""

    contype: np.ndarray
    conaffinity: np.ndarray
    group: np.ndarray

    @classmethod
    def of(cls, model: mujoco.MjModel) -> CompiledGeoms:
        return cls(model.geom_contype.copy(), model.geom_conaffinity.copy(),
                   model.geom_group.copy())


@dataclass
class ObjectSlot:
    """Ids of one pool slot in the compiled model."""

    name: str
    shape: str
    body_id: int
    qpos_adr: int
    qvel_adr: int
    geom_ids: np.ndarray

    @classmethod
    def bind(cls, model: mujoco.MjModel, name: str) -> ObjectSlot:
        body_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        joint_id = int(model.body_jntadr[body_id])
        geom_start, geom_count = model.body_geomadr[body_id], model.body_geomnum[body_id]
        return cls(
            name=name,
            shape=slot_shape(name),
            body_id=body_id,
            qpos_adr=int(model.jnt_qposadr[joint_id]),
            qvel_adr=int(model.jnt_dofadr[joint_id]),
            geom_ids=np.arange(geom_start, geom_start + geom_count),
        )

    def set_pose(self, data: mujoco.MjData, pose: np.ndarray) -> None:
        data.qpos[self.qpos_adr : self.qpos_adr + 7] = pose
        data.qvel[self.qvel_adr : self.qvel_adr + 6] = 0.0

    def set_active(self, model: mujoco.MjModel, active: bool, compiled: CompiledGeoms) -> None:
        """Parked slots neither collide nor fall nor get drawn: no contacts to solve, no
        physics or rendering cost. ``compiled`` restores an active slot's geoms."""
        model.geom_contype[self.geom_ids] = compiled.contype[self.geom_ids] if active else 0
        model.geom_conaffinity[self.geom_ids] = (compiled.conaffinity[self.geom_ids] if active
                                                 else 0)
        set_geoms_drawn(model, self.geom_ids, active, compiled.group)
        model.body_gravcomp[self.body_id] = 0.0 if active else 1.0

    def set_rgba(self, model: mujoco.MjModel, rgba) -> None:
        model.geom_rgba[self.geom_ids] = rgba

    def pos(self, data: mujoco.MjData) -> np.ndarray:
        return data.xpos[self.body_id]

    def speed(self, data: mujoco.MjData) -> float:
        return math.hypot(*data.qvel[self.qvel_adr : self.qvel_adr + 3].tolist())
