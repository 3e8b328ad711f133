"""``make_vec``: ``gym.make_vec`` with spawned workers in async mode.

A GL context does not survive ``fork()``: once the parent process has rendered, forked
workers hang in EGL initialisation. Async workers therefore start by ``spawn`` (each imports
vla_gym afresh). The batched instruction stays current in shared memory thanks to
``vla_gym.envs.base.InstructionText``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

ASYNC_DEFAULTS: dict[str, Any] = {"context": "spawn"}


def make_vec(
    env_id: str,
    num_envs: int = 1,
    vectorization_mode: str = "sync",
    vector_kwargs: dict[str, Any] | None = None,
    wrappers: Sequence[Callable[[gym.Env], gym.Wrapper]] | None = None,
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """Like ``gym.make_vec``; async mode defaults to spawned workers."""
    kwargs = dict(vector_kwargs or {})
    if vectorization_mode == "async":
        kwargs = {**ASYNC_DEFAULTS, **kwargs}
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                        vector_kwargs=kwargs, wrappers=wrappers, **env_kwargs)
