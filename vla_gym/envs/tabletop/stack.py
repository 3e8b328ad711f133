"""Stack: put one cube on top of another.

Randomisations: layout, colours, which cube goes on which.
Success: the top cube rests centred on the bottom one, released and at rest.
"""

from __future__ import annotations

import math

import numpy as np

from vla_gym.envs.tabletop.layout import Layout, PlacedObject
from vla_gym.envs.tabletop.objects import CUBE_HALF
from vla_gym.envs.tabletop.sim import TabletopSim
from vla_gym.envs.tabletop.task import Episode, TabletopTask, closeness

CENTRE_TOLERANCE = 0.02


class StackTask(TabletopTask):
    family = "stack"
    max_episode_steps = 160
    target_shapes = ("cube",)

    def required_shapes(self, rng: np.random.Generator) -> list[str]:
        return ["cube", "cube"]

    def roles(
        self, layout: Layout, target: PlacedObject, rng: np.random.Generator
    ) -> Episode | None:
        others = [o for o in layout.objects if o.shape == "cube" and o.slot != target.slot]
        if not others:
            return None
        return Episode(self.family, target, others[int(rng.integers(len(others)))])

    def _offsets(self, sim: TabletopSim, episode: Episode) -> tuple[float, float]:
        assert episode.destination is not None
        top = sim.object_pos(episode.target.slot)
        bottom = sim.object_pos(episode.destination.slot)
        return math.dist(top[:2], bottom[:2]), float(top[2] - bottom[2])

    def reward_terms(self, sim: TabletopSim, episode: Episode) -> dict[str, float]:
        slot = episode.target.slot
        grasped = sim.is_grasping(slot)
        xy, _ = self._offsets(sim, episode)
        carried = grasped or sim.object_height(slot) > 0.01
        return {
            "reach": self.reach_term(sim, episode),
            "grasp": float(grasped),
            "align": closeness(xy) if carried else 0.0,
        }

    def evaluate(self, sim: TabletopSim, episode: Episode) -> dict[str, bool]:
        xy, dz = self._offsets(sim, episode)
        on_top = xy < CENTRE_TOLERANCE and abs(dz - 2 * CUBE_HALF) < 0.01
        return {"success": bool(on_top and self.released_at_rest(sim, episode.target.slot))}
