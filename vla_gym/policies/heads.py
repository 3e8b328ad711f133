"""Action heads, their ensembles / MC-dropout uncertainty, and the auxiliary heads.

Action heads see raw actions (in the contract's normalised [-1, 1] units) and the policy's
:class:`Normalizer`; the continuous head learns in standardised units (mean/std of the
training actions), the bin head bins the raw range like RT-1, the action-set head classifies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_gym.policies.configuration import HeadConfig
from vla_gym.policies.layers import mlp

Metrics = dict[str, float]


class Normalizer(nn.Module):
    """Action and state mean/std, kept as buffers so they travel inside the checkpoint."""

    action_mean: Tensor
    action_std: Tensor
    state_mean: Tensor
    state_std: Tensor

    def __init__(self, action_dim: int, state_dim: int) -> None:
        super().__init__()
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def set(self, name: str, mean: Tensor, std: Tensor) -> None:
        buf_mean, buf_std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
        if mean.shape != buf_mean.shape or std.shape != buf_std.shape:
            raise ValueError(f"{name} statistics must have shape {tuple(buf_mean.shape)}, got "
                             f"mean {tuple(mean.shape)} and std {tuple(std.shape)}")
        buf_mean.copy_(mean)
        buf_std.copy_(std.clamp_min(1e-6))


class ActionHead(nn.Module):
    def loss(self, feats: Tensor, target: Tensor, norm: Normalizer) -> tuple[Tensor, Metrics]:
        raise NotImplementedError

    def predict(self, feats: Tensor, norm: Normalizer) -> Tensor:
        """Continuous / bins: actions (B, A); action set: probabilities (B, N)."""
        raise NotImplementedError

    def aggregate(self, preds: Tensor) -> tuple[Tensor, Tensor]:
        """Members' predictions (K, B, ...) -> (action (B, A), uncertainty (B,)).

        Uncertainty is the members' standard deviation in action units, averaged over dims.
        """
        return preds.mean(dim=0), preds.std(dim=0, unbiased=False).mean(dim=-1)


class ContinuousHead(ActionHead):
    def __init__(self, in_dim: int, action_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.nll = cfg.loss == "nll"
        out = 2 * action_dim if self.nll else action_dim
        self.net = mlp(in_dim, cfg.hidden, out, cfg.layers, cfg.dropout)

    def _mean_logstd(self, feats: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(feats)
        if not self.nll:
            return out, None
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(-5.0, 2.0)

    def loss(self, feats: Tensor, target: Tensor, norm: Normalizer) -> tuple[Tensor, Metrics]:
        z = (target - norm.action_mean) / norm.action_std
        mean, log_std = self._mean_logstd(feats)
        mse = F.mse_loss(mean, z)
        if log_std is None:
            return mse, {"action_mse": mse.item()}
        nll = (0.5 * ((z - mean) * torch.exp(-log_std)) ** 2 + log_std).mean()
        return nll + 0.5 * math.log(2 * math.pi), {"action_mse": mse.item()}

    def predict(self, feats: Tensor, norm: Normalizer) -> Tensor:
        mean, _ = self._mean_logstd(feats)
        return mean * norm.action_std + norm.action_mean


class BinHead(ActionHead):
    """RT-1 style: each dimension's [-1, 1] range split into ``bins`` classes."""

    centres: Tensor

    def __init__(self, in_dim: int, action_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.action_dim, self.bins = action_dim, cfg.bins
        self.net = mlp(in_dim, cfg.hidden, action_dim * cfg.bins, cfg.layers, cfg.dropout)
        self.register_buffer("centres", torch.linspace(-1.0, 1.0, cfg.bins), persistent=False)

    def _logits(self, feats: Tensor) -> Tensor:
        return self.net(feats).view(-1, self.action_dim, self.bins)

    def to_bins(self, actions: Tensor) -> Tensor:
        scaled = (actions.clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.bins - 1)
        return scaled.round().long()

    def loss(self, feats: Tensor, target: Tensor, norm: Normalizer) -> tuple[Tensor, Metrics]:
        logits, labels = self._logits(feats), self.to_bins(target)
        loss = F.cross_entropy(logits.reshape(-1, self.bins), labels.reshape(-1))
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, {"bin_accuracy": acc.item()}

    def predict(self, feats: Tensor, norm: Normalizer) -> Tensor:
        return self.centres[self._logits(feats).argmax(-1)]


class ActionSetHead(ActionHead):
    """A classifier over a discrete action set (e.g. the 20 robot commands)."""

    def __init__(self, in_dim: int, action_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.num_actions = cfg.num_actions
        self.net = mlp(in_dim, cfg.hidden, cfg.num_actions, cfg.layers, cfg.dropout)

    def loss(self, feats: Tensor, target: Tensor, norm: Normalizer) -> tuple[Tensor, Metrics]:
        labels = target.reshape(-1).long()
        if labels.numel() != feats.shape[0]:
            raise ValueError(f"an action-set head needs one action index per sample, got "
                             f"actions of shape {tuple(target.shape)}")
        if labels.min() < 0 or labels.max() >= self.num_actions:
            raise ValueError(f"action indices must be in [0, {self.num_actions}), got "
                             f"{labels.min().item()}..{labels.max().item()}")
        logits = self.net(feats)
        acc = (logits.argmax(-1) == labels).float().mean()
        return F.cross_entropy(logits, labels), {"action_accuracy": acc.item()}

    def predict(self, feats: Tensor, norm: Normalizer) -> Tensor:
        return self.net(feats).softmax(dim=-1)

    def aggregate(self, preds: Tensor) -> tuple[Tensor, Tensor]:
        choice = preds.mean(dim=0).argmax(dim=-1)
        agree = (preds.argmax(dim=-1) == choice).float().mean(dim=0)
        return choice.unsqueeze(-1).float(), 1.0 - agree


HEADS: dict[str, type[ActionHead]] = {
    "continuous": ContinuousHead, "bins": BinHead, "discrete": ActionSetHead}


POSITION_UNIT_M = 0.1  # the grounding head's position outputs are in this unit


class GroundingHead(nn.Module):
    """Predicts the target's position (3,) and object class from the fused features."""

    def __init__(self, in_dim: int, hidden: int, classes: Sequence[str]) -> None:
        super().__init__()
        self.classes = tuple(classes)
        self.index = {name: i for i, name in enumerate(self.classes)}
        self.net = mlp(in_dim, hidden, 3 + len(self.classes), layers=2)

    def labels(self, names: Sequence[str], device: torch.device) -> Tensor:
        """Class index per name; -100 (ignored) for names outside the class list."""
        return torch.tensor([self.index.get(str(n), -100) for n in names], device=device)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(feats)
        return out[:, :3], out[:, 3:]

    def loss(self, feats: Tensor, target_pos: Tensor | None, names: Sequence[str] | None,
             target_map: Tensor | None = None, target_pixel: Tensor | None = None,
             ) -> tuple[Tensor, Metrics]:
        pos, logits = self(feats)
        loss, metrics = feats.new_zeros(()), {}
        if target_map is not None and target_pixel is not None:
            map_loss, map_metrics = target_map_loss(target_map, target_pixel)
            loss = loss + map_loss
            metrics.update(map_metrics)
        if target_pos is not None:
            # Regressed in decimetres: in metres the squared error of table-top offsets is
            # ~0.01 and its gradient vanishes next to the class loss.
            loss = loss + F.mse_loss(pos, target_pos / POSITION_UNIT_M)
            error = (pos * POSITION_UNIT_M - target_pos).norm(dim=-1)
            metrics["grounding_pos_error_m"] = error.mean().item()
        if names is not None:
            labels = self.labels(names, feats.device)
            if (labels >= 0).any():
                loss = loss + F.cross_entropy(logits, labels, ignore_index=-100)
                hit = (logits.argmax(-1) == labels)[labels >= 0]
                metrics["grounding_accuracy"] = hit.float().mean().item()
        return loss, metrics


def target_cells(target_pixel: Tensor, side: int) -> Tensor:
    """Index of the grid cell (row-major, ``side`` x ``side``) holding each (column, row)
    image position in [0, 1]; -100 (ignored) where the target is out of view or unknown."""
    inside = torch.isfinite(target_pixel).all(-1) & (target_pixel >= 0).all(-1) & (
        target_pixel < 1).all(-1)
    grid = (torch.nan_to_num(target_pixel, nan=0.0).clamp(0, 1 - 1e-6) * side).long()
    cells = grid[:, 1] * side + grid[:, 0]
    return torch.where(inside, cells, torch.full_like(cells, -100))


def bilinear_cell_weights(target_pixel: Tensor, side: int) -> Tensor:
    """A distribution over the ``side`` x ``side`` cells (row-major) spread bilinearly over the
    four cell centres around each image position, so its expected cell coordinate is the
    position itself, not the centre of the cell it falls in (a hard label would quantise the
    target to a cell: ~10 cm on a 64 px tabletop view with 8 x 8 cells)."""
    centre = (torch.nan_to_num(target_pixel, nan=0.0) * side - 0.5).clamp(0, side - 1)
    low = centre.floor().clamp(max=side - 2).long()
    frac = centre - low
    weights = target_pixel.new_zeros(target_pixel.shape[0], side, side)
    rows = torch.arange(target_pixel.shape[0], device=target_pixel.device)
    for dy in (0, 1):
        for dx in (0, 1):
            wy = frac[:, 1] if dy else 1 - frac[:, 1]
            wx = frac[:, 0] if dx else 1 - frac[:, 0]
            weights[rows, low[:, 1] + dy, low[:, 0] + dx] += wy * wx
    return weights.flatten(1)


def target_map_loss(target_map: Tensor, target_pixel: Tensor) -> tuple[Tensor, Metrics]:
    """Cross-entropy of the fusion's target map against where the target is in the image
    (soft, bilinear over the nearest cells); rows with the target out of view are skipped."""
    side = int(round(target_map.shape[1] ** 0.5))
    if side * side != target_map.shape[1] or side < 2:
        return target_map.new_zeros(()), {}
    target_pixel = target_pixel.to(target_map.device)
    cells = target_cells(target_pixel, side)
    seen = cells >= 0
    if not seen.any():
        return target_map.new_zeros(()), {}
    soft = bilinear_cell_weights(target_pixel[seen], side)
    loss = -(soft * F.log_softmax(target_map[seen], dim=-1)).sum(-1).mean()
    hit = target_map[seen].argmax(-1) == cells[seen]
    return loss, {"grounding_cell_accuracy": hit.float().mean().item()}


class ContrastiveHead(nn.Module):
    """CLIP-style symmetric InfoNCE between image and instruction embeddings.

    Samples sharing an instruction are all positives for each other, so repeated instructions
    in a batch are not pushed apart.
    """

    def __init__(self, v_dim: int, l_dim: int, dim: int) -> None:
        super().__init__()
        self.v, self.lang = nn.Linear(v_dim, dim), nn.Linear(l_dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss(self, v: Tensor, t: Tensor, texts: Sequence[str]) -> tuple[Tensor, Metrics]:
        v, t = F.normalize(self.v(v), dim=-1), F.normalize(self.lang(t), dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100.0)).exp() * v @ t.T
        ids = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        codes = torch.tensor([ids[x] for x in texts], device=v.device)
        positives = (codes[:, None] == codes[None, :]).float()
        targets = positives / positives.sum(dim=1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        hit = positives[torch.arange(len(codes)), logits.argmax(dim=1)]
        return loss, {"contrastive_accuracy": hit.mean().item()}
