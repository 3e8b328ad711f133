"""The navigation model: arena + base + pools of static bodies, and named accessors over it.

Like the tabletop object pool, one model is compiled per env and each episode moves pooled
bodies instead of recompiling (which would also re-upload the GL context): walls and furniture
are boxes resized through ``geom_size``, landmarks are fixed shapes recoloured through
``geom_rgba``; all are mocap bodies, so they are static, never collide with each other, and
unused ones are parked below the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources

import mujoco
import numpy as np

from vla_gym.envs.language import COLOURS
from vla_gym.envs.navigation.language import LANDMARK_SHAPES, Landmark
from vla_gym.envs.navigation.world import Box, World
from vla_gym.envs.rendering import set_geoms_drawn
from vla_gym.envs.robots.diff_drive import DiffDriveBase

WALL_POOL = 12
FURNITURE_POOL = 4
LANDMARKS_PER_SHAPE = 2
PARKED_Z = -5.0
STATIC_CONTYPE, STATIC_CONAFFINITY = 1, 2  # collide with the base (contype 2) only
WALL_RGBA = (0.82, 0.78, 0.70, 1.0)
FURNITURE_RGBA = ((0.45, 0.30, 0.18, 1.0), (0.35, 0.36, 0.40, 1.0), (0.60, 0.45, 0.30, 1.0))
_BOX = mujoco.mjtGeom.mjGEOM_BOX


def arena_path() -> str:
    return str(resources.files("vla_gym.assets").joinpath("navigation/arena.xml"))


def landmark_slots() -> list[str]:
    return [f"{shape}{i}" for shape in LANDMARK_SHAPES for i in range(LANDMARKS_PER_SHAPE)]


def build_model() -> mujoco.MjModel:
    spec = mujoco.MjSpec.from_file(arena_path())
    for i in range(WALL_POOL):
        _add_box_body(spec, f"wall{i}", WALL_RGBA)
    for i in range(FURNITURE_POOL):
        _add_box_body(spec, f"furniture{i}", FURNITURE_RGBA[i % len(FURNITURE_RGBA)])
    _add_cone_mesh(spec)
    for slot in landmark_slots():
        _add_landmark(spec, slot, slot.rstrip("0123456789"))
    return spec.compile()


def _static_body(spec: mujoco.MjSpec, name: str) -> mujoco.MjsBody:
    return spec.worldbody.add_body(name=name, mocap=True, pos=[0, 0, PARKED_Z])


def _add_box_body(spec: mujoco.MjSpec, name: str, rgba) -> None:
    body = _static_body(spec, name)
    body.add_geom(name=name, type=_BOX, size=[0.1, 0.1, 0.1], rgba=list(rgba),
                  contype=STATIC_CONTYPE, conaffinity=STATIC_CONAFFINITY)


def _add_cone_mesh(spec: mujoco.MjSpec, radius: float = 0.14, height: float = 0.4) -> None:
    ring = [(radius * math.cos(a), radius * math.sin(a), 0.0)
            for a in np.linspace(0, 2 * math.pi, 16, endpoint=False)]
    vertices = [c for p in (*ring, (0.0, 0.0, height)) for c in p]
    spec.add_mesh(name="cone", uservert=vertices)


def _add_landmark(spec: mujoco.MjSpec, slot: str, shape: str) -> None:
    """One landmark body; every geom is named ``<slot>_<part>`` so it can be recoloured."""
    body = _static_body(spec, slot)
    solid = {"contype": STATIC_CONTYPE, "conaffinity": STATIC_CONAFFINITY}
    visual = {"contype": 0, "conaffinity": 0}
    if shape == "ball":
        body.add_geom(name=f"{slot}_body", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.12, 0, 0],
                      pos=[0, 0, 0.12], **solid)
    elif shape == "cube":
        body.add_geom(name=f"{slot}_body", type=_BOX, size=[0.12, 0.12, 0.12],
                      pos=[0, 0, 0.12], **solid)
    elif shape == "can":
        body.add_geom(name=f"{slot}_body", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                      size=[0.10, 0.20, 0], pos=[0, 0, 0.20], **solid)
    elif shape == "cone":
        body.add_geom(name=f"{slot}_body", type=mujoco.mjtGeom.mjGEOM_MESH, meshname="cone",
                      **solid)
    elif shape == "chair":
        body.add_geom(name=f"{slot}_body", type=_BOX, size=[0.18, 0.18, 0.025],
                      pos=[0, 0, 0.25], **solid)
        body.add_geom(name=f"{slot}_back", type=_BOX, size=[0.025, 0.18, 0.2],
                      pos=[-0.155, 0, 0.47], **visual)
        for i, (lx, ly) in enumerate([(1, 1), (1, -1), (-1, 1), (-1, -1)]):
            body.add_geom(name=f"{slot}_leg{i}", type=_BOX, size=[0.02, 0.02, 0.115],
                          pos=[0.15 * lx, 0.15 * ly, 0.115], rgba=[0.2, 0.2, 0.2, 1], **visual)
        # The legs do not stop the base; this invisible block standing for them does.
        body.add_geom(name=f"{slot}_footprint", type=_BOX, size=[0.18, 0.18, 0.115],
                      pos=[0, 0, 0.115], rgba=[0, 0, 0, 0], group=3, **solid)
    else:
        raise ValueError(f"unknown landmark shape {shape!r}; valid: {LANDMARK_SHAPES}")


@dataclass
class NavSim:
    """Named access to the navigation model: apply a world, read poses, detect collisions."""

    model: mujoco.MjModel
    data: mujoco.MjData
    robot: DiffDriveBase
    mocap: dict[str, int]  # body name -> mocap index
    colour_geoms: dict[str, list[int]]  # landmark slot -> geoms that take its colour
    robot_geom_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    world: World | None = None
    # Each pooled body's geoms, and every geom's group as compiled (parked bodies are not drawn).
    body_geoms: dict[str, np.ndarray] = field(default_factory=dict)
    compiled_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    @classmethod
    def bind(cls, model: mujoco.MjModel, data: mujoco.MjData, robot: DiffDriveBase) -> NavSim:
        robot.bind(model, data)
        mocap = {model.body(b).name: int(model.body_mocapid[b])
                 for b in range(model.nbody) if model.body_mocapid[b] >= 0}
        colour_geoms = {}
        for slot in landmark_slots():
            body = model.body(slot).id
            colour_geoms[slot] = [g for g in np.flatnonzero(model.geom_bodyid == body)
                                  if not model.geom(g).name.endswith(("_leg0", "_leg1", "_leg2",
                                                                      "_leg3", "_footprint"))]
        mask = np.zeros(model.ngeom, bool)
        mask[list(robot.geom_ids)] = True
        body_geoms = {name: np.flatnonzero(model.geom_bodyid == model.body(name).id)
                      for name in mocap}
        return cls(model, data, robot, mocap, colour_geoms, mask, None, body_geoms,
                   model.geom_group.copy())

    def apply_world(self, world: World) -> None:
        """Move pooled bodies into place for ``world``; park the rest. Call before mj_forward."""
        self.world = world
        for name in self.mocap:
            self._park(name)
        for pool, boxes in (("wall", world.walls), ("furniture", world.furniture)):
            for i, box in enumerate(boxes):
                self._place_box(f"{pool}{i}", box)
        for obj in world.landmarks:
            self._place_landmark(obj)
        self.robot.reset(self.data, *world.start)

    def _park(self, name: str) -> None:
        self.data.mocap_pos[self.mocap[name]] = (0.0, 0.0, PARKED_Z)
        self._draw(name, False)

    def _draw(self, name: str, drawn: bool) -> None:
        set_geoms_drawn(self.model, self.body_geoms[name], drawn, self.compiled_groups)

    def _place_box(self, name: str, box: Box) -> None:
        geom = self.model.geom(name).id
        half = np.array([box.hx, box.hy, box.height / 2])
        self.model.geom_size[geom] = half
        # Collision culling reads these bounds; keep them in step with the new size.
        self.model.geom_rbound[geom] = float(np.linalg.norm(half))
        self.model.geom_aabb[geom] = (0.0, 0.0, 0.0, *half)
        self.data.mocap_pos[self.mocap[name]] = (box.cx, box.cy, box.height / 2)
        self._draw(name, True)

    def _place_landmark(self, obj: Landmark) -> None:
        for geom in self.colour_geoms[obj.slot]:
            self.model.geom_rgba[geom] = COLOURS[obj.colour]
        self.data.mocap_pos[self.mocap[obj.slot]] = (obj.xy[0], obj.xy[1], 0.0)
        self._draw(obj.slot, True)
        # Chairs face the room centre a little differently each time; yaw from the position.
        yaw = math.atan2(-obj.xy[1], -obj.xy[0])
        self.data.mocap_quat[self.mocap[obj.slot]] = (math.cos(yaw / 2), 0, 0, math.sin(yaw / 2))

    def touching_obstacle(self) -> bool:
        """Whether the base touches anything (all other bodies are static obstacles)."""
        if self.data.ncon == 0:
            return False
        geoms = self.data.contact.geom[: self.data.ncon]
        return bool((self.robot_geom_mask[geoms[:, 0]] | self.robot_geom_mask[geoms[:, 1]]).any())
