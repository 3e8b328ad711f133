"""Navigation instructions: landmark vocabulary, templates, referring expressions, a resolver.

Landmarks share colours and, where the shape exists on the table too, shape words with the
tabletop vocabulary. Grammar of the object phrase (what :func:`describe` makes and
:func:`resolve` reads)::

    simple     := "the" [colour] shape-word
    relational := "the" shape-word ( "next to" simple
                                   | "in the other room"
                                   | "in the room with" simple )

"next to" means the nearest landmark of that shape to the anchor, and no farther than
:data:`NEAR_DISTANCE`; "the other room" exists when the world has exactly two rooms and means
the one the robot did not start in. Scenes hold unique (colour, shape) pairs, so every landmark
also has a plain name ("red ball").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vla_gym.envs.language import COLOURS, HELD_OUT_COMBOS, TEST_SYNONYMS, TRAIN_SYNONYMS
from vla_gym.envs.language.vocabulary import validate_name, validate_split

LANDMARK_SHAPES: tuple[str, ...] = ("ball", "cube", "can", "cone", "chair")
_OWN_TRAIN = {"cone": ("cone",), "chair": ("chair",)}
_OWN_TEST = {"cone": ("pylon",), "chair": ("seat",)}
NAV_TRAIN_SYNONYMS = {s: TRAIN_SYNONYMS.get(s) or _OWN_TRAIN[s] for s in LANDMARK_SHAPES}
NAV_TEST_SYNONYMS = {s: TEST_SYNONYMS.get(s) or _OWN_TEST[s] for s in LANDMARK_SHAPES}
NAV_HELD_OUT_COMBOS = frozenset(
    {c for c in HELD_OUT_COMBOS if c[1] in LANDMARK_SHAPES}
    | {("yellow", "cone"), ("blue", "chair")}
)

TRAIN_TEMPLATES = ("go to the {obj}", "navigate to the {obj}", "drive to the {obj}",
                   "move to the {obj}", "go over to the {obj}")
TEST_TEMPLATES = ("head to the {obj}", "make your way to the {obj}", "find the {obj}")

NEAR_DISTANCE = 1.0  # m: "next to" holds within this centre distance ...
NEAR_MARGIN = 0.6  # ... and every rival of the target's shape is this much farther away
RELATION_KINDS = ("next to", "other room", "room with")


@dataclass(frozen=True)
class Landmark:
    """A named object in the world: ``slot`` in the model, colour, shape, position, room."""

    slot: str
    colour: str
    shape: str
    xy: tuple[float, float]
    room: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def shape_words(shape: str, split: str) -> tuple[str, ...]:
    validate_name("landmark shape", shape, LANDMARK_SHAPES)
    train, test = NAV_TRAIN_SYNONYMS[shape], NAV_TEST_SYNONYMS[shape]
    return {"train": train, "test": test, "all": train + test}[validate_split(split)]


def combo_allowed(colour: str, shape: str, split: str) -> bool:
    """Training scenes never show a held-out (colour, shape) pair."""
    return validate_split(split) != "train" or (colour, shape) not in NAV_HELD_OUT_COMBOS


def templates(split: str) -> tuple[str, ...]:
    return {"train": TRAIN_TEMPLATES, "test": TEST_TEMPLATES,
            "all": TRAIN_TEMPLATES + TEST_TEMPLATES}[validate_split(split)]


# -- describing ------------------------------------------------------------------------------
def simple_phrase(obj: Landmark, scene: Sequence[Landmark], rng: np.random.Generator,
                  split: str) -> str:
    """"the red ball", or "the ball" when no other landmark is a ball (half the time)."""
    word = _pick(shape_words(obj.shape, split), rng)
    alone = sum(o.shape == obj.shape for o in scene) == 1
    if alone and rng.random() < 0.5:
        return f"the {word}"
    return f"the {obj.colour} {word}"


def relational_phrase(target: Landmark, kind: str, anchor: Landmark | None,
                      scene: Sequence[Landmark], rng: np.random.Generator, split: str) -> str:
    word = _pick(shape_words(target.shape, split), rng)
    if kind == "other room":
        return f"the {word} in the other room"
    if anchor is None:
        raise ValueError(f"relation {kind!r} needs an anchor landmark")
    anchor_text = f"the {anchor.colour} {_pick(shape_words(anchor.shape, split), rng)}"
    link = "next to" if kind == "next to" else "in the room with"
    return f"the {word} {link} {anchor_text}"


def make_instruction(phrase: str, rng: np.random.Generator, split: str) -> str:
    template = _pick(templates(split), rng)
    return template.format(obj=phrase[len("the "):])


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


# -- resolving -------------------------------------------------------------------------------
def _alternation(words) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_WORD_TO_SHAPE = {w: s for table in (NAV_TRAIN_SYNONYMS, NAV_TEST_SYNONYMS)
                  for s, words in table.items() for w in words}
_COLOUR = _alternation(COLOURS)
_WORD = _alternation(_WORD_TO_SHAPE)
_SIMPLE = rf"the (?:(?P<{{p}}colour>{_COLOUR}) )?(?P<{{p}}word>{_WORD})"
_PHRASE_RE = re.compile(
    _SIMPLE.format(p="t")
    + rf"(?: (?P<rel>next to|in the room with) {_SIMPLE.format(p='a')}"
    + r"| (?P<other>in the other room))?$"
)
_TEMPLATE_RES = [re.compile("^" + re.escape(t).replace(r"\{obj\}", "(?P<obj>.+)") + "$")
                 for t in TRAIN_TEMPLATES + TEST_TEMPLATES]


def resolve(instruction: str, scene: Sequence[Landmark], start_room: int,
            num_rooms: int) -> list[Landmark]:
    """Every landmark ``instruction`` can mean (one for a well-formed instruction)."""
    text = instruction.strip().lower().rstrip(".!")
    for template in _TEMPLATE_RES:
        found = template.match(text)
        if found:
            phrase = _PHRASE_RE.match("the " + found.group("obj"))
            if phrase:
                return _resolve_phrase(phrase, scene, start_room, num_rooms)
    return []


def _matching(scene: Sequence[Landmark], colour: str | None, word: str) -> list[Landmark]:
    shape = _WORD_TO_SHAPE[word]
    return [o for o in scene if o.shape == shape and (colour is None or o.colour == colour)]


def _resolve_phrase(match: re.Match[str], scene: Sequence[Landmark], start_room: int,
                    num_rooms: int) -> list[Landmark]:
    candidates = _matching(scene, match.group("tcolour"), match.group("tword"))
    if match.group("other"):
        return [o for o in candidates if o.room != start_room] if num_rooms == 2 else []
    if match.group("rel") is None:
        return candidates
    anchors = _matching(scene, match.group("acolour"), match.group("aword"))
    if len(anchors) != 1:
        return []
    anchor = anchors[0]
    candidates = [o for o in candidates if o is not anchor]
    if match.group("rel") == "in the room with":
        return [o for o in candidates if o.room == anchor.room]
    return nearest_within(candidates, anchor)


def distance(a: Landmark, b: Landmark) -> float:
    return float(np.hypot(a.xy[0] - b.xy[0], a.xy[1] - b.xy[1]))


def nearest_within(candidates: Sequence[Landmark], anchor: Landmark) -> list[Landmark]:
    """The candidate "next to" ``anchor``: nearest, within reach, and clearly nearest."""
    ranked = sorted(candidates, key=lambda o: distance(o, anchor))
    if not ranked or distance(ranked[0], anchor) > NEAR_DISTANCE:
        return []
    if len(ranked) > 1 and distance(ranked[1], anchor) - distance(ranked[0], anchor) < NEAR_MARGIN:
        return []
    return ranked[:1]
