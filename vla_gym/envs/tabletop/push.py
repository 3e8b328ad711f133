"""Push: slide the named object to a side of another object.

Randomisations: layout, colours, target (cube or can: balls roll away), landmark, side.
Success: the target stands within ``GOAL_TOLERANCE`` of the goal point beside the landmark,
still on the table. Sides are in the robot frame: left = +y, right = -y, back = +x (away from
the camera), front = -x.
"""

from __future__ import annotations

import math

import numpy as np

from vla_gym.envs.language import PUSH_SIDES
from vla_gym.envs.tabletop.layout import X_RANGE, Y_RANGE, Layout, PlacedObject
from vla_gym.envs.tabletop.objects import SHAPE_INFO
from vla_gym.envs.tabletop.sim import TabletopSim
from vla_gym.envs.tabletop.task import Episode, TabletopTask, closeness

GOAL_TOLERANCE = 0.04
SIDE_DIRECTIONS = {
    "left": (0.0, 1.0), "right": (0.0, -1.0), "back": (1.0, 0.0), "front": (-1.0, 0.0),
}
MIN_TRAVEL = 0.08
GOAL_MARGIN = 0.03  # gap between the target and landmark footprints at the goal
PUSH_STANDOFF = 0.035  # m between the target's edge and the gripper when a push starts


def _goal_for(target: PlacedObject, landmark: PlacedObject, side: str) -> tuple[float, float]:
    gap = (
        SHAPE_INFO[target.shape].footprint_radius
        + SHAPE_INFO[landmark.shape].footprint_radius
        + GOAL_MARGIN
    )
    dx, dy = SIDE_DIRECTIONS[side]
    return landmark.xy[0] + gap * dx, landmark.xy[1] + gap * dy


def _segment_distance(point: tuple[float, float], start: np.ndarray, end: np.ndarray) -> float:
    seg = end - start
    t = float(np.clip((np.asarray(point) - start) @ seg / max(float(seg @ seg), 1e-12), 0, 1))
    return float(np.linalg.norm(start + t * seg - np.asarray(point)))


def _goal_is_clear(goal: tuple[float, float], target: PlacedObject, layout: Layout) -> bool:
    """The goal is on the table and the straight push, from a standoff behind the target to
    the goal, passes no other object: a pushing task a person could do without re-planning."""
    inside = X_RANGE[0] - 0.02 <= goal[0] <= X_RANGE[1] + 0.03 and abs(goal[1]) <= Y_RANGE[1] + 0.03
    if not inside or math.dist(goal, target.xy) < MIN_TRAVEL:
        return False
    radius = SHAPE_INFO[target.shape].footprint_radius
    start, end = np.asarray(target.xy), np.asarray(goal)
    direction = (end - start) / np.linalg.norm(end - start)
    approach = start - direction * (radius + PUSH_STANDOFF + 0.02)
    return all(
        _segment_distance(o.xy, approach, end)
        >= radius + SHAPE_INFO[o.shape].footprint_radius + 0.01
        for o in layout.objects
        if o.slot != target.slot
    )


class PushTask(TabletopTask):
    family = "push"
    max_episode_steps = 160
    target_shapes = ("cube", "can")

    def required_shapes(self, rng: np.random.Generator) -> list[str]:
        landmark = ("cube", "can", "ball", "plate", "bowl")[int(rng.integers(5))]
        return [self.target_shapes[int(rng.integers(2))], landmark]

    def roles(
        self, layout: Layout, target: PlacedObject, rng: np.random.Generator
    ) -> Episode | None:
        options = [
            (landmark, side)
            for landmark in layout.objects
            if landmark.slot != target.slot
            for side in PUSH_SIDES
            if _goal_is_clear(_goal_for(target, landmark, side), target, layout)
        ]
        if not options:
            return None
        landmark, side = options[int(rng.integers(len(options)))]
        return Episode(self.family, target, landmark, side, _goal_for(target, landmark, side))

    def _goal_distance(self, sim: TabletopSim, episode: Episode) -> float:
        assert episode.goal_xy is not None
        return math.dist(sim.object_pos(episode.target.slot)[:2], episode.goal_xy)

    def reward_terms(self, sim: TabletopSim, episode: Episode) -> dict[str, float]:
        return {
            "reach": self.reach_term(sim, episode),
            "push": closeness(self._goal_distance(sim, episode)),
            "on_table": float(abs(sim.object_height(episode.target.slot)) < 0.01),
        }

    def evaluate(self, sim: TabletopSim, episode: Episode) -> dict[str, bool]:
        near = self._goal_distance(sim, episode) < GOAL_TOLERANCE
        on_table = abs(sim.object_height(episode.target.slot)) < 0.01
        return {"success": bool(near and on_table)}
