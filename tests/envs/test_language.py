"""Tests for vla_gym.envs.language: vocabulary, referring expressions, templates and parsing."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_gym.envs.language import (
    COLOURS,
    HELD_OUT_COMBOS,
    PICKABLE_SHAPES,
    PUSH_SIDES,
    RECEPTACLE_SHAPES,
    SHAPES,
    TASK_FAMILIES,
    TEST_SYNONYMS,
    TRAIN_SYNONYMS,
    SceneObject,
    all_templates,
    combo_allowed,
    describe,
    landmark_of,
    make_instruction,
    parse_instruction,
    resolve,
    target_landmark,
    validate_colour,
    validate_shape,
)
from vla_gym.types import INSTRUCTION_CHARSET, INSTRUCTION_SPLITS, MAX_INSTRUCTION_LENGTH

SPLITS = ("train", "test", "all")
MIN_SEPARATION = 0.08


# --------------------------------------------------------------------------- helpers


def random_scene(rng: np.random.Generator, split: str = "train") -> list[SceneObject]:
    """3-6 objects with unique (colour, shape) pairs, >= 8 cm apart; at least two pickables
    and one receptacle so every task family has a target and a destination."""
    n = int(rng.integers(3, 7))
    shapes = [str(rng.choice(PICKABLE_SHAPES)) for _ in range(2)]
    shapes += [str(rng.choice(RECEPTACLE_SHAPES))]
    shapes += [str(rng.choice(SHAPES)) for _ in range(n - 3)]
    used: set[tuple[str, str]] = set()
    objects: list[SceneObject] = []
    for i, shape in enumerate(shapes):
        colour = _free_colour(rng, shape, split, used)
        used.add((colour, shape))
        objects.append(SceneObject(f"obj{i}", colour, shape, _free_xy(rng, objects)))
    return objects


def _free_colour(
    rng: np.random.Generator, shape: str, split: str, used: set[tuple[str, str]]
) -> str:
    options = [c for c in COLOURS if combo_allowed(c, shape, split) and (c, shape) not in used]
    return str(rng.choice(options))


def _free_xy(rng: np.random.Generator, placed: list[SceneObject]) -> tuple[float, float]:
    while True:
        xy = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(-0.3, 0.3)))
        if all(np.hypot(xy[0] - o.xy[0], xy[1] - o.xy[1]) >= MIN_SEPARATION for o in placed):
            return xy


def task_arguments(task: str, scene: list[SceneObject], rng: np.random.Generator) -> dict[str, Any]:
    """A target, and a destination/side where the task needs them."""
    pickables = [o for o in scene if o.shape in PICKABLE_SHAPES]
    target = pickables[int(rng.integers(len(pickables)))]
    others = [o for o in scene if o != target]
    if task == "place":
        others = [o for o in others if o.shape in RECEPTACLE_SHAPES]
    elif task == "stack":
        others = [o for o in others if o.shape in PICKABLE_SHAPES]
    kwargs: dict[str, Any] = {"target": target}
    if task != "pick":
        kwargs["destination"] = others[int(rng.integers(len(others)))]
    if task == "push":
        kwargs["side"] = PUSH_SIDES[int(rng.integers(len(PUSH_SIDES)))]
    return kwargs


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


def check_round_trip(task: str, split: str, seed: int) -> str:
    """Generate one instruction and assert it parses back to exactly what was asked."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, split)
    kwargs = task_arguments(task, scene, rng)
    text = make_instruction(task, scene=scene, rng=rng, split=split, **kwargs)
    parsed = parse_instruction(text, scene)
    assert parsed.task == task, text
    assert parsed.target == [kwargs["target"]], text
    expected_destination = [kwargs["destination"]] if "destination" in kwargs else []
    assert parsed.destination == expected_destination, text
    assert parsed.side == kwargs.get("side"), text
    assert set(parsed.templates) <= set(all_templates(task, split)), text
    return text


TRAIN_ONLY_WORDS = {w for ws in TRAIN_SYNONYMS.values() for w in ws}
TEST_ONLY_WORDS = {w for ws in TEST_SYNONYMS.values() for w in ws}


# --------------------------------------------------------------------------- vocabulary


def test_colours_are_distinct_rgba_in_unit_range() -> None:
    assert len(COLOURS) >= 8
    rgbas = list(COLOURS.values())
    assert len(set(rgbas)) == len(rgbas)
    for rgba in rgbas:
        assert len(rgba) == 4 and all(0.0 <= v <= 1.0 for v in rgba)
    for a in range(len(rgbas)):
        for b in range(a + 1, len(rgbas)):
            assert np.linalg.norm(np.subtract(rgbas[a][:3], rgbas[b][:3])) > 0.25


def test_shape_groups_partition_shapes() -> None:
    assert set(PICKABLE_SHAPES) | set(RECEPTACLE_SHAPES) == set(SHAPES)
    assert not set(PICKABLE_SHAPES) & set(RECEPTACLE_SHAPES)


def test_synonyms_never_name_two_shapes_and_splits_are_disjoint() -> None:
    assert set(TRAIN_SYNONYMS) == set(TEST_SYNONYMS) == set(SHAPES)
    owner: dict[str, str] = {}
    for table in (TRAIN_SYNONYMS, TEST_SYNONYMS):
        for shape, ws in table.items():
            assert ws, shape
            for w in ws:
                assert owner.setdefault(w, shape) == shape, w
    assert not TRAIN_ONLY_WORDS & TEST_ONLY_WORDS
    assert not (TRAIN_ONLY_WORDS | TEST_ONLY_WORDS) & set(COLOURS)


def test_held_out_combos_cover_pickable_shapes() -> None:
    assert 4 <= len(HELD_OUT_COMBOS) <= 6
    assert {shape for _, shape in HELD_OUT_COMBOS} == set(PICKABLE_SHAPES)
    for colour, shape in HELD_OUT_COMBOS:
        assert not combo_allowed(colour, shape, "train")
        assert combo_allowed(colour, shape, "test")
        assert combo_allowed(colour, shape, "all")
    assert combo_allowed("black", "plate", "train")


# --------------------------------------------------------------------------- errors


def _assert_lists(
    exc: pytest.ExceptionInfo[ValueError], names: tuple[str, ...] | list[str]
) -> None:
    for name in names:
        assert repr(name) in str(exc.value)


def test_unknown_names_raise_with_valid_choices() -> None:
    with pytest.raises(ValueError) as exc:
        validate_colour("pink")
    _assert_lists(exc, list(COLOURS))
    with pytest.raises(ValueError) as exc:
        validate_shape("pyramid")
    _assert_lists(exc, SHAPES)
    with pytest.raises(ValueError) as exc:
        SceneObject("o", "red", "pyramid", (0.5, 0.0))
    _assert_lists(exc, SHAPES)
    with pytest.raises(ValueError) as exc:
        combo_allowed("red", "cube", "val")
    _assert_lists(exc, INSTRUCTION_SPLITS)


@pytest.fixture
def scene() -> list[SceneObject]:
    return [
        SceneObject("obj0", "red", "cube", (0.40, 0.10)),
        SceneObject("obj1", "blue", "bowl", (0.55, -0.10)),
        SceneObject("obj2", "green", "ball", (0.60, 0.20)),
    ]


def test_make_instruction_argument_errors(scene: list[SceneObject]) -> None:
    rng = np.random.default_rng(0)
    cube, bowl = scene[0], scene[1]
    with pytest.raises(ValueError) as exc:
        make_instruction("throw", cube, scene, rng)
    _assert_lists(exc, TASK_FAMILIES)
    with pytest.raises(ValueError) as exc:
        make_instruction("pick", cube, scene, rng, split="validation")
    _assert_lists(exc, INSTRUCTION_SPLITS)
    with pytest.raises(ValueError) as exc:
        make_instruction("push", cube, scene, rng, destination=bowl, side="up")
    _assert_lists(exc, PUSH_SIDES)
    with pytest.raises(ValueError) as exc:
        make_instruction("push", cube, scene, rng, destination=bowl)
    _assert_lists(exc, PUSH_SIDES)
    for task in ("place", "push", "stack"):
        with pytest.raises(ValueError, match="destination"):
            make_instruction(task, cube, scene, rng, side="left" if task == "push" else None)
    with pytest.raises(ValueError, match="destination"):
        make_instruction("pick", cube, scene, rng, destination=bowl)
    with pytest.raises(ValueError, match="side"):
        make_instruction("place", cube, scene, rng, destination=bowl, side="left")
    with pytest.raises(ValueError, match="differ"):
        make_instruction("place", cube, scene, rng, destination=cube)


def test_describe_and_parse_errors(scene: list[SceneObject]) -> None:
    stranger = SceneObject("obj9", "white", "can", (0.5, 0.0))
    with pytest.raises(ValueError, match="not in the scene"):
        describe(stranger, scene, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no template"):
        parse_instruction("dance with the red cube", scene)
    with pytest.raises(ValueError, match="noun phrase"):
        resolve("a red cube", scene)
    with pytest.raises(ValueError, match="unique"):
        describe(
            scene[0],
            scene + [SceneObject("obj0", "white", "can", (0.3, 0.3))],
            np.random.default_rng(0),
        )


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("task", TASK_FAMILIES)
def test_random_scenes_round_trip(task: str, split: str) -> None:
    for seed in range(60):
        text = check_round_trip(task, split, seed)
        assert text == text.lower()
        assert set(text) <= set(INSTRUCTION_CHARSET)
        assert len(text) <= MAX_INSTRUCTION_LENGTH


@pytest.mark.parametrize("task", TASK_FAMILIES)
def test_every_template_is_generated_and_parsed(task: str) -> None:
    seen: set[str] = set()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        scene = random_scene(rng, "all")
        kwargs = task_arguments(task, scene, rng)
        text = make_instruction(task, scene=scene, rng=rng, split="all", **kwargs)
        seen.update(parse_instruction(text, scene).templates)
    assert seen == set(all_templates(task, "all"))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    task=st.sampled_from(TASK_FAMILIES),
    split=st.sampled_from(SPLITS),
)
def test_round_trip_property(seed: int, task: str, split: str) -> None:
    check_round_trip(task, split, seed)


@pytest.mark.parametrize("task", TASK_FAMILIES)
def test_train_split_never_uses_held_out_language(task: str) -> None:
    test_templates = set(all_templates(task, "test"))
    for seed in range(80):
        rng = np.random.default_rng(seed)
        scene = random_scene(rng)
        text = make_instruction(
            task, scene=scene, rng=rng, split="train", **task_arguments(task, scene, rng)
        )
        assert not set(parse_instruction(text, scene).templates) & test_templates, text
        assert not words(text) & TEST_ONLY_WORDS, text


@pytest.mark.parametrize("task", TASK_FAMILIES)
def test_test_split_always_uses_held_out_language(task: str) -> None:
    train_templates = set(all_templates(task, "train"))
    for seed in range(80):
        rng = np.random.default_rng(seed)
        scene = random_scene(rng, "test")
        text = make_instruction(
            task, scene=scene, rng=rng, split="test", **task_arguments(task, scene, rng)
        )
        parsed = parse_instruction(text, scene)
        assert parsed.templates and set(parsed.templates) <= set(all_templates(task, "test"))
        assert not set(parsed.templates) & train_templates
        assert not words(text) & TRAIN_ONLY_WORDS, text


def test_all_templates_splits() -> None:
    for task in TASK_FAMILIES:
        train, test = all_templates(task, "train"), all_templates(task, "test")
        assert len(train) >= 3 and 1 <= len(test) <= 3
        assert not set(train) & set(test)
        assert all_templates(task, "all") == train + test


def test_same_seed_gives_same_instruction() -> None:
    def sample(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        scene = random_scene(rng)
        return [
            make_instruction(task, scene=scene, rng=rng, **task_arguments(task, scene, rng))
            for task in TASK_FAMILIES
            for _ in range(5)
        ]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


# --------------------------------------------------------------------------- relations


def _twin_cube_scene(offset_b: tuple[float, float]) -> list[SceneObject]:
    """Two red cubes that only a relation to the blue bowl can tell apart."""
    return [
        SceneObject("a", "red", "cube", (0.50, 0.20)),
        SceneObject("b", "red", "cube", offset_b),
        SceneObject("bowl", "blue", "bowl", (0.50, 0.00)),
    ]


def _all_descriptions(target: SceneObject, scene: list[SceneObject], split: str) -> set[str]:
    rng = np.random.default_rng(0)
    return {describe(target, scene, rng, split) for _ in range(400)}


def test_relation_is_the_only_way_to_tell_twins_apart() -> None:
    scene = _twin_cube_scene((0.50, -0.20))
    a, b, _ = scene
    landmarks = ("the blue bowl", "the bowl", "the blue object", "the blue one")
    expected_a = {f"the {w} left of {lm}" for w in ("cube", "block") for lm in landmarks}
    expected_b = {f"the {w} right of {lm}" for w in ("cube", "block") for lm in landmarks}
    assert _all_descriptions(a, scene, "train") == expected_a
    assert _all_descriptions(b, scene, "train") == expected_b
    assert resolve("the cube left of the bowl", scene) == [a]
    assert resolve("the block right of the blue one", scene) == [b]
    assert _all_descriptions(a, scene, "test") == {
        "the box left of the blue basin",
        "the box left of the basin",
        "the box left of the blue object",
        "the box left of the blue one",
    }


def test_front_and_behind_follow_the_x_axis() -> None:
    scene = [
        SceneObject("far", "red", "cube", (0.65, 0.0)),
        SceneObject("near", "red", "cube", (0.35, 0.0)),
        SceneObject("plate", "white", "plate", (0.50, 0.0)),
    ]
    far, near, _ = scene
    assert all(" behind " in d for d in _all_descriptions(far, scene, "train"))
    assert all(" in front of " in d for d in _all_descriptions(near, scene, "train"))
    assert resolve("the cube behind the plate", scene) == [far]
    assert resolve("the cube in front of the white plate", scene) == [near]


def test_borderline_relations_are_refused() -> None:
    # The rival also lies slightly left of the bowl (0 < 0.03 < margin): not a clear relation.
    scene = _twin_cube_scene((0.50, 0.03))
    with pytest.raises(ValueError, match="no unique description"):
        describe(scene[0], scene, np.random.default_rng(0))
    # The target lies left of the bowl by less than the margin.
    scene = [
        SceneObject("a", "red", "cube", (0.50, 0.04)),
        SceneObject("b", "red", "cube", (0.50, -0.20)),
        SceneObject("bowl", "blue", "bowl", (0.50, 0.00)),
    ]
    assert all(" right of " in d for d in _all_descriptions(scene[1], scene, "train"))
    with pytest.raises(ValueError, match="no unique description"):
        describe(scene[0], scene, np.random.default_rng(0))


# --------------------------------------------------------------------------- parsing


def test_unique_scene_descriptions_resolve_to_target(scene: list[SceneObject]) -> None:
    for split in SPLITS:
        for obj in scene:
            for phrase in _all_descriptions(obj, scene, split):
                assert phrase.startswith("the ")
                assert resolve(phrase, scene) == [obj]


def test_resolve_accepts_every_split_and_reports_ambiguity(scene: list[SceneObject]) -> None:
    cube, bowl, ball = scene
    assert resolve("the sphere", scene) == [ball]
    assert resolve("the green ball", scene) == [ball]
    assert resolve("the blue basin", scene) == [bowl]
    assert resolve("the red object", scene) == [cube]
    assert resolve("the yellow cube", scene) == []
    assert resolve("the object", scene) == scene
    two_cubes = scene + [SceneObject("obj3", "white", "cube", (0.3, -0.2))]
    parsed = parse_instruction("pick up the cube", two_cubes)
    assert parsed.target == [cube, two_cubes[3]]


def test_parse_is_tolerant_of_case_spacing_and_full_stop(scene: list[SceneObject]) -> None:
    cube, bowl, _ = scene
    parsed = parse_instruction("  Put the RED cube   into the bowl.", scene)
    assert (parsed.task, parsed.target, parsed.destination, parsed.side) == (
        "place",
        [cube],
        [bowl],
        None,
    )
    parsed = parse_instruction("slide the red block so it is behind the blue bowl", scene)
    assert (parsed.task, parsed.target, parsed.destination, parsed.side) == (
        "push",
        [cube],
        [bowl],
        "back",
    )
    parsed = parse_instruction("push the cube to the front of the basin", scene)
    assert parsed.side == "front" and parsed.destination == [bowl]


def test_relational_phrases_in_both_slots_parse(scene: list[SceneObject]) -> None:
    cube, bowl, ball = scene
    text = "push the cube in front of the ball to the left of the bowl right of the ball"
    parsed = parse_instruction(text, scene)
    assert (parsed.target, parsed.destination, parsed.side) == ([cube], [bowl], "left")


def test_landmark_is_the_object_a_relation_names_the_target_by(scene: list[SceneObject]) -> None:
    cube, bowl, ball = scene
    assert landmark_of("the cube in front of the ball", scene) == ball
    assert landmark_of("the red cube", scene) is None  # no relation, no landmark
    assert landmark_of("the cube left of the object", scene) is None  # no unique landmark
    assert target_landmark("pick up the cube in front of the green ball", cube, scene) == ball
    assert target_landmark("pick up the red cube", cube, scene) is None
    assert target_landmark("no template says this", cube, scene) is None
    # Place: the target's relation, not the destination's.
    text = "put the cube in front of the ball into the bowl right of the ball"
    assert target_landmark(text, cube, scene) == ball
    twins = _twin_cube_scene((0.50, -0.20))
    assert target_landmark("lift the block right of the blue one.", twins[1], twins) == twins[2]

