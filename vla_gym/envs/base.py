"""Pieces every vla_gym env shares: argument checks, action validation, physics stepping.

Kept as functions so the tabletop and navigation envs compose them instead of inheriting a
deep base class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory

from vla_gym.types import INSTRUCTION_CHARSET, MAX_INSTRUCTION_LENGTH


def check_choice(argument: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{argument} must be one of {options}, got {value!r}")
    return value


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
    """


class LiveTextBatch(Sequence[str]):
    def __init__(self, space: spaces.Text, buffer: Any, n: int) -> None:
        self._space, self._n = space, n
        self._codes = np.frombuffer(buffer.get_obj(), dtype=np.int32).reshape(n, -1)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(self._n)))
        chars = self._space.character_list
        return "".join(chars[c] for c in self._codes[index] if c < len(chars))

    def __deepcopy__(self, memo: dict) -> tuple[str, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return repr(tuple(self))


@read_from_shared_memory.register(InstructionText)
def _read_instruction_batch(space: InstructionText, shared_memory: Any, n: int = 1):
    return LiveTextBatch(space, shared_memory, n)


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


def validate_action(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Float64 copy of ``action``, clipped to [-1, 1]; ValueError on wrong shape or non-finite."""
    try:
        array = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"action must be a numeric array of shape {shape}: {exc}") from None
    if array.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"action must be finite (no NaN/inf), got {array.tolist()}")
    return np.clip(array, -1.0, 1.0)


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


_DIVERGENCE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
)


def _divergence_count(data: mujoco.MjData) -> int:
    return sum(int(data.warning[w].number) for w in _DIVERGENCE_WARNINGS)


def step_physics(model: mujoco.MjModel, data: mujoco.MjData, substeps: int) -> bool:
    """Advance ``substeps`` physics steps; return True if the simulation diverged.

    MuJoCo answers NaN/huge values by resetting ``data`` and counting a warning, so the
    warning counters (not the state) are what tells us the episode is broken.
    """
    before = _divergence_count(data)
    mujoco.mj_step(model, data, nstep=substeps)
    diverged = _divergence_count(data) > before
    return bool(diverged or not np.isfinite(data.qpos).all() or not np.isfinite(data.qvel).all())
