"""Words the instruction generator may use: colours, shapes, shape synonyms and held-out combos.

Generalisation is measured along two axes that live here as data:

* *lexical*: every shape has train synonyms and held-out test synonyms, so a policy trained on
  "block" can be evaluated on "box";
* *compositional*: a few (colour, shape) pairs never appear in training scenes
  (:data:`HELD_OUT_COMBOS`), although each colour and each shape does on its own.
"""

from __future__ import annotations

from collections.abc import Iterable

from vla_gym.types import INSTRUCTION_SPLITS

# Named colours -> RGBA in [0, 1]. Chosen to stay distinguishable at low image resolution.
COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.10, 0.10, 1.0),
    "green": (0.10, 0.65, 0.15, 1.0),
    "blue": (0.10, 0.25, 0.90, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "purple": (0.55, 0.15, 0.70, 1.0),
    "orange": (1.00, 0.50, 0.00, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
    "black": (0.08, 0.08, 0.08, 1.0),
}

SHAPES: tuple[str, ...] = ("cube", "ball", "can", "plate", "bowl")
PICKABLE_SHAPES: tuple[str, ...] = ("cube", "ball", "can")
RECEPTACLE_SHAPES: tuple[str, ...] = ("plate", "bowl")

# Words naming each shape. The first train synonym is the canonical name.
TRAIN_SYNONYMS: dict[str, tuple[str, ...]] = {
    "cube": ("cube", "block"),
    "ball": ("ball",),
    "can": ("can", "cylinder"),
    "plate": ("plate",),
    "bowl": ("bowl",),
}
TEST_SYNONYMS: dict[str, tuple[str, ...]] = {
    "cube": ("box",),
    "ball": ("sphere",),
    "can": ("tin",),
    "plate": ("dish",),
    "bowl": ("basin",),
}

# Head nouns that name no shape ("the red object", "the red one"); usable in every split.
GENERIC_NOUNS: tuple[str, ...] = ("object", "one")

# (colour, shape) pairs kept out of training scenes; two per pickable shape.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "cube"),
        ("purple", "cube"),
        ("green", "ball"),
        ("orange", "ball"),
        ("blue", "can"),
        ("white", "can"),
    }
)


def format_choices(names: Iterable[str]) -> str:
    """Comma-separated list of valid names, for error messages."""
    return ", ".join(repr(n) for n in names)


def validate_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """Return ``name`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    options = tuple(choices)
    if name not in options:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {format_choices(options)}")
    return name


def validate_colour(name: str) -> str:
    return validate_name("colour", name, COLOURS)


def validate_shape(name: str) -> str:
    return validate_name("shape", name, SHAPES)


def validate_split(split: str) -> str:
    return validate_name("split", split, INSTRUCTION_SPLITS)


def combo_allowed(colour: str, shape: str, split: str) -> bool:
    """Whether a (colour, shape) object may appear in a scene of ``split``.

    Training scenes exclude :data:`HELD_OUT_COMBOS`; test and all scenes allow everything.
    """
    validate_colour(colour)
    validate_shape(shape)
    if validate_split(split) == "train":
        return (colour, shape) not in HELD_OUT_COMBOS
    return True


def shape_synonyms(shape: str, split: str) -> tuple[str, ...]:
    """Words that may name ``shape`` in ``split``.

    'train' gives train synonyms only; 'test' prefers held-out synonyms (falling back to train
    ones for a shape without any); 'all' gives both.
    """
    validate_shape(shape)
    validate_split(split)
    train, test = TRAIN_SYNONYMS[shape], TEST_SYNONYMS.get(shape, ())
    if split == "train":
        return train
    if split == "test":
        return test or train
    return train + test


def shape_of_word(word: str) -> str | None:
    """The shape a synonym (from any split) names, or ``None`` if it names no shape."""
    return _WORD_TO_SHAPE.get(word)


def all_shape_words() -> tuple[str, ...]:
    """Every shape synonym of every split."""
    return tuple(_WORD_TO_SHAPE)


def _build_word_index() -> dict[str, str]:
    """Map each synonym to its shape, refusing a word that would name two shapes."""
    index: dict[str, str] = {}
    for table in (TRAIN_SYNONYMS, TEST_SYNONYMS):
        for shape, words in table.items():
            validate_shape(shape)
            for word in words:
                if index.get(word, shape) != shape:
                    raise ValueError(f"synonym {word!r} names both {index[word]!r} and {shape!r}")
                if word in COLOURS or word in GENERIC_NOUNS:
                    raise ValueError(f"synonym {word!r} clashes with a colour or generic noun")
                index[word] = shape
    return index


_WORD_TO_SHAPE: dict[str, str] = _build_word_index()
