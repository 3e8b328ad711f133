"""``VLAPolicy``: a vision-language-action policy built from one :class:`VLAConfig`.

The contract every runner relies on (rollout CLI, stable-baselines3 adapter, ROS 2 deploy)::

    policy.predict(obs_batch) -> np.ndarray (B, action_dim)   # batched numpy in/out
    policy.act(obs) -> np.ndarray (action_dim,)                 # one observation
    policy.reset()
    policy.forward(batch) -> (loss, metrics)                    # training
    policy.save_pretrained(dir); VLAPolicy.from_pretrained(dir)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_gym.policies.configuration import VLAConfig
from vla_gym.policies.geometry import HEIGHT_UNIT_M, map_peaks
from vla_gym.policies.heads import (
    HEADS,
    ActionHead,
    ContrastiveHead,
    GroundingHead,
    Metrics,
    Normalizer,
    target_map_loss,
)
from vla_gym.policies.model import TrunkOutput, VLATrunk
from vla_gym.policies.preprocessing import Inputs, ObservationError, add_batch_dim, preprocess
from vla_gym.types import anchor_map_key, landmark_label, pixel_label


@dataclass
class PolicyOutput:
    action: np.ndarray  # (B, action_dim), after the fallback
    uncertainty: np.ndarray  # (B,), 0 when the policy has no uncertainty method
    fallback: np.ndarray  # (B,) bool: True where the fallback action replaced the prediction


class VLAPolicy(nn.Module):
    """Encoders + fusion + action head (+ auxiliary heads), with raw-observation inference."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, config: VLAConfig, base_dir: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.is_quantized = False
        # The action column sent out fully open or closed (head.binary_gripper), or None.
        self._binary_grip = config.contract.grip_index if config.head.binary_gripper else None
        with torch.random.fork_rng(devices=[]):  # same seed, same weights; global RNG untouched
            torch.manual_seed(config.seed)
            self._build(config, Path(base_dir) if base_dir else None)

    def _build(self, config: VLAConfig, base_dir: Path | None) -> None:
        self.trunk = VLATrunk(config, base_dir)
        self.normalizer = Normalizer(config.contract.dim, config.state_dim)
        vision = self.trunk.vision
        self.register_buffer("pixel_mean", torch.tensor(vision.mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(vision.std).view(1, 3, 1, 1),
                             persistent=False)
        unc = config.uncertainty
        head_cfg = config.head
        if unc.method == "mc_dropout":
            head_cfg = dataclasses.replace(head_cfg, dropout=unc.dropout)
        members = unc.members if unc.method == "ensemble" else 1
        self.heads = nn.ModuleList(HEADS[head_cfg.kind](config.hidden, config.contract.dim,
                                                        head_cfg) for _ in range(members))
        aux = config.aux
        self.grounding = (GroundingHead(config.hidden, config.hidden, aux.grounding_classes)
                          if aux.grounding_weight > 0 else None)
        self.contrastive = (ContrastiveHead(self.trunk.vision.out_dim,
                                            self.trunk.language.out_dim, aux.contrastive_dim)
                            if aux.contrastive_weight > 0 else None)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> VLAPolicy:
        """A fresh policy from a named preset (``small``, ``base``, ``clip-b32``, ...)."""
        from vla_gym.policies.presets import get_config

        return cls(get_config(name, **changes))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VLAPolicy:
        """Load ``config.json`` + ``model.safetensors``; any mismatch raises, nothing partial."""
        from vla_gym.policies.checkpoint import load_policy

        return load_policy(cls, Path(path))

    def save_pretrained(self, path: str | Path) -> Path:
        from vla_gym.policies.checkpoint import save_policy

        return save_policy(self, Path(path))

    @property
    def device(self) -> torch.device:
        return self.normalizer.action_mean.device

    @property
    def action_heads(self) -> list[ActionHead]:
        """The action head, or the ensemble's members."""
        return [cast(ActionHead, h) for h in self.heads]

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    # ---- normalisation statistics ---------------------------------------------------------
    def set_normalization(self, actions: np.ndarray | None = None,
                          states: np.ndarray | None = None) -> None:
        """Fit action/state mean and std from data (N, dim); stored in the checkpoint."""
        for name, data in (("action", actions), ("state", states)):
            if data is None:
                continue
            t = torch.as_tensor(np.asarray(data, dtype=np.float32), device=self.device)
            if t.ndim != 2:
                raise ValueError(f"{name}s must be (N, dim), got shape {tuple(t.shape)}")
            self.normalizer.set(name, t.mean(dim=0), t.std(dim=0, unbiased=False))

    # ---- model pieces ---------------------------------------------------------------------
    def preprocess(self, obs_batch: Any) -> Inputs:
        return preprocess(obs_batch, self.config, self.device)

    def standardised_state(self, inputs: Inputs) -> Tensor | None:
        if inputs.state is None:
            return None
        return (inputs.state - self.normalizer.state_mean) / self.normalizer.state_std

    def features(self, inputs: Inputs) -> TrunkOutput:
        state = self.standardised_state(inputs)
        lang = self.trunk.encode_instructions(inputs.instructions)
        images, *extra = ((view - self.pixel_mean) / self.pixel_std
                          for view in (inputs.images, *inputs.extra_views))
        return self.trunk(images, lang, state, extra, raw_state=inputs.state,
                          shifts=inputs.shifts, focus=inputs.focus)

    # ---- training -------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any], anchor_weight: float = 0.0
                ) -> tuple[Tensor, Metrics]:
        """Total loss and float metrics for a batch of observations plus ``action``.

        Optional keys for the grounding head: ``target_pos`` (B, 3), ``target`` (B names) and
        ``target_pixel`` (B, 2: where the target is in the image, supervising a fusion's
        target map). With ``anchor_weight`` > 0 the batch also needs ``anchor_action`` (B,
        action_dim), a second action target (e.g. a reference policy's actions) whose action
        loss is added with that weight (metric ``anchor_loss``).
        """
        inputs = self.preprocess(batch)
        if "action" not in batch:
            raise ObservationError("a training batch needs 'action' (B, action_dim) next to "
                                   "the observation keys")
        target = torch.as_tensor(np.asarray(batch["action"]), device=self.device).float()
        out = self.features(inputs)
        loss, metrics = self.action_loss(out.features, target)
        if anchor_weight > 0:
            if "anchor_action" not in batch:
                raise ObservationError("anchor_weight > 0 needs 'anchor_action' (B, "
                                       "action_dim) in the batch")
            anchor = torch.as_tensor(np.asarray(batch["anchor_action"]),
                                     device=self.device).float()
            anchor_loss, _ = self.action_loss(out.features, anchor)
            loss = loss + anchor_weight * anchor_loss
            metrics["anchor_loss"] = anchor_loss.item()
        loss = loss + self._aux_losses(batch, inputs, out, metrics)
        metrics["loss"] = loss.item()
        return loss, metrics

    def action_loss(self, feats: Tensor, target: Tensor) -> tuple[Tensor, Metrics]:
        """The action heads' loss (averaged over an ensemble's members) on trunk features."""
        losses = [head.loss(feats, target, self.normalizer) for head in self.action_heads]
        loss = torch.stack([lo for lo, _ in losses]).mean()
        return loss, {"action_loss": loss.item(), **losses[0][1]}

    def auxiliary_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Metrics]:
        """The auxiliary losses alone, for observations without action labels (e.g. grounding
        frames); zero when none applies."""
        inputs = self.preprocess(batch)
        metrics: Metrics = {}
        loss = self._aux_losses(batch, inputs, self.features(inputs), metrics)
        return loss, metrics

    def _aux_losses(self, batch: dict[str, Any], inputs: Inputs, out: TrunkOutput,
                    metrics: Metrics) -> Tensor:
        total = out.features.new_zeros(())
        aux = self.config.aux
        has_targets = any(key in batch for key in ("target_pos", "target", "target_pixel"))
        if self.grounding is not None and has_targets:
            pos_t, pixel_t = (None if batch.get(key) is None else torch.as_tensor(
                np.asarray(batch[key], dtype=np.float32), device=self.device)
                for key in ("target_pos", "target_pixel"))
            # Where the head reads no image features, the grounding head's class and position
            # losses cannot reach perception; they are kept off the control features too.
            feats = out.features if self.trunk.images_to_head else out.features.detach()
            g_loss, g_metrics = self.grounding.loss(feats, pos_t, batch.get("target"),
                                                    out.target_map, pixel_t)
            total = total + aux.grounding_weight * g_loss
            metrics.update(grounding_loss=g_loss.item(), **g_metrics)
        if self.grounding is not None:
            total = total + aux.grounding_weight * self._view_map_losses(batch, out, metrics)
            total = total + aux.grounding_weight * self._landmark_map_losses(batch, out, metrics)
        total = total + aux.grounding_weight * self._map_anchor_losses(batch, out, metrics)
        if out.target_height is not None and batch.get("target_pos") is not None:
            total = total + aux.grounding_weight * self._height_loss(batch, out, metrics)
        if self.contrastive is not None and inputs.batch_size > 1:
            c_loss, c_metrics = self.contrastive.loss(out.vision, out.language,
                                                      inputs.instructions)
            total = total + aux.contrastive_weight * c_loss
            metrics.update(contrastive_loss=c_loss.item(), **c_metrics)
        return total

    def _view_map_losses(self, batch: dict[str, Any], out: TrunkOutput,
                         metrics: Metrics) -> Tensor:
        """Each extra camera's target map against where the target is in that camera's image
        (``wrist_target_pixel``...): in a wrist view the offset between gripper and target is
        what the next action corrects, so that map is worth supervising too."""
        return self._map_losses(batch, zip(self.config.extra_views, out.extra_maps),
                                pixel_label, "map", "", out, metrics)

    def _map_anchor_losses(self, batch: dict[str, Any], out: TrunkOutput, metrics: Metrics
                           ) -> Tensor:
        """Each view's target map against a reference policy's map on the same frames
        (``batch[anchor_map_key(view)]``, logits): the KL divergence from the reference's
        distribution, zero where the maps agree. It keeps maps near the reference (the BC
        policy, in RL fine-tuning) wherever no label pulls them elsewhere."""
        total = out.features.new_zeros(())
        for view, logits in zip(self.config.views, (out.target_map, *out.extra_maps)):
            reference = batch.get(anchor_map_key(view))
            if logits is None or reference is None:
                continue
            ref = torch.as_tensor(np.asarray(reference, dtype=np.float32), device=self.device)
            if ref.shape != logits.shape:
                raise ObservationError(f"'{anchor_map_key(view)}' must be {tuple(logits.shape)} "
                                       f"map logits, got {tuple(ref.shape)}")
            log_ref = F.log_softmax(ref, dim=-1)
            kl = (log_ref.exp() * (log_ref - F.log_softmax(logits.float(), dim=-1))).sum(-1)
            loss = kl.mean()
            metrics[f"{view}_map_anchor_kl"] = loss.item()
            total = total + loss
        return total

    def _landmark_map_losses(self, batch: dict[str, Any], out: TrunkOutput,
                             metrics: Metrics) -> Tensor:
        """Each view's landmark map against where the instruction's landmark is in that view
        (``landmark_pixel``, ``wrist_landmark_pixel``...)."""
        return self._map_losses(batch, zip(self.config.views, out.landmark_maps),
                                landmark_label, "landmark", "landmark_", out, metrics)

    def _map_losses(self, batch: dict[str, Any], maps: Iterable[tuple[str, Tensor | None]],
                    label: Callable[[str], str], loss_name: str, metric_prefix: str,
                    out: TrunkOutput, metrics: Metrics) -> Tensor:
        """Cross-entropy of each (view, map logits) against ``batch[label(view)]``, summed
        (rows out of view are skipped); metrics ``<view>_<loss_name>_loss`` and the map's
        accuracy as ``<view>_<metric_prefix>...``."""
        total = out.features.new_zeros(())
        for view, logits in maps:
            pixels = batch.get(label(view))
            if logits is None or pixels is None:
                continue
            loss, view_metrics = target_map_loss(logits, torch.as_tensor(
                np.asarray(pixels, dtype=np.float32), device=self.device))
            total = total + loss
            metrics[f"{view}_{loss_name}_loss"] = loss.item()
            metrics.update({f"{view}_{metric_prefix}{k}": v for k, v in view_metrics.items()})
        return total

    def _height_loss(self, batch: dict[str, Any], out: TrunkOutput, metrics: Metrics
                     ) -> Tensor:
        """The geometry's target height against the target's true z, over the rows that have
        a target position: Huber in cm, so that hard rows (an object lifted in the gripper)
        pull on the shared image features no harder than the target maps' own loss does."""
        assert out.target_height is not None
        true_z = torch.as_tensor(np.asarray(batch["target_pos"], dtype=np.float32),
                                 device=self.device)[:, 2]
        known = torch.isfinite(true_z)
        if not known.any():
            return out.target_height.new_zeros(())
        error = out.target_height.float()[known] - true_z[known]
        metrics["target_height_error_m"] = error.abs().mean().item()
        return F.smooth_l1_loss(error / HEIGHT_UNIT_M, torch.zeros_like(error), beta=1.0)

    # ---- inference ------------------------------------------------------------------------
    def _member_predictions(self, feats: Tensor) -> Tensor:
        unc = self.config.uncertainty
        if unc.method != "mc_dropout":
            return torch.stack([h.predict(feats, self.normalizer) for h in self.action_heads])
        head = self.action_heads[0]
        was_training = head.training
        head.train()  # dropout on, for this head only
        try:
            with torch.random.fork_rng(devices=[]):  # repeatable samples, global RNG untouched
                torch.manual_seed(self.config.seed)
                return torch.stack([head.predict(feats, self.normalizer)
                                    for _ in range(unc.members)])
        finally:
            head.train(was_training)

    def _fallback(self) -> Tensor:
        value = self.config.uncertainty.fallback
        if value is None:
            return torch.zeros(self.action_dim, device=self.device)
        if len(value) != self.action_dim:
            raise ValueError(f"uncertainty.fallback has {len(value)} values; this policy's "
                             f"actions have {self.action_dim}")
        return torch.tensor(value, dtype=torch.float32, device=self.device)

    def predict_with_uncertainty(self, obs_batch: Any) -> PolicyOutput:
        """Actions, per-sample uncertainty, and where the safe fallback replaced them."""
        if not self.training:
            with torch.inference_mode():
                return self._predict(obs_batch)
        self.eval()
        try:
            with torch.inference_mode():
                return self._predict(obs_batch)
        finally:
            self.train()

    def _predict(self, obs_batch: Any) -> PolicyOutput:
        out = self.features(self.preprocess(obs_batch))
        action, uncertainty = self.action_heads[0].aggregate(self._member_predictions(out.features))
        grip = self._binary_grip
        if grip is not None:  # before the fallback, which keeps its own command
            action = action.clone()
            action[:, grip] = torch.where(action[:, grip] > 0, 1.0, -1.0).to(action.dtype)
        threshold = self.config.uncertainty.threshold
        use_fallback = torch.zeros_like(uncertainty, dtype=torch.bool)
        if threshold is not None:
            use_fallback = uncertainty > threshold
            action = torch.where(use_fallback[:, None], self._fallback(), action)
        return PolicyOutput(self._to_numpy(action), uncertainty.float().cpu().numpy(),
                            use_fallback.cpu().numpy())

    def _to_numpy(self, action: Tensor) -> np.ndarray:
        if self.config.head.kind == "discrete":
            return action.round().long().cpu().numpy()
        return action.clamp(-1.0, 1.0).float().cpu().numpy()

    def predict(self, obs_batch: Any) -> np.ndarray:
        """(B, action_dim) actions for a batched observation dict (numpy in, numpy out).

        Continuous and bin heads give float32 in [-1, 1]; an action-set head gives the int64
        action index in a single column.
        """
        return self.predict_with_uncertainty(obs_batch).action

    @torch.no_grad()
    def target_candidates(self, obs_batch: Any, count: int) -> np.ndarray:
        """(B, count, 3) world points of the ``count`` strongest blobs of the main camera's
        target map (:func:`~vla_gym.policies.geometry.map_peaks`), strongest first, each
        lifted onto the table at the geometry's predicted height: the objects this policy
        thinks the instruction might mean, for exploration (``types.FOCUS``)."""
        geometry = self.trunk.geometry
        main = self.config.views[0]
        if geometry is None or main not in geometry.views:
            raise ValueError("target_candidates needs a policy with target geometry on its "
                             f"main view {main!r} (train bc --target-geometry)")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        was_training = self.training
        self.eval()
        try:
            inputs = self.preprocess(obs_batch)
            out = self.features(inputs)
        finally:
            self.train(was_training)
        assert out.target_map is not None and out.target_height is not None
        assert inputs.state is not None
        pixels, _ = map_peaks(out.target_map, count)
        batch = pixels.shape[0]
        points = geometry.lift(main, pixels.reshape(-1, 2),
                               out.target_height.float().repeat_interleave(count),
                               inputs.state.repeat_interleave(count, dim=0))
        return points.view(batch, count, 3).cpu().numpy()

    def act(self, obs: Any) -> np.ndarray:
        """The action for one observation, as a single env returns it."""
        return self.predict(add_batch_dim(obs))[0]

    def reset(self) -> None:
        """Start of an episode. The policy is memoryless; cached instructions stay valid."""
