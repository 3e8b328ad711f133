"""Pick: lift the named object off the table.

Randomisations: scene layout, colours, target among the pickable objects (cube, ball, can).
Success: the target is held by both fingers at least ``LIFT_HEIGHT`` above its resting height.
"""

from __future__ import annotations

import numpy as np

from vla_gym.envs.language import PICKABLE_SHAPES
from vla_gym.envs.tabletop.sim import TabletopSim
from vla_gym.envs.tabletop.task import Episode, TabletopTask

LIFT_HEIGHT = 0.05


class PickTask(TabletopTask):
    family = "pick"
    max_episode_steps = 100
    target_shapes = PICKABLE_SHAPES

    def required_shapes(self, rng: np.random.Generator) -> list[str]:
        return [PICKABLE_SHAPES[int(rng.integers(len(PICKABLE_SHAPES)))]]

    def reward_terms(self, sim: TabletopSim, episode: Episode) -> dict[str, float]:
        slot = episode.target.slot
        return {
            "reach": self.reach_term(sim, episode),
            "grasp": float(sim.is_grasping(slot)),
            "lift": min(max(sim.object_height(slot) / LIFT_HEIGHT, 0.0), 1.0),
        }

    def evaluate(self, sim: TabletopSim, episode: Episode) -> dict[str, bool]:
        slot = episode.target.slot
        lifted = sim.object_height(slot) >= LIFT_HEIGHT
        return {"success": bool(lifted and sim.is_grasping(slot))}
