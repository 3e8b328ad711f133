"""``load_batch_policy``: a saved VLAPolicy as the rollout runner's batch-policy callable.

The rollout CLI calls ``policy(obs_batch, info_batch) -> (num_envs, action_dim)`` on vector-env
observations (images stacked, instructions a tuple of strings), which is exactly
:meth:`VLAPolicy.predict`'s input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class BatchPolicyAdapter:
    """Callable ``(obs_batch, info_batch) -> actions`` around a :class:`VLAPolicy`."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.discrete = policy.config.head.kind == "discrete"

    @property
    def action_dim(self) -> int:
        return self.policy.action_dim

    def __call__(self, obs_batch: dict[str, Any], info_batch: dict[str, Any] | None = None,
                 ) -> np.ndarray:
        actions = self.policy.predict(obs_batch)
        # an action-set policy gives one index per env, as a Discrete vector env expects
        return actions[:, 0] if self.discrete else actions

    def reset(self) -> None:
        self.policy.reset()


def load_batch_policy(path: str | Path, *, int8: bool = False,
                      device: str = "cpu") -> Any:
    """Load the checkpoint directory ``path`` (``VLAPolicy.save_pretrained``) for rollouts: a
    ``BatchPolicyAdapter``, or the ``MapPlannerPolicy`` itself where ``path`` holds one.

    ``int8=True`` runs the dynamically quantised copy (CPU only). Raises
    :class:`~vla_gym.policies.checkpoint.CheckpointError` for a bad checkpoint.
    """
    from vla_gym.policies.map_planner import MapPlannerPolicy, is_map_planner_checkpoint
    from vla_gym.policies.policy import VLAPolicy

    if is_map_planner_checkpoint(path):
        if int8 or device != "cpu":
            raise ValueError(f"{path} holds a MapPlannerPolicy, which runs in float32 on the "
                             "CPU only (its planner is numpy); drop int8/device")
        return MapPlannerPolicy.from_pretrained(path)  # already a batch callable
    policy = VLAPolicy.from_pretrained(path).to(device)
    if int8:
        from vla_gym.policies.inference import quantize_int8

        policy = quantize_int8(policy)
    return BatchPolicyAdapter(policy)
