"""Named accessors over the compiled tabletop model (the 'physics' of dm_control's split).

Tasks, experts and the env read the world only through this object, so none of them index
MuJoCo arrays directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mujoco
import numpy as np

from vla_gym.envs.base import geoms_touch_body
from vla_gym.envs.language import COLOURS
from vla_gym.envs.robots.arm import ArmRobot
from vla_gym.envs.tabletop.layout import Layout, PlacedObject
from vla_gym.envs.tabletop.objects import (
    SHAPE_INFO,
    CompiledGeoms,
    ObjectSlot,
    parking_pose,
    slot_names,
)


def _floor_height(model: mujoco.MjModel) -> float:
    planes = np.flatnonzero(model.geom_type == mujoco.mjtGeom.mjGEOM_PLANE)
    if len(planes) == 0:
        raise ValueError("the tabletop scene needs a floor plane to park unused objects on")
    return float(min(model.geom_pos[planes, 2]))


@dataclass
class TabletopSim:
    model: mujoco.MjModel
    data: mujoco.MjData
    robot: ArmRobot
    slots: dict[str, ObjectSlot]
    floor_z: float
    layout: Layout | None = None
    # Geom fields as compiled, restored when a parked slot comes back on the table.
    compiled: CompiledGeoms | None = None
    robot_geom_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @classmethod
    def bind(cls, model: mujoco.MjModel, data: mujoco.MjData, robot: ArmRobot) -> TabletopSim:
        robot.bind(model, data)
        slots = {name: ObjectSlot.bind(model, name) for name in slot_names()}
        robot_mask = np.zeros(model.ngeom, bool)
        robot_mask[list(robot.arm_geom_ids)] = True
        return cls(model, data, robot, slots, _floor_height(model), None,
                   CompiledGeoms.of(model), robot_mask)

    def apply_layout(self, layout: Layout) -> None:
        """Show the layout's objects on the table and park every other slot."""
        shown = {obj.slot: obj for obj in layout.objects}
        for index, (name, slot) in enumerate(self.slots.items()):
            obj = shown.get(name)
            assert self.compiled is not None
            slot.set_active(self.model, obj is not None, self.compiled)
            if obj is None:
                slot.set_pose(self.data, parking_pose(index, slot.shape, self.floor_z))
                continue
            slot.set_pose(self.data, self._table_pose(obj))
            slot.set_rgba(self.model, COLOURS[obj.colour])
        self.layout = layout

    @staticmethod
    def _table_pose(obj: PlacedObject) -> np.ndarray:
        z = SHAPE_INFO[obj.shape].rest_height  # touching the table: settles sooner
        half = obj.yaw / 2
        return np.array([obj.xy[0], obj.xy[1], z, math.cos(half), 0, 0, math.sin(half)])

    # -- named accessors -------------------------------------------------------------------
    def object_pos(self, slot: str) -> np.ndarray:
        return self.slots[slot].pos(self.data).copy()

    def object_yaw(self, slot: str) -> float:
        w, x, y, z = self.data.xquat[self.slots[slot].body_id]
        return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))

    def object_height(self, slot: str) -> float:
        """Height of the object's origin above its resting height on the table."""
        info = SHAPE_INFO[self.slots[slot].shape]
        return float(self.slots[slot].pos(self.data)[2] - info.rest_height)

    def object_speed(self, slot: str) -> float:
        return self.slots[slot].speed(self.data)

    def ee_pos(self) -> np.ndarray:
        return self.robot.ee_pos(self.data)  # already a copy

    def ee_distance(self, slot: str) -> float:
        """Distance from the grasp point to the object's origin (plain floats: every step)."""
        return math.dist(self.robot.ee_pos(self.data).tolist(),
                         self.slots[slot].pos(self.data).tolist())

    def is_grasping(self, slot: str) -> bool:
        return self.robot.is_grasping(self.data, self.slots[slot].body_id)

    def touching(self, slot: str) -> bool:
        """Whether any robot geom touches the object."""
        body = self.slots[slot].body_id
        return geoms_touch_body(self.model, self.data, self.robot_geom_mask, body)
