"""Place: put the named object on the plate or in the bowl.

Randomisations: layout, colours, target among pickable objects, receptacle (plate or bowl).
Success: the target rests inside the receptacle's rim, released and at rest.
"""

from __future__ import annotations

import math

import numpy as np

from vla_gym.envs.language import PICKABLE_SHAPES, RECEPTACLE_SHAPES
from vla_gym.envs.tabletop.layout import Layout, PlacedObject
from vla_gym.envs.tabletop.objects import SHAPE_INFO
from vla_gym.envs.tabletop.sim import TabletopSim
from vla_gym.envs.tabletop.task import Episode, TabletopTask, closeness

# Horizontal distance from the receptacle centre within which an object counts as placed.
INSIDE_RADIUS = {"plate": 0.055, "bowl": 0.045}


class PlaceTask(TabletopTask):
    family = "place"
    max_episode_steps = 160
    target_shapes = PICKABLE_SHAPES

    def required_shapes(self, rng: np.random.Generator) -> list[str]:
        pick = PICKABLE_SHAPES[int(rng.integers(len(PICKABLE_SHAPES)))]
        return [pick, RECEPTACLE_SHAPES[int(rng.integers(len(RECEPTACLE_SHAPES)))]]

    def roles(
        self, layout: Layout, target: PlacedObject, rng: np.random.Generator
    ) -> Episode | None:
        receptacles = [obj for obj in layout.objects if obj.shape in RECEPTACLE_SHAPES]
        if not receptacles:
            return None
        destination = receptacles[int(rng.integers(len(receptacles)))]
        return Episode(self.family, target, destination)

    def _xy_distance(self, sim: TabletopSim, episode: Episode) -> float:
        assert episode.destination is not None
        obj = sim.object_pos(episode.target.slot)
        dst = sim.object_pos(episode.destination.slot)
        return math.dist(obj[:2], dst[:2])

    def reward_terms(self, sim: TabletopSim, episode: Episode) -> dict[str, float]:
        slot = episode.target.slot
        grasped = sim.is_grasping(slot)
        carried = grasped or sim.object_height(slot) > 0.01
        return {
            "reach": self.reach_term(sim, episode),
            "grasp": float(grasped),
            "transport": closeness(self._xy_distance(sim, episode)) if carried else 0.0,
        }

    def evaluate(self, sim: TabletopSim, episode: Episode) -> dict[str, bool]:
        assert episode.destination is not None
        slot, dst = episode.target.slot, episode.destination
        inside = self._xy_distance(sim, episode) < INSIDE_RADIUS[dst.shape]
        # Resting on the receptacle's floor, not held above it.
        floor_z = sim.object_pos(dst.slot)[2] + SHAPE_INFO[dst.shape].rest_height
        resting_z = floor_z + SHAPE_INFO[episode.target.shape].rest_height
        low = sim.object_pos(slot)[2] < resting_z + 0.02
        return {"success": bool(inside and low and self.released_at_rest(sim, slot))}
