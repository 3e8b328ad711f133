"""Referring expressions: noun phrases that pick out exactly one object in a tabletop scene.

Frame convention (robot base frame, metres, seen from the camera, which sits behind the robot):

* ``x`` points away from the robot and the camera, so "behind B" means larger ``x`` than B
  (farther from the viewer) and "in front of B" means smaller ``x``;
* ``y`` points to the robot's left, which is also image-left, so "left of B" means larger ``y``
  than B and "right of B" smaller ``y``.

Noun-phrase grammar (what :func:`describe` produces and :func:`resolve` accepts)::

    simple     := "the" [colour] (shape-word | "object" | "one")
    relational := "the" shape-word relation simple
    relation   := "left of" | "right of" | "in front of" | "behind"

Scenes should hold unique (colour, shape) pairs: the scene sampler guarantees it, and it makes
"the <colour> <shape>" always available. Without it :func:`describe` falls back on relations and
may raise ``ValueError`` when none is clear enough.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vla_gym.envs.language.vocabulary import (
    COLOURS,
    GENERIC_NOUNS,
    all_shape_words,
    shape_of_word,
    shape_synonyms,
    validate_colour,
    validate_shape,
    validate_split,
)

# Relation phrase -> (axis of ``xy``, sign): the target's offset from the landmark along that
# axis, times the sign, is positive when the relation holds.
RELATIONS: dict[str, tuple[int, float]] = {
    "left of": (1, 1.0),
    "right of": (1, -1.0),
    "in front of": (0, -1.0),
    "behind": (0, 1.0),
}
# The target must satisfy a relation by at least this much (metres) for describe() to use it,
# so that a person looking at the image would agree.
RELATION_MARGIN = 0.05
_EPS = 1e-9


@dataclass(frozen=True)
class SceneObject:
    """One object on the table: a unique ``name``, its colour and shape, and its ``xy`` position
    in metres in the robot base frame (see the module docstring for the axes)."""

    name: str
    colour: str
    shape: str
    xy: tuple[float, float]

    def __post_init__(self) -> None:
        validate_colour(self.colour)
        validate_shape(self.shape)
        x, y = self.xy
        object.__setattr__(self, "xy", (float(x), float(y)))


def alternation(words: Iterable[str]) -> str:
    """Regex matching any of ``words``, longest first so that prefixes cannot win early."""
    ordered = sorted(set(words), key=lambda w: (-len(w), w))
    return "(?:" + "|".join(re.escape(w) for w in ordered) + ")"


COLOUR_PATTERN = alternation(COLOURS)
SHAPE_WORD_PATTERN = alternation(all_shape_words())
HEAD_PATTERN = alternation(all_shape_words() + GENERIC_NOUNS)
RELATION_PATTERN = alternation(RELATIONS)
# Regex fragments (no capturing groups) for the two kinds of noun phrase; templates embed them.
SIMPLE_NP_PATTERN = rf"the (?:{COLOUR_PATTERN} )?{HEAD_PATTERN}"
RELATIONAL_NP_PATTERN = rf"the {SHAPE_WORD_PATTERN} {RELATION_PATTERN} {SIMPLE_NP_PATTERN}"

_SIMPLE_RE = re.compile(rf"the (?:(?P<colour>{COLOUR_PATTERN}) )?(?P<head>{HEAD_PATTERN})")
_RELATIONAL_RE = re.compile(
    rf"the (?P<head>{SHAPE_WORD_PATTERN}) (?P<rel>{RELATION_PATTERN}) "
    rf"(?P<landmark>{SIMPLE_NP_PATTERN})"
)


def normalise(text: str) -> str:
    """Lower-case ``text`` and collapse runs of whitespace, so parsing ignores layout."""
    return " ".join(text.lower().split())


def relation_offset(obj: SceneObject, landmark: SceneObject, relation: str) -> float:
    """Signed distance (m) by which ``obj`` satisfies ``relation`` to ``landmark``; > 0 holds."""
    axis, sign = RELATIONS[relation]
    return sign * (obj.xy[axis] - landmark.xy[axis])


def resolve(expression: str, scene: Sequence[SceneObject]) -> list[SceneObject]:
    """All objects of ``scene`` that the noun phrase ``expression`` can refer to, in scene order.

    Shape words of every split are accepted. A relation holds for any positive offset, so an
    expression produced by :func:`describe` (which demands a clear margin) resolves to its
    target alone. Raises ``ValueError`` if ``expression`` is not a noun phrase of the grammar.
    """
    text = normalise(expression)
    match = _RELATIONAL_RE.fullmatch(text)
    if match is not None:
        return _resolve_relational(match, scene)
    match = _SIMPLE_RE.fullmatch(text)
    if match is not None:
        return _resolve_simple(match, scene)
    raise ValueError(
        f"not a noun phrase: {expression!r}; expected 'the [colour] <shape|object|one>' "
        f"or 'the <shape> <{'|'.join(RELATIONS)}> <noun phrase>'"
    )


def landmark_of(expression: str, scene: Sequence[SceneObject]) -> SceneObject | None:
    """The object a relational noun phrase names its referent by ("the cube left of the red
    bowl" -> the red bowl), when exactly one object fits the landmark phrase; None for a
    simple phrase or an unresolvable landmark."""
    match = _RELATIONAL_RE.fullmatch(normalise(expression))
    if match is None:
        return None
    landmarks = resolve(match["landmark"], scene)
    return landmarks[0] if len(landmarks) == 1 else None


def _resolve_simple(match: re.Match[str], scene: Sequence[SceneObject]) -> list[SceneObject]:
    """Objects matching an optional colour and a shape word or generic noun."""
    colour, shape = match["colour"], shape_of_word(match["head"])
    return [
        obj
        for obj in scene
        if (colour is None or obj.colour == colour) and (shape is None or obj.shape == shape)
    ]


def _resolve_relational(match: re.Match[str], scene: Sequence[SceneObject]) -> list[SceneObject]:
    """Objects of the head shape that satisfy the relation to some landmark candidate."""
    landmarks = resolve(match["landmark"], scene)
    shape, relation = shape_of_word(match["head"]), match["rel"]
    return [
        obj
        for obj in scene
        if obj.shape == shape
        and any(relation_offset(obj, lm, relation) > _EPS for lm in landmarks if lm != obj)
    ]


def describe(
    target: SceneObject,
    scene: Sequence[SceneObject],
    rng: np.random.Generator,
    split: str = "train",
) -> str:
    """A noun phrase starting with "the" that identifies ``target`` uniquely in ``scene``.

    Valid candidates are grouped by form (colour+shape, shape only, colour only, relational);
    ``rng`` picks a form, then a phrase, so the many relational variants do not crowd out the
    short ones. Shape words come from ``split``. Raises ``ValueError`` if ``target`` is not in
    ``scene`` or no unique description exists.
    """
    validate_split(split)
    _check_scene(scene)
    if target not in scene:
        raise ValueError(f"target {target.name!r} is not in the scene")
    forms = _simple_forms(target, scene, split)
    relational = _relational_candidates(target, scene, split)
    if relational:
        forms.append(relational)
    if not forms:
        raise ValueError(
            f"no unique description for {target.name!r} ({target.colour} {target.shape}); "
            "give scene objects unique (colour, shape) pairs"
        )
    group = forms[int(rng.integers(len(forms)))]
    return group[int(rng.integers(len(group)))]


def _check_scene(scene: Sequence[SceneObject]) -> None:
    """Refuse scenes whose object names are not unique."""
    names = [obj.name for obj in scene]
    if len(names) != len(set(names)):
        raise ValueError(f"scene object names must be unique, got {names}")


def _simple_forms(obj: SceneObject, scene: Sequence[SceneObject], split: str) -> list[list[str]]:
    """Non-relational phrases naming only ``obj``, grouped by form; empty forms are dropped."""
    words = shape_synonyms(obj.shape, split)
    forms = [
        [f"the {obj.colour} {word}" for word in words],
        [f"the {word}" for word in words],
        [f"the {obj.colour} {noun}" for noun in GENERIC_NOUNS],
    ]
    unique = [[p for p in form if resolve(p, scene) == [obj]] for form in forms]
    return [form for form in unique if form]


def clearly_related(
    target: SceneObject, landmark: SceneObject, relation: str, scene: Sequence[SceneObject]
) -> bool:
    """Whether ``target`` satisfies ``relation`` to ``landmark`` by :data:`RELATION_MARGIN`
    while every other object of its shape clearly fails it (offset <= 0)."""
    if relation_offset(target, landmark, relation) < RELATION_MARGIN - _EPS:
        return False
    rivals = (o for o in scene if o.shape == target.shape and o != target and o != landmark)
    return all(relation_offset(o, landmark, relation) <= _EPS for o in rivals)


def _relational_candidates(
    target: SceneObject, scene: Sequence[SceneObject], split: str
) -> list[str]:
    """Phrases "the <shape> <relation> <landmark>" that pick out ``target`` with a clear margin."""
    phrases: list[str] = []
    for landmark in scene:
        if landmark == target:
            continue
        landmark_phrases = [p for form in _simple_forms(landmark, scene, split) for p in form]
        for relation in RELATIONS:
            if not landmark_phrases or not clearly_related(target, landmark, relation, scene):
                continue
            for word in shape_synonyms(target.shape, split):
                for landmark_phrase in landmark_phrases:
                    phrase = f"the {word} {relation} {landmark_phrase}"
                    if resolve(phrase, scene) == [target]:
                        phrases.append(phrase)
    return phrases
