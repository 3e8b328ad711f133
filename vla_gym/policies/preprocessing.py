"""Raw env observations -> model tensors, with clear errors for bad input.

The policy takes what the env emits (``image`` uint8 (B, H, W, 3), ``instruction`` strings,
``state`` float (B, D)); resizing to the encoder's input and pixel normalisation happen here,
so no caller has to know an encoder's preferences. Images of another size are resized
(bilinear, antialiased) when ``config.resize_images`` is True, the default; otherwise refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vla_gym.policies.configuration import VLAConfig
from vla_gym.types import FOCUS, IMAGE, INSTRUCTION, STATE, shift_key


class ObservationError(ValueError):
    """An observation batch the policy cannot read; the message says what was expected."""


@dataclass
class Inputs:
    images: Tensor  # (B, 3, S, S) float in [0, 1], resized to the encoder's size
    instructions: list[str]
    state: Tensor | None  # (B, D) float32, not yet standardised
    extra_views: tuple[Tensor, ...] = ()  # config.extra_views, each like ``images``
    # Training batches only: per view, how far augmentation moved each image's content,
    # (B, 2) (column, row) fractions, under the key ``shift_key(view)``.
    shifts: dict[str, Tensor] | None = None
    # (B, 3) world points the target maps are pulled toward (``types.FOCUS``), NaN rows none
    focus: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.instructions)


def expected_keys(config: VLAConfig) -> str:
    s = config.vision.image_size
    parts = [f"'{view}': uint8 (B, H, W, 3) (resized to {s}x{s})" for view in config.views]
    parts.append(f"'{INSTRUCTION}': B non-empty strings")
    if config.use_state:
        parts.append(f"'{STATE}': float (B, {config.state_dim})")
    return "; ".join(parts)


def check_keys(obs: Any, config: VLAConfig) -> None:
    if not isinstance(obs, Mapping):
        raise ObservationError(f"observation batch must be a dict, got {type(obs).__name__}; "
                               f"expected {expected_keys(config)}")
    needed = [*config.views, INSTRUCTION] + ([STATE] if config.use_state else [])
    missing = [k for k in needed if k not in obs]
    if missing:
        raise ObservationError(f"observation batch is missing {missing}; expected "
                               f"{expected_keys(config)}")


def check_instructions(value: Any, batch: int | None = None) -> list[str]:
    """A list of B non-empty strings (a list, tuple or numpy array of str)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (Sequence, np.ndarray)):
        raise ObservationError(f"'{INSTRUCTION}' must be a list of strings, got "
                               f"{type(value).__name__}")
    texts = list(value)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, (str, np.str_))]
    if bad:
        raise ObservationError(f"'{INSTRUCTION}' must hold strings; entry {bad[0]} is "
                               f"{type(texts[bad[0]]).__name__}")
    texts = [str(t) for t in texts]
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ObservationError(f"'{INSTRUCTION}' entry {empty[0]} is empty; every observation "
                               "needs a non-empty instruction")
    if batch is not None and len(texts) != batch:
        raise ObservationError(f"'{INSTRUCTION}' has {len(texts)} entries but '{IMAGE}' has "
                               f"{batch} images")
    return texts


def check_images(value: Any, config: VLAConfig, key: str = IMAGE,
                 batch: int | None = None) -> np.ndarray:
    images = np.asarray(value)
    if images.dtype != np.uint8:
        raise ObservationError(f"'{key}' must be uint8 (B, H, W, 3) in [0, 255], got dtype "
                               f"{images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ObservationError(f"'{key}' must have shape (B, H, W, 3), got "
                               f"{tuple(images.shape)}")
    if batch is not None and images.shape[0] != batch:
        raise ObservationError(f"'{key}' has {images.shape[0]} images but '{IMAGE}' has {batch}")
    size = config.vision.image_size
    if images.shape[1:3] != (size, size) and not config.resize_images:
        raise ObservationError(f"'{key}' must be {size}x{size} for this policy (resizing is "
                               f"off: resize_images=False), got {images.shape[1]}x"
                               f"{images.shape[2]}")
    return images


def check_state(value: Any, config: VLAConfig, batch: int) -> np.ndarray:
    state = np.asarray(value)
    if not np.issubdtype(state.dtype, np.number):
        raise ObservationError(f"'{STATE}' must be numeric, got dtype {state.dtype}")
    if state.shape != (batch, config.state_dim):
        raise ObservationError(f"'{STATE}' must have shape ({batch}, {config.state_dim}), got "
                               f"{tuple(state.shape)}")
    if not np.isfinite(state).all():
        raise ObservationError(f"'{STATE}' holds NaN or inf")
    return state.astype(np.float32, copy=False)


def images_to_tensor(images: np.ndarray, size: int, device: torch.device) -> Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, size, size) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return resize(x, size)


def resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def preprocess(obs: Any, config: VLAConfig, device: torch.device) -> Inputs:
    """Validate a batched observation dict and turn it into :class:`Inputs`."""
    check_keys(obs, config)
    images = check_images(obs[IMAGE], config)
    texts = check_instructions(obs[INSTRUCTION], images.shape[0])
    state = None
    if config.use_state:
        state = torch.from_numpy(check_state(obs[STATE], config, len(texts))).to(device)
    size = config.vision.image_size
    extra = tuple(images_to_tensor(check_images(obs[key], config, key, len(images)), size, device)
                  for key in config.extra_views)
    # Only a policy with target geometry reads the augmentation's shifts.
    shifts = {view: torch.as_tensor(np.asarray(obs[shift_key(view)], dtype=np.float32),
                                    device=device)
              for view in config.views
              if config.geometry.enabled and shift_key(view) in obs} or None
    focus = None
    if FOCUS in obs:
        if not config.geometry.enabled:
            raise ObservationError(f"'{FOCUS}' steers calibrated target maps; this policy has "
                                   "no target geometry (geometry.enabled=False)")
        focus = torch.from_numpy(check_focus(obs[FOCUS], len(texts))).to(device)
    return Inputs(images_to_tensor(images, size, device), texts, state, extra, shifts, focus)


def check_focus(value: Any, batch: int) -> np.ndarray:
    """(B, 3) float world points; a row of NaN means no focus for that observation."""
    focus = np.asarray(value)
    if not np.issubdtype(focus.dtype, np.number) or focus.shape != (batch, 3):
        raise ObservationError(f"'{FOCUS}' must be float ({batch}, 3) world points (NaN rows "
                               f"for none), got {focus.dtype} {tuple(focus.shape)}")
    if np.isinf(focus).any():
        raise ObservationError(f"'{FOCUS}' holds inf; use NaN rows for no focus")
    return focus.astype(np.float32, copy=False)


def add_batch_dim(obs: Any) -> dict[str, Any]:
    """One observation (as the env returns it) -> a batch of one."""
    if not isinstance(obs, Mapping):
        raise ObservationError(f"observation must be a dict, got {type(obs).__name__}")
    out: dict[str, Any] = {}
    for key, value in obs.items():
        if key == INSTRUCTION:
            if not isinstance(value, (str, np.str_)):
                raise ObservationError(f"'{INSTRUCTION}' of one observation must be a string, "
                                       f"got {type(value).__name__}")
            out[key] = [str(value)]
        else:
            out[key] = np.asarray(value)[None]
    return out


def stack_observations(observations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Single observations (as an env returns them) -> one batch: arrays stacked, the
    instructions as a list."""
    return {k: ([o[k] for o in observations] if k == INSTRUCTION
                else np.stack([o[k] for o in observations])) for k in observations[0]}
