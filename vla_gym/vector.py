"""``gym.make_vec`` with the settings vla_gym's observation spaces need in async mode.

Two things break with AsyncVectorEnv's defaults:
- shared memory: gymnasium reads a ``Text`` space out of shared memory once, at start-up, so
  the batched instruction never changes (Box arrays are live views; strings are copies);
- fork: a GL context does not survive ``fork()``, so once the parent has rendered, forked
  workers hang in EGL initialisation.
Async workers here therefore send observations through pipes and start by ``spawn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym

ASYNC_DEFAULTS: dict[str, Any] = {"shared_memory": False, "context": "spawn"}


def make_vec(
    env_id: str,
    num_envs: int = 1,
    vectorization_mode: str = "sync",
    vector_kwargs: dict[str, Any] | None = None,
    wrappers: Sequence[Callable[[gym.Env], gym.Wrapper]] | None = None,
    **env_kwargs: Any,
) -> gym.vector.VectorEnv:
    """Like ``gym.make_vec``; async mode defaults to pipes (no shared memory) and spawn."""
    kwargs = dict(vector_kwargs or {})
    if vectorization_mode == "async":
        kwargs = {**ASYNC_DEFAULTS, **kwargs}
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode,
                        vector_kwargs=kwargs, wrappers=wrappers, **env_kwargs)
