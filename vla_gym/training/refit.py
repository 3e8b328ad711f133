"""Refit a trained policy's action head on its frozen perception.

Trained end to end, the final MLP learns on features that move under it for the whole run and
on pixel-shift-augmented views; measured on TabletopPick with lifted target geometry, a head
refitted afterwards on the frozen, un-augmented perception of the same demos acts far better
(see the README's behaviour-cloning figures). The refit runs every action-labelled frame through
the frozen trunk once, re-initialises the state MLP, the final MLP and the action head(s), and
fits them alone with AdamW on the cached features: a few seconds per thousand steps, since no
image is encoded again. Auxiliary heads on the final features (grounding) are not refitted;
they train perception and play no part in acting.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_gym.training.demos import Demos

ENCODE_CHUNK = 256


@dataclass(frozen=True)
class RefitResult:
    steps: int
    frames: int
    initial_loss: float  # the end-to-end head's loss on the un-augmented frames
    final_loss: float  # the refitted head's, over the last 10% of steps
    seconds: float


def encode_perception(policy: Any, demos: Demos) -> tuple[Any, Any, Any]:
    """(perception, standardised state or None, actions) for every demo frame, in eval mode and
    without gradients."""
    import torch

    policy.eval()
    perception, states = [], []
    with torch.no_grad():
        for start in range(0, len(demos), ENCODE_CHUNK):
            inputs = policy.preprocess(demos.batch(np.arange(start, min(start + ENCODE_CHUNK,
                                                                        len(demos)))))
            out = policy.features(inputs)
            perception.append(out.perception.float())
            state = policy.standardised_state(inputs)
            states.append(None if state is None else state.float())
    actions = torch.as_tensor(demos.actions, dtype=torch.float32, device=policy.device)
    return (torch.cat(perception),
            None if states[0] is None else torch.cat(states), actions)


def _head_loss(policy: Any, perception: Any, state: Any, actions: Any) -> Any:
    return policy.action_loss(policy.trunk.decide(perception, state), actions)[0]


def _fold_standardisation(policy: Any, mean: Any, std: Any) -> None:
    """Make the final MLP's first layer read raw perception as it read standardised:
    W (x - m) / s + b = (W / s) x + (b - W m / s)."""
    import torch

    first = next(m for m in policy.trunk.out.modules() if isinstance(m, torch.nn.Linear))
    width = mean.shape[0]
    with torch.no_grad():
        w = first.weight[:, :width] / std
        first.bias -= w @ mean
        first.weight[:, :width] = w


def refit_head(policy: Any, demos: Demos, steps: int, batch_size: int = 256, lr: float = 1e-3,
               weight_decay: float = 1e-4, seed: int = 0, standardise: bool = True
               ) -> RefitResult:
    """Re-initialise and refit ``policy``'s decision modules and action head(s) on its frozen
    perception of ``demos``, in place. Steps follow a cosine learning-rate decay."""
    import torch

    if steps < 1 or batch_size < 1:
        raise ValueError(f"refit_head needs steps >= 1 and batch_size >= 1, got {steps}, "
                         f"{batch_size}")
    started = time.perf_counter()
    perception, state, actions = encode_perception(policy, demos)
    modules = [*policy.trunk.decision_modules(), *policy.action_heads]
    with torch.no_grad():
        initial = float(_head_loss(policy, perception, state, actions))
    torch.manual_seed(seed)
    for module in modules:
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    # Standardised perception (image features, lifted offsets and peak probabilities differ
    # in scale by orders of magnitude); folded into the final MLP's first layer afterwards,
    # so the policy's forward pass is unchanged.
    mean, std = perception.mean(dim=0), perception.std(dim=0).clamp_min(1e-3)
    if standardise:
        perception = (perception - mean) / std
    params = [p for module in modules for p in module.parameters()]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    rng = np.random.default_rng(seed)
    for module in modules:
        module.train()
    tail: list[float] = []
    for step in range(steps):
        rows = torch.as_tensor(rng.integers(0, len(actions), batch_size), device=policy.device)
        loss = _head_loss(policy, perception[rows], None if state is None else state[rows],
                          actions[rows])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step >= steps - max(1, math.ceil(steps / 10)):
            tail.append(float(loss.item()))
    if standardise:
        _fold_standardisation(policy, mean, std)
    policy.eval()
    return RefitResult(steps, len(actions), initial, float(np.mean(tail)),
                       time.perf_counter() - started)
