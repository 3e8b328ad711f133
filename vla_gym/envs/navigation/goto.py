"""NavGoTo: drive to the landmark the instruction names by colour and shape.

Description: 3-6 landmarks with unique (colour, shape) pairs stand in one to four rooms; the
instruction names one of them ("go to the red ball", or "go to the cone" when it is the only
cone).
Randomisations: rooms, doorways, furniture, landmark identities and positions, start pose.
Success: within ``SUCCESS_RADIUS`` of the target, facing it, and stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vla_gym.envs.navigation.language import simple_phrase
from vla_gym.envs.navigation.task import NavTask, Placer, Plan, draw_identities
from vla_gym.envs.navigation.world import Box, Rooms


class GoToTask(NavTask):
    family = "goto"

    def plan(self, rng: np.random.Generator, rooms: Rooms, obstacles: Sequence[Box],
             count: int, split: str) -> Plan | None:
        placer = Placer(rng, rooms, obstacles)
        for colour, shape in draw_identities(rng, count, split):
            placer.place(colour, shape)
        if len(placer.placed) < 2:
            return None
        target = placer.placed[int(rng.integers(len(placer.placed)))]
        phrase = simple_phrase(target, placer.placed, rng, split)
        return Plan(tuple(placer.placed), target, phrase, tuple(range(len(rooms.rooms))))
