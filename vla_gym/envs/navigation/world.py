"""Procedural indoor worlds: rooms with doorways, furniture, landmarks and a start pose.

Pure geometry, no MuJoCo: the scene module turns a :class:`World` into poses of pooled bodies.
Every draw comes from the generator passed in (the env's ``np_random``), so a seed fixes the
world. Rooms come from binary space partitioning of a square arena; each dividing wall gets one
doorway, which keeps every room reachable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla_gym.envs.navigation.language import Landmark

ARENA_HALF = 2.5  # m: the arena is [-2.5, 2.5]^2
WALL_THICKNESS = 0.1
WALL_HEIGHT = 0.5
DOOR_WIDTH = 0.9
MIN_ROOM_SIDE = 1.6
DOOR_KEEP_OUT = 0.7  # m: a later wall may not meet an earlier wall this close to its doorway
ROBOT_CLEARANCE = 0.45  # m of free floor kept around furniture so the base can pass
MIN_LANDMARK_SPACING = 0.75  # m between landmark centres

# Footprint radius (m) of each landmark shape: what planners must keep clear of.
LANDMARK_FOOTPRINT: dict[str, float] = {
    "ball": 0.12, "cube": 0.17, "can": 0.10, "cone": 0.14, "chair": 0.26,
}


@dataclass(frozen=True)
class Box:
    """An axis-aligned box standing on the floor: centre, half extents, height."""

    cx: float
    cy: float
    hx: float
    hy: float
    height: float

    def gap_to(self, x: float, y: float) -> float:
        """Distance from (x, y) to the box's footprint (0 inside)."""
        dx = max(abs(x - self.cx) - self.hx, 0.0)
        dy = max(abs(y - self.cy) - self.hy, 0.0)
        return math.hypot(dx, dy)


@dataclass(frozen=True)
class Room:
    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def sample_point(self, rng: np.random.Generator, margin: float) -> tuple[float, float]:
        return (float(rng.uniform(self.x0 + margin, self.x1 - margin)),
                float(rng.uniform(self.y0 + margin, self.y1 - margin)))


@dataclass(frozen=True)
class Doorway:
    x: float
    y: float
    vertical: bool  # the wall it sits in runs along y


@dataclass(frozen=True)
class Rooms:
    rooms: tuple[Room, ...]
    walls: tuple[Box, ...]
    doorways: tuple[Doorway, ...]

    def room_of(self, x: float, y: float) -> int:
        for index, room in enumerate(self.rooms):
            if room.contains(x, y):
                return index
        return int(np.argmin([_distance_to_room(room, x, y) for room in self.rooms]))


@dataclass(frozen=True)
class World:
    rooms: Rooms
    furniture: tuple[Box, ...]
    landmarks: tuple[Landmark, ...]
    start: tuple[float, float, float]  # x, y, yaw

    @property
    def walls(self) -> tuple[Box, ...]:
        return self.rooms.walls

    @property
    def start_room(self) -> int:
        return self.rooms.room_of(self.start[0], self.start[1])

    def landmark(self, key: str) -> Landmark:
        for obj in self.landmarks:
            if key in (obj.slot, obj.name):
                return obj
        raise ValueError(f"no landmark {key!r} in this world; landmarks: "
                         f"{[o.name for o in self.landmarks]}")


def _distance_to_room(room: Room, x: float, y: float) -> float:
    return math.hypot(max(room.x0 - x, 0, x - room.x1), max(room.y0 - y, 0, y - room.y1))


# -- rooms -----------------------------------------------------------------------------------
def outer_walls() -> list[Box]:
    a, t, h = ARENA_HALF, WALL_THICKNESS / 2, WALL_HEIGHT
    return [Box(0.0, a + t, a + 2 * t, t, h), Box(0.0, -a - t, a + 2 * t, t, h),
            Box(a + t, 0.0, t, a, h), Box(-a - t, 0.0, t, a, h)]


def sample_rooms(rng: np.random.Generator, num_rooms: int) -> Rooms:
    """Split the arena into ``num_rooms`` rooms, one doorway per dividing wall."""
    a = ARENA_HALF
    rooms = [Room(-a, -a, a, a)]
    walls, doors = outer_walls(), []
    while len(rooms) < num_rooms:
        index = int(np.argmax([(r.x1 - r.x0) * (r.y1 - r.y0) for r in rooms]))
        split = _split_room(rng, rooms[index], doors)
        if split is None:
            break
        first, second, segment, door = split
        rooms[index:index + 1] = [first, second]
        walls.extend(segment)
        doors.append(door)
    return Rooms(tuple(rooms), tuple(walls), tuple(doors))


def _split_room(rng: np.random.Generator, room: Room, doors: Sequence[Doorway]):
    vertical = (room.x1 - room.x0) >= (room.y1 - room.y0)  # cut across the longer side
    lo, hi = (room.x0, room.x1) if vertical else (room.y0, room.y1)
    along_lo, along_hi = (room.y0, room.y1) if vertical else (room.x0, room.x1)
    for _ in range(20):
        if hi - lo < 2 * MIN_ROOM_SIDE:
            return None
        cut = float(rng.uniform(lo + MIN_ROOM_SIDE, hi - MIN_ROOM_SIDE))
        if _meets_doorway(cut, vertical, doors, room):
            continue
        margin = 0.3 + DOOR_WIDTH / 2
        door_at = float(rng.uniform(along_lo + margin, along_hi - margin))
        segment = _wall_with_door(cut, along_lo, along_hi, door_at, vertical)
        door = Doorway(cut, door_at, True) if vertical else Doorway(door_at, cut, False)
        if vertical:
            return (Room(room.x0, room.y0, cut, room.y1), Room(cut, room.y0, room.x1, room.y1),
                    segment, door)
        return (Room(room.x0, room.y0, room.x1, cut), Room(room.x0, cut, room.x1, room.y1),
                segment, door)
    return None


def _meets_doorway(cut: float, vertical: bool, doors: Sequence[Doorway], room: Room) -> bool:
    """Whether a wall at ``cut`` would end inside an existing doorway on the room's border."""
    for door in doors:
        if door.vertical == vertical:
            continue  # parallel walls never meet
        along = door.x if vertical else door.y
        on_border = (door.y in (room.y0, room.y1)) if vertical else (door.x in (room.x0, room.x1))
        if on_border and abs(along - cut) < DOOR_KEEP_OUT:
            return True
    return False


def _wall_with_door(cut: float, lo: float, hi: float, door_at: float, vertical: bool) -> list[Box]:
    """Two wall boxes from ``lo`` to ``hi`` along the wall, leaving a doorway at ``door_at``."""
    t, h = WALL_THICKNESS / 2, WALL_HEIGHT
    pieces = [(lo, door_at - DOOR_WIDTH / 2), (door_at + DOOR_WIDTH / 2, hi)]
    boxes = []
    for start, end in pieces:
        centre, half = (start + end) / 2, (end - start) / 2
        boxes.append(Box(cut, centre, t, half, h) if vertical else Box(centre, cut, half, t, h))
    return boxes


# -- furniture and free space ----------------------------------------------------------------
def sample_furniture(rng: np.random.Generator, rooms: Rooms, count: int) -> list[Box]:
    boxes: list[Box] = []
    for _ in range(count * 30):
        if len(boxes) == count:
            break
        room = rooms.rooms[int(rng.integers(len(rooms.rooms)))]
        hx, hy = (float(v) for v in rng.uniform(0.15, 0.4, size=2))
        height = float(rng.uniform(0.3, 0.75))
        reach = max(hx, hy) + ROBOT_CLEARANCE
        if min(room.x1 - room.x0, room.y1 - room.y0) < 2 * reach + 0.2:
            continue
        cx, cy = room.sample_point(rng, reach)
        box = Box(cx, cy, hx, hy, height)
        near_door = any(box.gap_to(d.x, d.y) < DOOR_WIDTH for d in rooms.doorways)
        crowded = any(_box_gap(box, other) < ROBOT_CLEARANCE * 1.5 for other in boxes)
        if not (near_door or crowded):
            boxes.append(box)
    return boxes


def _box_gap(a: Box, b: Box) -> float:
    dx = max(abs(a.cx - b.cx) - a.hx - b.hx, 0.0)
    dy = max(abs(a.cy - b.cy) - a.hy - b.hy, 0.0)
    return math.hypot(dx, dy)


def free_point(
    rng: np.random.Generator,
    room: Room,
    margin: float,
    obstacles: Sequence[Box],
    taken: Sequence[tuple[float, float]],
    spacing: float,
    tries: int = 60,
) -> tuple[float, float] | None:
    """A point in ``room``, ``margin`` from its walls and obstacles, ``spacing`` from ``taken``."""
    if min(room.x1 - room.x0, room.y1 - room.y0) <= 2 * margin:
        return None
    for _ in range(tries):
        x, y = room.sample_point(rng, margin)
        if any(box.gap_to(x, y) < margin for box in obstacles):
            continue
        if any(math.hypot(x - px, y - py) < spacing for px, py in taken):
            continue
        return x, y
    return None
