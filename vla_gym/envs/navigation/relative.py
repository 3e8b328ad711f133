"""NavRelative: the target is named through a relation to another landmark or to the rooms.

Description: the target shares its shape with at least one rival, so its shape alone does not
say which; the instruction adds a relation: "the ball next to the green cone", "the chair in
the other room" (two-room worlds: the room the robot did not start in), "the can in the room
with the white cube".
Randomisations: as NavGoTo, plus which relation, anchor and rivals.
Success: within ``SUCCESS_RADIUS`` of the target, facing it, and stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vla_gym.envs.navigation.language import (
    LANDMARK_SHAPES,
    NEAR_DISTANCE,
    NEAR_MARGIN,
    Landmark,
    relational_phrase,
)
from vla_gym.envs.navigation.task import NavTask, Placer, Plan, draw_identities
from vla_gym.envs.navigation.world import Box, Rooms

_NEAR = (0.55, NEAR_DISTANCE - 0.1)  # m from the anchor, for the target of "next to"


class RelativeTask(NavTask):
    family = "relative"

    def plan(self, rng: np.random.Generator, rooms: Rooms, obstacles: Sequence[Box],
             count: int, split: str) -> Plan | None:
        kinds = ["next to"]
        if len(rooms.rooms) == 2:
            kinds.append("other room")
        if len(rooms.rooms) >= 2:
            kinds.append("room with")
        kind = kinds[int(rng.integers(len(kinds)))]
        placer = Placer(rng, rooms, obstacles)
        arranged = _ARRANGERS[kind](rng, placer, rooms, split)
        if arranged is None:
            return None
        target, anchor, start_rooms = arranged
        others = [s for s in LANDMARK_SHAPES if s != target.shape]
        extra = max(count - len(placer.placed), 0)
        for colour, shape in draw_identities(rng, extra, split, others, placer.pairs()):
            placer.place(colour, shape)
        phrase = relational_phrase(target, kind, anchor, placer.placed, rng, split)
        return Plan(tuple(placer.placed), target, phrase, start_rooms)


Arranged = tuple[Landmark, Landmark | None, tuple[int, ...]]


def _target_and_rival(rng, placer: Placer, split: str, avoid: str | None = None):
    shapes = [s for s in LANDMARK_SHAPES if s != avoid]
    pairs = draw_identities(rng, 2, split, [shapes[int(rng.integers(len(shapes)))]],
                            placer.pairs())
    return pairs if len(pairs) == 2 else None


def _next_to(rng, placer: Placer, rooms: Rooms, split: str) -> Arranged | None:
    anchor_pair = draw_identities(rng, 1, split)
    anchor = placer.place(*anchor_pair[0])
    pairs = _target_and_rival(rng, placer, split, avoid=anchor.shape) if anchor else None
    if anchor is None or pairs is None:
        return None
    target = placer.place(*pairs[0], room=anchor.room, near=(anchor.xy, *_NEAR))
    if target is None:
        return None
    reach = _distance(target.xy, anchor.xy) + NEAR_MARGIN + 0.2
    rival = placer.place(*pairs[1], near=(anchor.xy, reach, 99.0))
    return (target, anchor, tuple(range(len(rooms.rooms)))) if rival else None


def _other_room(rng, placer: Placer, rooms: Rooms, split: str) -> Arranged | None:
    pairs = _target_and_rival(rng, placer, split)
    target_room = int(rng.integers(2))
    if pairs is None:
        return None
    target = placer.place(*pairs[0], room=target_room)
    rival = placer.place(*pairs[1], room=1 - target_room)
    return (target, None, (1 - target_room,)) if target and rival else None


def _room_with(rng, placer: Placer, rooms: Rooms, split: str) -> Arranged | None:
    room = int(rng.integers(len(rooms.rooms)))
    anchor_pair = draw_identities(rng, 1, split)
    anchor = placer.place(*anchor_pair[0], room=room)
    pairs = _target_and_rival(rng, placer, split, avoid=anchor.shape) if anchor else None
    if anchor is None or pairs is None:
        return None
    target = placer.place(*pairs[0], room=room)
    rival_room = (room + 1 + int(rng.integers(len(rooms.rooms) - 1))) % len(rooms.rooms)
    rival = placer.place(*pairs[1], room=rival_room)
    return (target, anchor, tuple(range(len(rooms.rooms)))) if target and rival else None


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(np.hypot(a[0] - b[0], a[1] - b[1]))


_ARRANGERS = {"next to": _next_to, "other room": _other_room, "room with": _room_with}
