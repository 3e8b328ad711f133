"""What every tabletop task family shares: the episode record and reward helpers.

A task decides what the episode is about (target, destination, side), says it in words,
scores progress with named unweighted reward terms and judges success in ``evaluate``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla_gym.envs.language import make_instruction
from vla_gym.envs.tabletop.layout import Layout, PlacedObject
from vla_gym.envs.tabletop.sim import TabletopSim

SETTLED_SPEED = 0.05  # m/s: an object moving slower than this counts as at rest


@dataclass(frozen=True)
class Episode:
    family: str
    target: PlacedObject
    destination: PlacedObject | None = None
    side: str | None = None
    goal_xy: tuple[float, float] | None = None
    instruction: str = ""


def closeness(distance: float, scale: float = 0.1) -> float:
    """Bounded shaping term in (0, 1]: 1 at zero distance, ~0.24 at ``scale``."""
    return 1.0 - math.tanh(distance / scale)


class TabletopTask(ABC):
    """Base of the four families: set the class attributes and implement the hooks below.

    The env adds a ``success`` reward term from ``evaluate()`` itself, so families do not
    repeat the success check inside ``reward_terms``.
    """

    family = ""
    max_episode_steps = 100
    target_shapes: Sequence[str] = ()

    @abstractmethod
    def required_shapes(self, rng: np.random.Generator) -> list[str]:
        """Shapes the scene must contain, the task's primary object first."""

    def eligible_targets(self, layout: Layout) -> list[PlacedObject]:
        return [obj for obj in layout.objects if obj.shape in self.target_shapes]

    def roles(
        self, layout: Layout, target: PlacedObject, rng: np.random.Generator
    ) -> Episode | None:
        """Destination, side and goal for ``target``; None when this scene cannot host it."""
        return Episode(self.family, target)

    @abstractmethod
    def reward_terms(self, sim: TabletopSim, episode: Episode) -> dict[str, float]:
        """Named, unweighted shaping terms (the env weights and sums them)."""

    @abstractmethod
    def evaluate(self, sim: TabletopSim, episode: Episode) -> dict[str, bool]:
        """``{"success": ...}`` plus any other verdicts."""

    # -- shared ------------------------------------------------------------------------------
    def describe(
        self, episode: Episode, layout: Layout, rng: np.random.Generator, split: str
    ) -> str:
        return make_instruction(
            self.family,
            episode.target.scene_object(),
            layout.scene_objects(),
            rng,
            split=split,
            destination=episode.destination.scene_object() if episode.destination else None,
            side=episode.side,
        )

    def reach_term(self, sim: TabletopSim, episode: Episode) -> float:
        return closeness(sim.ee_distance(episode.target.slot))

    def released_at_rest(self, sim: TabletopSim, slot: str) -> bool:
        return not sim.touching(slot) and sim.object_speed(slot) < SETTLED_SPEED
