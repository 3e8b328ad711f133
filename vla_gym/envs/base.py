"""Pieces every vla_gym env shares: argument checks, action validation, physics stepping.

Kept as functions so the tabletop and navigation envs compose them instead of inheriting a
deep base class.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.spaces.utils import flatten
from gymnasium.vector.utils import read_from_shared_memory, write_to_shared_memory

from vla_gym.types import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH


def check_choice(argument: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{argument} must be one of {options}, got {value!r}")
    return value


def reject_unknown_kwargs(function: Any, unknown: Mapping[str, Any]) -> None:
    """TypeError naming unexpected keyword arguments and listing ``function``'s valid ones."""
    if unknown:
        valid = [p for p in inspect.signature(function).parameters if p not in ("self", "unknown")]
        raise TypeError(f"unknown keyword argument(s) {sorted(unknown)}; valid: {valid}")


def check_size(argument: str, size: Any) -> int:
    """An image side length in pixels."""
    if not isinstance(size, (int, np.integer)) or not 16 <= int(size) <= 1024:
        raise ValueError(f"{argument} must be an integer in [16, 1024], got {size!r}")
    return int(size)


def check_range(argument: str, value: Any, low: int, high: int) -> tuple[int, int]:
    """An inclusive (min, max) pair of integers within [low, high]."""
    try:
        first, second = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{argument} must be a (min, max) pair of integers, got {value!r}") from None
    if not low <= first <= second <= high:
        raise ValueError(f"{argument} must satisfy {low} <= min <= max <= {high}, got {value!r}")
    return first, second


def copy_observation(obs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of an observation dict (arrays copied), e.g. to return again after a failure."""
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in (obs or {}).items()}


def check_options(options: Mapping[str, Any] | None, valid: Iterable[str]) -> dict[str, Any]:
    """Reject unknown ``reset(options=...)`` keys by name."""
    options = dict(options or {})
    allowed = tuple(valid)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; valid options are {allowed}")
    return options


class InstructionText(spaces.Text):
    """The instruction space: ``Text`` whose batch stays current in async vector envs.

    AsyncVectorEnv reads its shared-memory observation buffer once and relies on the result
    being live views; for plain ``Text`` that read is a tuple of str, i.e. a stale copy.
    Reading this space yields a ``LiveTextBatch`` that decodes the buffer on access and
    deep-copies (as AsyncVectorEnv does before returning observations) to a tuple of str.
    Both directions are cached, as the instruction only changes at reset but crosses the
    buffer on every step.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._codes: dict[str, np.ndarray] = {}

    def codes(self, text: str) -> np.ndarray:
        """``flatten(self, text)`` (charset indices, padded), remembered per instruction."""
        codes = self._codes.get(text)
        if codes is None:
            if len(self._codes) >= 1024:  # a few phrasings per episode: keep the cache small
                self._codes.clear()
            codes = self._codes[text] = np.asarray(flatten(self, text))
        return codes


class LiveTextBatch(Sequence[str]):
    def __init__(self, space: spaces.Text, buffer: Any, n: int) -> None:
        self._n = n
        self._codes = np.frombuffer(buffer.get_obj(), dtype=np.int32).reshape(n, -1)
        # Codes index the charset; anything past it pads. A byte lookup table decodes a whole
        # row in one vectorised step.
        chars = space.character_list
        self._pad = len(chars)
        self._table = np.array([ord(c) for c in chars], dtype=np.uint8)
        if any(ord(c) > 127 for c in chars):
            raise ValueError("InstructionText needs an ASCII charset")
        self._seen = np.full_like(self._codes, -1)  # the codes ``_texts`` was decoded from
        self._texts: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):  # type: ignore[override]
        return self._decoded()[index]

    def _decoded(self) -> tuple[str, ...]:
        """Every row as str; decoded again only when the buffer changed (at resets)."""
        if not np.array_equal(self._codes, self._seen):
            np.copyto(self._seen, self._codes)
            self._texts = tuple(self._decode(row) for row in self._seen)
        return self._texts

    def _decode(self, row: np.ndarray) -> str:
        ends = np.flatnonzero(row >= self._pad)
        length = int(ends[0]) if len(ends) else len(row)
        return self._table[row[:length]].tobytes().decode("ascii")

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return self._decoded()

    def __repr__(self) -> str:
        return repr(self._decoded())


@read_from_shared_memory.register(InstructionText)
def _read_instruction_batch(space: InstructionText, shared_memory: Any, n: int = 1):
    return LiveTextBatch(space, shared_memory, n)


@write_to_shared_memory.register(InstructionText)
def _write_instruction(space: InstructionText, index: int, value: str,
                       shared_memory: Any) -> None:
    # gymnasium's Text writer, with the encoding cached (it loops over the characters).
    size = space.max_length
    destination = np.frombuffer(shared_memory.get_obj(), dtype=np.int32)
    destination[index * size:(index + 1) * size] = space.codes(value)


def instruction_space() -> spaces.Text:
    return InstructionText(
        max_length=MAX_INSTRUCTION_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET
    )


def check_instruction(text: Any) -> str:
    """Validate a user-supplied instruction (reset option) against the observation space."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"instruction must be a non-empty string, got {text!r}")
    if len(text) > MAX_INSTRUCTION_LENGTH:
        raise ValueError(f"instruction longer than {MAX_INSTRUCTION_LENGTH} characters")
    bad = sorted(set(text) - set(INSTRUCTION_CHARSET))
    if bad:
        raise ValueError(
            f"instruction contains characters {bad} outside the allowed set "
            "(letters, digits, space and ,.'-?!)"
        )
    return text


def clip_into(values: np.ndarray, low: Any, high: Any) -> np.ndarray:
    """``np.clip(values, low, high, out=values)`` as two ufunc calls: the same numbers without
    np.clip's Python-level dispatch, which shows in code that runs every env step."""
    np.maximum(values, low, out=values)
    return np.minimum(values, high, out=values)


def _finite_sum(array: np.ndarray) -> bool:
    """Whether ``array``'s elements have a finite sum: True clears the common case in one
    cheap call; False (a NaN, an inf, or huge finite values whose sum overflows) calls for
    the element-wise check."""
    try:
        return math.isfinite(math.fsum(array.ravel().tolist()))
    except (OverflowError, ValueError):  # overflow; inf - inf
        return False


def validate_action(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Float64 copy of ``action``, clipped to [-1, 1]; ValueError on wrong shape or non-finite."""
    try:
        array = np.array(action, dtype=np.float64)  # always a copy: it is clipped in place
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action must be a numeric array of shape {shape}: {exc}") from None
    if array.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {array.shape}")
    if not _finite_sum(array) and not np.isfinite(array).all():
        raise ValueError(f"action must be finite (no NaN/inf), got {array.tolist()}")
    return clip_into(array, -1.0, 1.0)


def geoms_touch_body(
    model: mujoco.MjModel, data: mujoco.MjData, geom_mask: np.ndarray, body_id: int
) -> bool:
    """Whether any active contact pairs a geom in ``geom_mask`` (bool per geom) with a geom of
    body ``body_id``. Vectorised over contacts: it runs every env step for rewards and success.
    """
    if data.ncon == 0:
        return False
    geoms = data.contact.geom[: data.ncon]
    on_body = model.geom_bodyid[geoms] == body_id
    in_mask = geom_mask[geoms]
    return bool((on_body[:, 0] & in_mask[:, 1] | on_body[:, 1] & in_mask[:, 0]).any())


_DIVERGENCE_WARNINGS = slice(
    int(mujoco.mjtWarning.mjWARN_BADQPOS), int(mujoco.mjtWarning.mjWARN_BADQACC) + 1)
# A slice (not a fancy index) keeps the per-step read cheap; it relies on the three warnings
# being adjacent in mjtWarning, which this checks once at import.
assert [int(mujoco.mjtWarning.mjWARN_BADQPOS), int(mujoco.mjtWarning.mjWARN_BADQVEL),
        int(mujoco.mjtWarning.mjWARN_BADQACC)] == list(range(_DIVERGENCE_WARNINGS.start,
                                                            _DIVERGENCE_WARNINGS.stop))


def divergence_count(data: mujoco.MjData) -> int:
    """MuJoCo's running count of bad-state warnings; compare before and after stepping."""
    return sum(data.warning.number[_DIVERGENCE_WARNINGS].tolist())


def diverged_since(data: mujoco.MjData, count_before: int) -> bool:
    """Whether physics blew up since ``divergence_count`` returned ``count_before``.

    MuJoCo answers NaN/huge values by resetting ``data`` and counting a warning, so the
    warning counters (not the state) are what tells us the episode is broken.
    """
    if divergence_count(data) > count_before:
        return True
    return not (_all_finite(data.qpos) and _all_finite(data.qvel))


def _all_finite(vector: np.ndarray) -> bool:
    """Whether every element is finite: a dot product with itself is finite when they are (one
    cheap call a step); only when it is not (NaN, inf, or huge values whose squares overflow)
    is each element checked. After a physics step the squares cannot overflow: MuJoCo counts
    a bad-state warning (checked first) for any qpos or qvel beyond 1e10 (``mjMAXVAL``)."""
    return math.isfinite(vector @ vector) or bool(np.isfinite(vector).all())


def step_physics(model: mujoco.MjModel, data: mujoco.MjData, substeps: int) -> bool:
    """Advance ``substeps`` physics steps; return True if the simulation diverged."""
    before = divergence_count(data)
    mujoco.mj_step(model, data, nstep=substeps)
    return diverged_since(data, before)
