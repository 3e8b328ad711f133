"""What a navigation task is: how it fills a world with landmarks and names the target.

Every family shares the success test (near the target, facing it, stopped) and the reward
terms; they differ in how landmarks are arranged and how the instruction refers to the target.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla_gym.envs.language import COLOURS
from vla_gym.envs.navigation.language import (
    LANDMARK_SHAPES,
    Landmark,
    combo_allowed,
    make_instruction,
)
from vla_gym.envs.navigation.scene import LANDMARKS_PER_SHAPE
from vla_gym.envs.navigation.world import (
    LANDMARK_FOOTPRINT,
    MIN_LANDMARK_SPACING,
    ROBOT_CLEARANCE,
    Box,
    Rooms,
    free_point,
)

SUCCESS_RADIUS = 0.8  # m, base centre to landmark centre
FACING_TOLERANCE = 0.35  # rad between heading and the bearing to the target
STOPPED_SPEED = 0.05  # m/s
STOPPED_TURN_RATE = 0.1  # rad/s


@dataclass(frozen=True)
class Plan:
    """A task's arrangement: landmarks, the target, the phrase naming it, allowed start rooms."""

    landmarks: tuple[Landmark, ...]
    target: Landmark
    phrase: str
    start_rooms: tuple[int, ...]


@dataclass(frozen=True)
class NavEpisode:
    family: str
    target: Landmark
    instruction: str


class NavTask(ABC):
    family: str

    @abstractmethod
    def plan(self, rng: np.random.Generator, rooms: Rooms, obstacles: Sequence[Box],
             count: int, split: str) -> Plan | None:
        """Landmarks for one episode (``count`` of them where the family allows), or None to
        ask for another world."""

    def instruction(self, plan: Plan, rng: np.random.Generator, split: str) -> str:
        return make_instruction(plan.phrase, rng, split)


def evaluate(pose: np.ndarray, velocity: tuple[float, float], target: Landmark) -> dict:
    """Success and its parts from the base's world pose (x, y, yaw) and body velocity."""
    dx, dy = target.xy[0] - pose[0], target.xy[1] - pose[1]
    distance = math.hypot(dx, dy)
    bearing = (math.atan2(dy, dx) - pose[2] + math.pi) % (2 * math.pi) - math.pi
    stopped = abs(velocity[0]) <= STOPPED_SPEED and abs(velocity[1]) <= STOPPED_TURN_RATE
    near, facing = distance <= SUCCESS_RADIUS, abs(bearing) <= FACING_TOLERANCE
    return {"success": bool(near and facing and stopped), "distance": distance,
            "bearing": bearing, "near": near, "facing": facing, "stopped": stopped}


# -- shared sampling helpers -----------------------------------------------------------------
def draw_identities(rng: np.random.Generator, count: int, split: str,
                    shapes: Sequence[str] = LANDMARK_SHAPES,
                    taken: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """``count`` new (colour, shape) pairs, unique in the scene and allowed in ``split``."""
    used = list(taken)
    chosen: list[tuple[str, str]] = []
    colours = list(COLOURS)
    for _ in range(count * 50):
        if len(chosen) == count:
            break
        shape = shapes[int(rng.integers(len(shapes)))]
        colour = colours[int(rng.integers(len(colours)))]
        pair = (colour, shape)
        full = sum(s == shape for _, s in used) >= LANDMARKS_PER_SHAPE
        if pair in used or full or not combo_allowed(colour, shape, split):
            continue
        used.append(pair)
        chosen.append(pair)
    return chosen


class Placer:
    """Places landmarks one by one in free floor, each in a pool slot of its shape."""

    def __init__(self, rng: np.random.Generator, rooms: Rooms, obstacles: Sequence[Box]) -> None:
        self.rng, self.rooms, self.obstacles = rng, rooms, obstacles
        self.placed: list[Landmark] = []

    def pairs(self) -> list[tuple[str, str]]:
        return [(o.colour, o.shape) for o in self.placed]

    def place(self, colour: str, shape: str, room: int | None = None,
              near: tuple[tuple[float, float], float, float] | None = None) -> Landmark | None:
        """Put a landmark in ``room`` (random if None), optionally at a distance in
        [low, high] from a point: ``near = (xy, low, high)``."""
        index = int(self.rng.integers(len(self.rooms.rooms))) if room is None else room
        margin = LANDMARK_FOOTPRINT[shape] + ROBOT_CLEARANCE
        taken = [o.xy for o in self.placed]
        for _ in range(40):
            point = free_point(self.rng, self.rooms.rooms[index], margin, self.obstacles,
                               taken, MIN_LANDMARK_SPACING, tries=1)
            if point is None or (near is not None and not _within(point, *near)):
                continue
            slot = f"{shape}{sum(o.shape == shape for o in self.placed)}"
            landmark = Landmark(slot, colour, shape, point, index)
            self.placed.append(landmark)
            return landmark
        return None


def _within(point: tuple[float, float], centre: tuple[float, float], low: float,
            high: float) -> bool:
    return low <= math.hypot(point[0] - centre[0], point[1] - centre[1]) <= high
