"""Instruction templates for the tabletop task families, and a parser that inverts them.

Each family has train templates and held-out test templates. Slots:

* ``{obj}`` / ``{dst}``: noun phrases from :func:`~vla_gym.envs.language.referring.describe`;
* ``{prep}``: "on" for a plate or any other surface, "in" or "into" for a bowl;
* ``{side}`` (left/right/front/back) or ``{rel}`` (left of/right of/in front of/behind): the
  push side, where "front" is nearer the robot (smaller x) and "back" farther (larger x).

The parser compiles every template into regexes (one per choice of simple or relational noun
phrase in each slot), so what is generated is exactly what is parsed.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vla_gym.envs.language.referring import (
    RELATIONAL_NP_PATTERN,
    SIMPLE_NP_PATTERN,
    SceneObject,
    alternation,
    describe,
    landmark_of,
    normalise,
    resolve,
)
from vla_gym.envs.language.vocabulary import (
    COLOURS,
    all_shape_words,
    format_choices,
    validate_name,
    validate_split,
)
from vla_gym.types import INSTRUCTION_CHARSET

TASK_FAMILIES: tuple[str, ...] = ("pick", "place", "push", "stack")
PUSH_SIDES: tuple[str, ...] = ("left", "right", "front", "back")
# Push side -> relation phrase used by "{rel}" templates.
SIDE_RELATIONS: dict[str, str] = {
    "left": "left of",
    "right": "right of",
    "front": "in front of",
    "back": "behind",
}
BOWL_PREPOSITIONS: tuple[str, ...] = ("in", "into")
SURFACE_PREPOSITION = "on"

TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick": (
        "pick up {obj}",
        "pick {obj} up",
        "lift {obj}",
        "grab {obj} and raise it",
        "grasp {obj} and lift it up",
    ),
    "place": (
        "put {obj} {prep} {dst}",
        "place {obj} {prep} {dst}",
        "move {obj} {prep} {dst}",
        "pick up {obj} and put it {prep} {dst}",
    ),
    "push": (
        "push {obj} to the {side} of {dst}",
        "shove {obj} over to the {side} of {dst}",
        "slide {obj} so it is {rel} {dst}",
        "nudge {obj} until it is {rel} {dst}",
    ),
    "stack": (
        "stack {obj} on {dst}",
        "stack {obj} on top of {dst}",
        "put {obj} on top of {dst}",
        "place {obj} on top of {dst}",
    ),
}
TEST_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick": (
        "raise {obj} off the table",
        "could you take hold of {obj} and lift it?",
    ),
    "place": (
        "set {obj} down {prep} {dst}",
        "transfer {obj} {prep} {dst}",
    ),
    "push": (
        "push {obj} so that it ends up {rel} {dst}",
        "get {obj} to the {side} of {dst} without lifting it",
    ),
    "stack": (
        "pile {obj} onto {dst}",
        "balance {obj} on top of {dst}",
    ),
}

_NP_SLOTS = ("obj", "dst")
_SLOT_PATTERNS: dict[str, str] = {
    "prep": alternation((SURFACE_PREPOSITION, *BOWL_PREPOSITIONS)),
    "side": alternation(PUSH_SIDES),
    "rel": alternation(SIDE_RELATIONS.values()),
}
_REQUIRED_SLOTS: dict[str, tuple[frozenset[str], ...]] = {
    "pick": (frozenset({"obj"}),),
    "place": (frozenset({"obj", "prep", "dst"}),),
    "push": (frozenset({"obj", "side", "dst"}), frozenset({"obj", "rel", "dst"})),
    "stack": (frozenset({"obj", "dst"}),),
}
_MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class ParsedInstruction:
    """What an instruction asks for: the task and the objects its noun phrases can refer to.

    ``target`` and ``destination`` hold more than one object when a phrase is ambiguous in the
    scene, and none when it matches nothing; ``templates`` are the templates the text matched.
    """

    task: str
    target: list[SceneObject]
    destination: list[SceneObject]
    side: str | None
    templates: tuple[str, ...] = field(default=())


def validate_task(task: str) -> str:
    return validate_name("task", task, TASK_FAMILIES)


def validate_side(side: str) -> str:
    return validate_name("side", side, PUSH_SIDES)


def all_templates(task: str, split: str) -> tuple[str, ...]:
    """The templates of ``task`` used in ``split`` ('all' gives train then test templates)."""
    validate_task(task)
    validate_split(split)
    train, test = TRAIN_TEMPLATES[task], TEST_TEMPLATES[task]
    return {"train": train, "test": test, "all": train + test}[split]


def template_slots(template: str) -> frozenset[str]:
    """The slot names (e.g. ``obj``, ``dst``) a template contains."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


def make_instruction(
    task: str,
    target: SceneObject,
    scene: Sequence[SceneObject],
    rng: np.random.Generator,
    split: str = "train",
    destination: SceneObject | None = None,
    side: str | None = None,
) -> str:
    """A sentence asking to do ``task`` with ``target`` (and ``destination``/``side``).

    The template comes from ``split``'s templates and the noun phrases from
    :func:`describe`. The sentence is parsed back before it is returned, so it always names
    exactly ``target`` and ``destination``. Raises ``ValueError`` on unknown task, split or
    side, on a missing or superfluous destination or side, or if no unambiguous sentence exists.
    """
    _check_arguments(task, split, target, destination, side)
    for _ in range(_MAX_ATTEMPTS):
        text = _render(task, target, scene, rng, split, destination, side)
        if _round_trips(text, task, target, scene, destination, side):
            return text
    raise ValueError(f"could not build an unambiguous {task!r} instruction for {target.name!r}")


def _check_arguments(
    task: str,
    split: str,
    target: SceneObject,
    destination: SceneObject | None,
    side: str | None,
) -> None:
    """Validate the combination of arguments make_instruction was given."""
    validate_task(task)
    validate_split(split)
    if task == "pick":
        if destination is not None:
            raise ValueError("task 'pick' takes no destination")
    elif destination is None:
        raise ValueError(f"task {task!r} needs a destination object")
    elif destination == target:
        raise ValueError("destination must differ from target")
    if task == "push":
        if side is None:
            raise ValueError(f"task 'push' needs a side; valid sides: {format_choices(PUSH_SIDES)}")
        validate_side(side)
    elif side is not None:
        raise ValueError(f"task {task!r} takes no side; only 'push' does")


def _preposition(destination: SceneObject | None, rng: np.random.Generator) -> str:
    """'in'/'into' for a bowl, 'on' for anything else."""
    if destination is not None and destination.shape == "bowl":
        return BOWL_PREPOSITIONS[int(rng.integers(len(BOWL_PREPOSITIONS)))]
    return SURFACE_PREPOSITION


def _render(
    task: str,
    target: SceneObject,
    scene: Sequence[SceneObject],
    rng: np.random.Generator,
    split: str,
    destination: SceneObject | None,
    side: str | None,
) -> str:
    """Fill a randomly chosen template of ``split`` with fresh descriptions."""
    templates = all_templates(task, split)
    template = templates[int(rng.integers(len(templates)))]
    slots = template_slots(template)
    fields = {"obj": describe(target, scene, rng, split)}
    if destination is not None:
        fields["dst"] = describe(destination, scene, rng, split)
    if "prep" in slots:
        fields["prep"] = _preposition(destination, rng)
    if side is not None:
        fields["side"], fields["rel"] = side, SIDE_RELATIONS[side]
    return template.format(**fields)


def _round_trips(
    text: str,
    task: str,
    target: SceneObject,
    scene: Sequence[SceneObject],
    destination: SceneObject | None,
    side: str | None,
) -> bool:
    """Whether ``text`` parses back to exactly the requested task, objects and side."""
    try:
        parsed = parse_instruction(text, scene)
    except ValueError:
        return False
    wanted_destination = [] if destination is None else [destination]
    return (
        parsed.task == task
        and parsed.target == [target]
        and parsed.destination == wanted_destination
        and parsed.side == side
    )


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Reading:
    """One way a sentence matches one template, before the noun phrases are resolved."""

    task: str
    template: str
    obj: str
    dst: str | None
    side: str | None


def _compile(template: str) -> list[re.Pattern[str]]:
    """Regexes for ``template``: one per choice of simple/relational phrase in each NP slot."""
    parts = list(string.Formatter().parse(template))
    np_slots = [name for _, name, _, _ in parts if name in _NP_SLOTS]
    kinds = (SIMPLE_NP_PATTERN, RELATIONAL_NP_PATTERN)
    patterns = []
    for choice in itertools.product(kinds, repeat=len(np_slots)):
        slot_patterns = {**_SLOT_PATTERNS, **dict(zip(np_slots, choice, strict=True))}
        regex = "".join(
            re.escape(literal) + (f"(?P<{name}>{slot_patterns[name]})" if name else "")
            for literal, name, _, _ in parts
        )
        patterns.append(re.compile(regex))
    return patterns


def _check_templates() -> None:
    """Refuse templates with wrong slots, disallowed characters, vocabulary words or duplicates."""
    reserved = set(all_shape_words()) | set(COLOURS)
    seen: dict[str, str] = {}
    for task in TASK_FAMILIES:
        for template in all_templates(task, "all"):
            if template_slots(template) not in _REQUIRED_SLOTS[task]:
                raise ValueError(f"template {template!r} has the wrong slots for {task!r}")
            literal = "".join(lit for lit, _, _, _ in string.Formatter().parse(template))
            if literal != literal.lower() or not set(literal) <= set(INSTRUCTION_CHARSET):
                raise ValueError(f"template {template!r} uses disallowed characters")
            if reserved & set(re.findall(r"[a-z]+", literal)):
                raise ValueError(f"template {template!r} uses a colour or shape word")
            if template in seen:
                raise ValueError(f"template {template!r} is in {seen[template]!r} and {task!r}")
            seen[template] = task


_check_templates()
_COMPILED: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (task, template, pattern)
    for task in TASK_FAMILIES
    for template in all_templates(task, "all")
    for pattern in _compile(template)
)
_REL_TO_SIDE = {rel: side for side, rel in SIDE_RELATIONS.items()}


def _readings(text: str) -> list[_Reading]:
    """Every (template, slot filling) that matches ``text`` exactly, without duplicates."""
    readings: dict[_Reading, None] = {}
    for task, template, pattern in _COMPILED:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        groups = match.groupdict()
        side = groups.get("side") or _REL_TO_SIDE.get(groups.get("rel") or "")
        readings[_Reading(task, template, groups["obj"], groups.get("dst"), side)] = None
    return list(readings)


def parse_instruction(text: str, scene: Sequence[SceneObject]) -> ParsedInstruction:
    """Invert :func:`make_instruction`: the task, side and the objects each phrase refers to.

    Case and spacing are ignored, as is a final '.' or '!'. When a sentence can be read in
    several ways, readings whose phrases all refer to something win; the objects of the
    remaining readings are merged. Raises ``ValueError`` if the text matches no template, or
    if readings disagree on the task or side.
    """
    normalised = normalise(text)
    readings = _readings(normalised)
    if not readings and normalised[-1:] in (".", "!"):
        readings = _readings(normalised[:-1].rstrip())
    if not readings:
        raise ValueError(f"instruction matches no template: {text!r}")
    return _merge([_resolve_reading(r, scene) for r in readings], scene)


def target_landmark(text: str, target: SceneObject, scene: Sequence[SceneObject]
                    ) -> SceneObject | None:
    """The landmark of the phrase by which instruction ``text`` names ``target``: in "pick up
    the cube left of the bowl" the bowl; None when ``target`` is named without a relation (or
    ``text`` matches no template), so a caller can fall back on the target itself."""
    normalised = normalise(text).rstrip(".!").rstrip()
    for reading in _readings(normalised):
        if resolve(reading.obj, scene) == [target]:
            found = landmark_of(reading.obj, scene)
            if found is not None:
                return found
    return None


def _resolve_reading(reading: _Reading, scene: Sequence[SceneObject]) -> ParsedInstruction:
    """Resolve the noun phrases of one reading against ``scene``."""
    destination = [] if reading.dst is None else resolve(reading.dst, scene)
    return ParsedInstruction(
        task=reading.task,
        target=resolve(reading.obj, scene),
        destination=destination,
        side=reading.side,
        templates=(reading.template,),
    )


def _merge(parses: list[ParsedInstruction], scene: Sequence[SceneObject]) -> ParsedInstruction:
    """Combine the readings of one sentence, preferring those that refer to something."""
    complete = [p for p in parses if p.target and (p.task == "pick" or p.destination)]
    pool = complete or parses
    meanings = {(p.task, p.side) for p in pool}
    if len(meanings) > 1:
        raise ValueError(f"instruction is ambiguous between {sorted(meanings, key=str)}")
    task, side = meanings.pop()
    return ParsedInstruction(
        task=task,
        target=[o for o in scene if any(o in p.target for p in pool)],
        destination=[o for o in scene if any(o in p.destination for p in pool)],
        side=side,
        templates=tuple(dict.fromkeys(t for p in pool for t in p.templates)),
    )
