"""Per-episode scene sampling: which objects, their colours and where they stand.

All draws come from the generator passed in (the env's ``np_random``), so a seed fixes the
scene. Colour-shape pairs are unique within a scene so every object has a plain name
("red cube"), and the training split never shows a held-out colour-shape pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla_gym.envs.language import COLOURS, HELD_OUT_COMBOS, SceneObject, combo_allowed
from vla_gym.envs.tabletop.objects import POOL, SHAPE_INFO

# Table region objects are placed in (robot base frame, metres).
X_RANGE = (0.36, 0.64)
Y_RANGE = (-0.22, 0.22)
CLEARANCE = 0.035  # free gap between footprints, so the gripper fits between objects
MAX_TRIES = 500


@dataclass(frozen=True)
class PlacedObject:
    slot: str
    colour: str
    shape: str
    xy: tuple[float, float]
    yaw: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def scene_object(self) -> SceneObject:
        return SceneObject(name=self.slot, colour=self.colour, shape=self.shape, xy=self.xy)


@dataclass(frozen=True)
class Layout:
    objects: tuple[PlacedObject, ...]

    def get(self, key: str) -> PlacedObject:
        """Look an object up by slot ("cube1") or by name ("red cube")."""
        for obj in self.objects:
            if key in (obj.slot, obj.name):
                return obj
        raise ValueError(f"no object {key!r} in this scene; objects: {self.names()}")

    def names(self) -> list[str]:
        return [obj.name for obj in self.objects]

    def scene_objects(self) -> list[SceneObject]:
        return [obj.scene_object() for obj in self.objects]


def _choose_shapes(rng: np.random.Generator, required: Sequence[str], total: int) -> list[str]:
    counts = dict.fromkeys(POOL, 0)
    shapes = []
    for shape in required:
        counts[shape] += 1
        if counts[shape] > POOL[shape]:
            raise ValueError(f"a scene holds at most {POOL[shape]} objects of shape {shape!r}")
        shapes.append(shape)
    while len(shapes) < total:
        free = [s for s in POOL if counts[s] < POOL[s]]
        shape = free[int(rng.integers(len(free)))]
        counts[shape] += 1
        shapes.append(shape)
    return shapes


def _choose_colours(
    rng: np.random.Generator, shapes: Sequence[str], split: str
) -> list[str]:
    """Unique colour per shape; in the test split the first object takes a held-out pair."""
    names = list(COLOURS)
    used: set[tuple[str, str]] = set()
    colours = []
    for index, shape in enumerate(shapes):
        options = [c for c in names if (c, shape) not in used and combo_allowed(c, shape, split)]
        if split == "test" and index == 0:
            held = [c for c in options if (c, shape) in HELD_OUT_COMBOS]
            options = held or options
        colour = options[int(rng.integers(len(options)))]
        used.add((colour, shape))
        colours.append(colour)
    return colours


def _place(rng: np.random.Generator, shapes: Sequence[str]) -> list[tuple[float, float]]:
    for _ in range(MAX_TRIES):
        placed: list[tuple[float, float]] = []
        for shape in shapes:
            radius = SHAPE_INFO[shape].footprint_radius
            xy = (float(rng.uniform(*X_RANGE)), float(rng.uniform(*Y_RANGE)))
            if all(
                math.dist(xy, other) >= radius + SHAPE_INFO[s].footprint_radius + CLEARANCE
                for other, s in zip(placed, shapes)
            ):
                placed.append(xy)
            else:
                break
        if len(placed) == len(shapes):
            return placed
    raise RuntimeError(f"could not place objects {list(shapes)} without overlap")


def sample_layout(
    rng: np.random.Generator, required: Sequence[str], total: int, split: str
) -> Layout:
    """A scene with the ``required`` shapes first (in order) plus random distractors."""
    shapes = _choose_shapes(rng, required, max(total, len(required)))
    colours = _choose_colours(rng, shapes, split)
    positions = _place(rng, shapes)
    slot_index = dict.fromkeys(POOL, 0)
    objects = []
    for shape, colour, xy in zip(shapes, colours, positions):
        slot = f"{shape}{slot_index[shape]}"
        slot_index[shape] += 1
        yaw = float(rng.uniform(-math.pi / 4, math.pi / 4)) if shape == "cube" else 0.0
        objects.append(PlacedObject(slot, colour, shape, xy, yaw))
    return Layout(tuple(objects))
