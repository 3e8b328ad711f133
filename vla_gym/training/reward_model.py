"""A reward model learned from preferences: Bradley-Terry over segment pairs, as an ensemble.

Each member reads one step's observation (image + instruction + state) with the policy
library's trunk (:class:`~vla_gym.policies.model.VLATrunk`, built from a preset with smaller
sizes) and outputs a scalar reward; a segment's return is the sum over its steps, and
``P(left preferred) = sigmoid(R_left - R_right)`` is fitted to the labels' soft targets
(left 1, right 0, equal 0.5). Members differ in seed and bootstrap sample, so their
disagreement says where labels would help most. A held-out share of the labelled pairs is never
trained on and gives the accuracy reported.

On disk (``save``/``load``): ``DIR/config.json`` + ``DIR/model.safetensors``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_gym.policies.configuration import VLAConfig
from vla_gym.policies.encoders.language import LanguageFeatures
from vla_gym.policies.model import VLATrunk
from vla_gym.policies.preprocessing import check_instructions, images_to_tensor
from vla_gym.training.augment import random_shift
from vla_gym.training.preferences import Preferences, SegmentSet
from vla_gym.types import IMAGE, INSTRUCTION, STATE

FORMAT = "vla_gym.reward_model/1"
INPUTS = ("all", "state")
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass(frozen=True)
class RewardModelConfig:
    """Ensemble size, the trunk's sizes (changes to ``preset``) and the optimisation."""

    members: int = 3
    preset: str = "small"
    image_size: int = 32  # encoder input; observations are resized to it
    width: int = 16  # CNN channels of the first stage
    hidden: int = 64
    steps: int = 300  # optimiser steps per member
    batch_pairs: int = 16
    # Steps per segment scored in a training batch (0 = all): the return is estimated from a
    # random subset of step positions, the same for both sides of each pair (cheaper steps).
    frames_per_segment: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    holdout: float = 0.2  # share of labelled pairs kept out of training, for the accuracy
    bootstrap: bool = True  # each member trains on a resample of the training pairs
    shift: int = 2  # pixels of random-shift augmentation
    # What a member reads: "all" (image + instruction + state through the trunk) or "state"
    # (the state alone, an MLP: an ablation). A state-only model cannot tell which object is
    # held; from 1 000 labels it ranks whole Pick episodes better offline (benchmarks/
    # bench_reward_ranking.py: Spearman 0.74 against 0.48), yet RL from it gained less than
    # from the full model (README, RL from preferences)
    inputs: str = "all"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"RewardModelConfig.inputs must be one of {INPUTS}, got "
                             f"{self.inputs!r}")
        for name in ("members", "image_size", "width", "hidden", "steps", "batch_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"RewardModelConfig.{name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"RewardModelConfig.holdout must be in [0, 1), got {self.holdout}")

    def trunk_config(self, state_dim: int, member: int) -> VLAConfig:
        from vla_gym.policies.presets import get_config

        return get_config(self.preset, vision={"image_size": self.image_size,
                                               "width": self.width},
                          language={"dim": self.hidden // 2}, fusion={"dim": self.hidden},
                          hidden=self.hidden, state_dim=state_dim, seed=self.seed + member)


class RewardMember(nn.Module):
    """One step's observation -> a scalar reward."""

    pixel_mean: Tensor
    pixel_std: Tensor
    state_mean: Tensor
    state_std: Tensor

    def __init__(self, config: VLAConfig, state_only: bool = False) -> None:
        super().__init__()
        self.config = config
        self.trunk: VLATrunk | None = None
        with torch.random.fork_rng(devices=[]):  # member k's weights depend on its seed only
            torch.manual_seed(config.seed)
            if state_only:
                self.head: nn.Module = nn.Sequential(
                    nn.Linear(config.state_dim, config.hidden), nn.ReLU(),
                    nn.Linear(config.hidden, config.hidden), nn.ReLU(),
                    nn.Linear(config.hidden, 1))
            else:
                self.trunk = VLATrunk(config)
                self.head = nn.Linear(config.hidden, 1)
        # the encoder's pixel statistics (unused without one)
        mean, std = ((0.5,) * 3, (0.5,) * 3) if self.trunk is None else (
            self.trunk.vision.mean, self.trunk.vision.std)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_std", torch.ones(config.state_dim))

    def encode_instructions(self, texts: list[str]) -> LanguageFeatures | None:
        """The trunk's language features (None for a state-only member, which reads none)."""
        return None if self.trunk is None else self.trunk.encode_instructions(texts)

    def forward(self, images: Tensor, lang: LanguageFeatures | None, state: Tensor) -> Tensor:
        """images (B, 3, S, S) in [0, 1], language features (B, ...), state (B, D) -> (B,)."""
        state = (state - self.state_mean) / self.state_std
        if self.trunk is None:
            return self.head(state).squeeze(-1)
        assert lang is not None
        images = (images - self.pixel_mean) / self.pixel_std
        return self.head(self.trunk(images, lang, state).features).squeeze(-1)


def _repeat(lang: LanguageFeatures, times: int) -> LanguageFeatures:
    return LanguageFeatures(lang.pooled.repeat_interleave(times, 0),
                            lang.tokens.repeat_interleave(times, 0),
                            lang.mask.repeat_interleave(times, 0))


class RewardEnsemble(nn.Module):
    """K members; the reward the RL wrapper uses is their mean, standardised."""

    reward_mean: Tensor
    reward_std: Tensor

    def __init__(self, config: RewardModelConfig, state_dim: int) -> None:
        super().__init__()
        self.config, self.state_dim = config, state_dim
        self.members = nn.ModuleList(
            RewardMember(config.trunk_config(state_dim, k), config.inputs == "state")
            for k in range(config.members))
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))

    def member(self, k: int) -> RewardMember:
        return cast(RewardMember, self.members[k])

    # -- segments ------------------------------------------------------------------------
    def member_step_rewards(self, member: int, images: np.ndarray, texts: list[str],
                            states: np.ndarray, steps: int) -> Tensor:
        """Per-step rewards (N * steps,) of N segments (images already at the model's size)."""
        net = self.member(member)
        pixels = images_to_tensor(images, self.config.image_size, torch.device("cpu"))
        encoded = net.encode_instructions(texts)
        lang = None if encoded is None else _repeat(encoded, steps)
        return net(pixels, lang, torch.as_tensor(states, dtype=torch.float32))

    def segment_returns(self, data: ResizedSegments, rows: np.ndarray,
                        batch: int = 64) -> np.ndarray:
        """(K, len(rows)) every member's predicted (unstandardised) return of each segment."""
        out = np.zeros((len(self.members), len(rows)))
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for start in range(0, len(rows), batch):
                chunk = np.asarray(rows[start:start + batch])
                images, texts, states = data.steps(chunk)
                for k in range(len(self.members)):
                    r = self.member_step_rewards(k, images, texts, states, data.length)
                    out[k, start:start + len(chunk)] = r.view(len(chunk), -1).sum(1).numpy()
        self.train(was_training)
        return out

    # -- single steps (the RL wrapper) ---------------------------------------------------
    def predict(self, obs_batch: dict[str, Any]) -> np.ndarray:
        """Standardised ensemble-mean reward (B,) of a batch of raw env observations."""
        images = np.asarray(obs_batch[IMAGE])
        texts = check_instructions(obs_batch[INSTRUCTION], len(images))
        state = torch.as_tensor(np.asarray(obs_batch[STATE]), dtype=torch.float32)
        with torch.no_grad():
            pixels = images_to_tensor(images, self.config.image_size, torch.device("cpu"))
            rewards = []
            for k in range(len(self.members)):
                net = self.member(k)
                lang = net.encode_instructions(texts)
                rewards.append(net(pixels, lang, state))
            mean = torch.stack(rewards).mean(0)
        return ((mean - self.reward_mean) / self.reward_std).numpy()

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "state_dim": self.state_dim, "config": asdict(self.config)}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RewardEnsemble:
        """Strict load: a missing file, another format or mismatched weights raise."""
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / CONFIG_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"no reward model at {directory} (cannot read {CONFIG_NAME}: "
                             f"{exc})") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory / CONFIG_NAME}: expected format {FORMAT!r}, found "
                             f"{meta.get('format')!r}")
        model = cls(RewardModelConfig(**meta["config"]), int(meta["state_dim"]))
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        return model.eval()


class ResizedSegments:
    """A segment set's images resized once to the reward model's input (training reads them
    thousands of times)."""

    def __init__(self, segments: SegmentSet, size: int, chunk: int = 2048) -> None:
        n, length = len(segments), segments.segment_length
        flat = segments.images.reshape(-1, *segments.images.shape[2:])
        out = np.empty((len(flat), size, size, 3), np.uint8)
        for start in range(0, len(flat), chunk):
            t = images_to_tensor(flat[start:start + chunk], size, torch.device("cpu"))
            out[start:start + chunk] = (t.permute(0, 2, 3, 1) * 255).round().byte().numpy()
        self.images = out.reshape(n, length, size, size, 3)
        self.states = segments.states
        self.instructions = [str(t) for t in segments.instructions]
        self.length = length

    def steps(self, rows: np.ndarray, shift: int = 0, rng: np.random.Generator | None = None,
              positions: np.ndarray | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Flattened steps of segments ``rows`` (only ``positions`` within each, if given)."""
        at = slice(None) if positions is None else positions
        images = self.images[rows][:, at].reshape(-1, *self.images.shape[2:])
        if shift and rng is not None:
            images, _ = random_shift(images, shift, rng)
        states = self.states[rows][:, at].reshape(-1, self.states.shape[2])
        return images, [self.instructions[r] for r in rows], states


@dataclass
class RewardTrainingResult:
    model: RewardEnsemble
    metrics: dict[str, Any] = field(default_factory=dict)


def split_pairs(count: int, holdout: float, rng: np.random.Generator,
                ) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) pair indices; nothing is held out below 5 pairs."""
    order = rng.permutation(count)
    held = int(round(holdout * count)) if count >= 5 else 0
    return order[held:], order[:held]


def bradley_terry_loss(r_left: Tensor, r_right: Tensor, p_left: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(r_left - r_right, p_left)


def train_reward_model(prefs: Preferences, config: RewardModelConfig | None = None,
                       log: Any = None) -> RewardTrainingResult:
    """Fit the ensemble to ``prefs``; metrics include held-out preference accuracy."""
    config = config or RewardModelConfig()
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    train, held = split_pairs(len(prefs), config.holdout, rng)
    data = ResizedSegments(prefs.segments, config.image_size)
    model = RewardEnsemble(config, prefs.segments.state_dim)
    _fit_state_statistics(model, prefs.segments)
    losses = []
    for k in range(len(model.members)):
        sample = rng.choice(train, size=len(train)) if config.bootstrap else train
        losses.append(_train_member(model, k, data, prefs, sample, config, rng))
        if log is not None:
            log(f"reward member {k}: final loss {losses[-1]:.4f}")
    _fit_reward_statistics(model, data)
    metrics = evaluate_preferences(model, data, prefs, held)
    metrics.update(train_accuracy=evaluate_preferences(model, data, prefs, train)["accuracy"],
                   pairs=len(prefs), train_pairs=len(train), held_out_pairs=len(held),
                   tie_fraction=float(np.mean(prefs.p_left == 0.5)),
                   final_train_loss=float(np.mean(losses)),
                   seconds=time.perf_counter() - started)
    metrics["held_out_accuracy"] = metrics.pop("accuracy")
    metrics["held_out_loss"] = metrics.pop("loss")
    metrics["true_return_correlation"] = true_return_correlation(model, data, prefs.segments)
    return RewardTrainingResult(model.eval(), metrics)


def _fit_state_statistics(model: RewardEnsemble, segments: SegmentSet) -> None:
    flat = torch.as_tensor(segments.states.reshape(-1, segments.state_dim), dtype=torch.float32)
    mean, std = flat.mean(0), flat.std(0, unbiased=False).clamp_min(1e-6)
    for k in range(len(model.members)):
        model.member(k).state_mean.copy_(mean)
        model.member(k).state_std.copy_(std)


def _train_member(model: RewardEnsemble, k: int, data: ResizedSegments, prefs: Preferences,
                  sample: np.ndarray, config: RewardModelConfig,
                  rng: np.random.Generator) -> float:
    net = model.members[k]
    net.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    recent: list[float] = []
    if len(sample) == 0:
        return float("nan")
    frames = config.frames_per_segment
    for _ in range(config.steps):
        pick = sample[rng.integers(0, len(sample), config.batch_pairs)]
        rows = np.concatenate([prefs.left[pick], prefs.right[pick]])
        positions = None
        if 0 < frames < data.length:
            positions = np.sort(rng.choice(data.length, frames, replace=False))
        images, texts, states = data.steps(rows, config.shift, rng, positions)
        scored = data.length if positions is None else frames
        returns = model.member_step_rewards(k, images, texts, states, scored)
        returns = returns.view(len(rows), -1).sum(1) * (data.length / scored)
        half = len(pick)
        target = torch.as_tensor(prefs.p_left[pick])
        loss = bradley_terry_loss(returns[:half], returns[half:], target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        recent = (recent + [loss.item()])[-20:]
    return float(np.mean(recent))


def _fit_reward_statistics(model: RewardEnsemble, data: ResizedSegments) -> None:
    """Standardise the ensemble's per-step reward over every step of the training segments."""
    rows = np.arange(len(data.images))
    steps = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            images, texts, states = data.steps(rows[start:start + 64])
            steps.append(torch.stack([model.member_step_rewards(k, images, texts, states,
                                                                data.length)
                                      for k in range(len(model.members))]).mean(0))
    flat = torch.cat(steps)
    model.reward_mean.copy_(flat.mean())
    model.reward_std.copy_(flat.std(unbiased=False).clamp_min(1e-6))


def evaluate_preferences(model: RewardEnsemble, data: ResizedSegments, prefs: Preferences,
                         pairs: np.ndarray) -> dict[str, Any]:
    """Ensemble accuracy on ``pairs`` with a strict preference (ties excluded), BT loss, and
    each member's accuracy. NaN when there is nothing to score."""
    pairs = np.asarray(pairs, int)
    if len(pairs) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "member_accuracy": []}
    rows = np.concatenate([prefs.left[pairs], prefs.right[pairs]])
    returns = model.segment_returns(data, rows)
    logits = returns[:, :len(pairs)] - returns[:, len(pairs):]  # (K, P)
    target = prefs.p_left[pairs]
    strict = target != 0.5
    ensemble = logits.mean(0)
    loss = float(F.binary_cross_entropy_with_logits(torch.as_tensor(ensemble),
                                                    torch.as_tensor(target, dtype=torch.float64)))
    if not strict.any():
        return {"accuracy": float("nan"), "loss": loss, "member_accuracy": []}
    wanted = target[strict] > 0.5

    def accuracy(values: np.ndarray) -> float:
        return float(np.mean((values[strict] > 0) == wanted))

    return {"accuracy": accuracy(ensemble), "loss": loss,
            "member_accuracy": [accuracy(row) for row in logits]}


def true_return_correlation(model: RewardEnsemble, data: ResizedSegments,
                            segments: SegmentSet) -> float:
    """Pearson correlation of predicted and true segment returns (evaluation only)."""
    predicted = model.segment_returns(data, np.arange(len(segments))).mean(0)
    true = segments.true_returns
    if np.std(predicted) == 0 or np.std(true) == 0:
        return float("nan")
    value = float(np.corrcoef(predicted, true)[0, 1])
    return value if math.isfinite(value) else float("nan")


def train_reward_run(sources: list[tuple[Path, Path]], out: str | Path,
                     config: RewardModelConfig | None = None, env_id: str | None = None,
                     log: Any = None) -> dict[str, Any]:
    """Fit on the labelled queries of (query directory, label database) pairs; write
    ``OUT/reward_model/`` and ``OUT/metrics.json``. A query set for another env than
    ``env_id`` raises :class:`~vla_gym.training.query_files.QueryFileError`."""
    from vla_gym.training.preferences import load_preferences

    prefs = load_preferences(sources, env_id=env_id)
    result = train_reward_model(prefs, config, log=log)
    out = Path(out)
    result.model.save(out / "reward_model")
    metrics = {"env_id": prefs.segments.env_id,
               "queries": [str(d) for d, _ in sources], "labels": [str(db) for _, db in sources],
               "config": asdict(result.model.config), **result.metrics}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
