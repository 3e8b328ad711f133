"""The policy's trunk: encoders + fusion + state -> one feature vector per sample.

Shared by :class:`~vla_gym.policies.policy.VLAPolicy` and the stable-baselines3 features
extractor, so RL fine-tuning trains the very modules a checkpoint holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vla_gym.policies.configuration import VisionConfig, VLAConfig
from vla_gym.policies.encoders.language import LanguageEncoder, LanguageFeatures, build_language
from vla_gym.policies.encoders.vision import build_vision
from vla_gym.policies.finetune import apply_finetune, is_frozen
from vla_gym.policies.fusion import build_fusion, expected_cell_xy
from vla_gym.policies.geometry import TargetGeometry
from vla_gym.policies.layers import mlp


@dataclass
class TrunkOutput:
    features: Tensor  # (B, hidden): what the heads read
    vision: Tensor  # (B, Dv) pooled image embedding (contrastive loss)
    language: Tensor  # (B, Dl) pooled instruction embedding (contrastive loss)
    target_map: Tensor | None = None  # (B, tokens) logits of where the target is (grounding)
    extra_maps: tuple[Tensor | None, ...] = ()  # the same for each of config.extra_views
    target_height: Tensor | None = None  # (B,) m, the geometry's height regressor (if any)
    perception: Tensor | None = None  # (B, D) what the final MLP reads besides the state
    # (B, tokens) logits of where the instruction's landmark is, per view in config.views
    # order (None for a view whose fusion has no landmark map)
    landmark_maps: tuple[Tensor | None, ...] = ()


def num_vision_tokens(cfg: VisionConfig, patch_size: int) -> int:
    """Tokens the vision encoder emits at ``cfg.image_size`` (position tables need it)."""
    if cfg.kind == "cnn":
        side = cfg.image_size
        for _ in range(3):  # three stride-2 convs, "same" padding
            side = math.ceil(side / 2)
        return side * side
    return (cfg.image_size // patch_size) ** 2


class InstructionCache:
    """Per-instruction language features, reused while the encoder's weights are unchanged.

    Entries are keyed by text; the whole cache is dropped when any encoder weight changes
    (each in-place update bumps a tensor's version counter, optimiser steps included).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self.stamp: tuple[int, int] | None = None
        self.hits = self.misses = 0

    def clear(self) -> None:
        self.entries.clear()
        self.stamp = None

    def lookup(self, encoder: LanguageEncoder, texts: Sequence[str]) -> LanguageFeatures:
        stamp = (id(encoder), sum(p._version for p in encoder.parameters()))
        if stamp != self.stamp:
            self.clear()
            self.stamp = stamp
        missing = [t for t in dict.fromkeys(texts) if t not in self.entries]
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if missing:
            self._encode(encoder, missing)
        for t in texts:
            self.entries.move_to_end(t)
        feats = [self.entries[t] for t in texts]
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return _stack(feats)

    def _encode(self, encoder: LanguageEncoder, texts: list[str]) -> None:
        with torch.no_grad():
            ids, mask = encoder.tokenize(texts)
            out = encoder(ids, mask)
        for i, text in enumerate(texts):
            self.entries[text] = (out.pooled[i].clone(), out.tokens[i][out.mask[i]].clone())


def _stack(entries: list[tuple[Tensor, Tensor]]) -> LanguageFeatures:
    pooled = torch.stack([p for p, _ in entries])
    width = max(t.shape[0] for _, t in entries)
    tokens = pooled.new_zeros(len(entries), width, pooled.shape[-1])
    mask = torch.zeros(len(entries), width, dtype=torch.bool, device=pooled.device)
    for i, (_, t) in enumerate(entries):
        tokens[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return LanguageFeatures(pooled, tokens, mask)


def _target_xy(target_map: Tensor | None, like: Tensor) -> Tensor:
    """Where a view's target map puts the target, (B, 2) in [-1, 1]; zeros without a map."""
    if target_map is None:
        return like.new_zeros(like.shape[0], 2)
    return expected_cell_xy(target_map)


class VLATrunk(nn.Module):
    """Vision encoder, language encoder, fusion, state MLP and a final MLP."""

    def __init__(self, config: VLAConfig, base_dir: Path | None = None,
                 language: LanguageEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.vision = build_vision(config.vision)
        self.language = language if language is not None else build_language(
            config.language, base_dir)
        patch = getattr(getattr(self.vision, "model", None), "config", config.vision)
        n_tokens = num_vision_tokens(config.vision, patch.patch_size)

        def fusion(main: bool = True) -> nn.Module:
            # Relations between objects are read in the main camera's wide view; the wrist
            # view's fusion goes without the (costly) relation layers.
            cfg = config.fusion if main else dataclasses.replace(config.fusion,
                                                                 relation_layers=0)
            return build_fusion(cfg, self.vision.out_dim, self.language.out_dim, n_tokens)

        self.fusion = fusion()
        # Without image features in the head (geometry.image_features_to_head=False) the final
        # MLP reads the lifted geometry and the state alone.
        self.images_to_head = not (config.geometry.enabled
                                   and not config.geometry.image_features_to_head)
        width = config.fusion.dim * len(config.views) if self.images_to_head else 0
        if config.fusion.target_xy_to_head and self.images_to_head:
            width += 2 * len(config.views)
        self.geometry: TargetGeometry | None = None
        if config.geometry.enabled:
            self.geometry = TargetGeometry(config.geometry.cameras, config.views,
                                           config.fusion.dim)
            width += self.geometry.out_dim
        if config.use_state:
            read = len(config.state_indices) or config.state_dim
            self.state = mlp(read, config.hidden, config.hidden, layers=2)
            width += config.hidden
            self.register_buffer("state_index", torch.tensor(config.state_indices,
                                                             dtype=torch.long),
                                 persistent=False)
        # Extra camera views (a wrist camera): an encoder and a fusion of their own, since what
        # a view sees and how it relates to the instruction differ from the main camera's.
        # Built after the main path so that path's weights do not depend on the views.
        self.extra_vision = nn.ModuleList()
        self.extra_fusion = nn.ModuleList()
        for _ in config.extra_views:
            self.extra_vision.append(build_vision(config.vision))
            self.extra_fusion.append(fusion(main=False))
        for encoder in self.vision_encoders:
            apply_finetune(encoder, config.finetune.vision, config.finetune)
        apply_finetune(self.language, config.finetune.language, config.finetune)
        self.out = nn.Sequential(mlp(width, config.hidden, config.hidden, layers=2), nn.GELU())
        self.cache = InstructionCache(config.language.cache_size)

    def train(self, mode: bool = True) -> VLATrunk:
        """Like ``nn.Module.train`` but frozen encoders stay in eval mode (no dropout)."""
        super().train(mode)
        for encoder in (*self.vision_encoders, self.language):
            if is_frozen(encoder):
                encoder.eval()
        return self

    @property
    def vision_encoders(self) -> list[nn.Module]:
        return [self.vision, *self.extra_vision]

    def encode_instructions(self, texts: Sequence[str]) -> LanguageFeatures:
        """Cached features when gradients cannot flow into the encoder, else a fresh pass."""
        trains = torch.is_grad_enabled() and not is_frozen(self.language)
        if trains or self.language.training:
            ids, mask = self.language.tokenize(texts)
            return self.language(ids, mask)
        return self.cache.lookup(self.language, texts)

    def forward(self, images: Tensor, lang: LanguageFeatures, state: Tensor | None,
                extra_views: Sequence[Tensor] = (), raw_state: Tensor | None = None,
                shifts: Mapping[str, Tensor] | None = None, focus: Tensor | None = None
                ) -> TrunkOutput:
        """``images``: the main camera; ``extra_views``: one batch per ``config.extra_views``.
        The target map and pooled vision embedding are the main camera's. ``raw_state``: the
        state before standardisation, for the geometry (default: ``state``, as the RL
        features extractor passes it); ``shifts``: per view, how far augmentation moved each
        image's content (image fractions), which the geometry undoes; ``focus``: (B, 3)
        world points the geometry pulls the maps toward (``types.FOCUS``; the returned maps
        stay the fusion's own)."""
        if len(extra_views) != len(self.extra_vision):
            raise ValueError(f"this trunk reads {len(self.extra_vision)} extra view(s) "
                             f"{list(self.config.extra_views)}, got {len(extra_views)}")
        v_pooled, v_tokens = self.vision(images)
        fused, target_map, landmark_map = self.fusion.forward_with_maps(v_pooled, v_tokens, lang)
        parts, extra_maps, landmark_maps = [fused], [], [landmark_map]
        for encoder, fusion, view in zip(self.extra_vision, self.extra_fusion, extra_views):
            view_fused, view_map, view_landmark = fusion.forward_with_maps(*encoder(view), lang)
            parts.append(view_fused)
            extra_maps.append(view_map)
            landmark_maps.append(view_landmark)
        if self.config.fusion.target_xy_to_head:
            parts.extend(_target_xy(m, fused) for m in (target_map, *extra_maps))
        height = None
        if self.geometry is not None:
            pose = raw_state if raw_state is not None else state
            if pose is None:
                raise ValueError("target geometry needs the 'state' observation (the "
                                 "gripper's pose) but got none")
            lifted, height = self.geometry((target_map, *extra_maps), fused, pose, shifts,
                                           focus)
            parts = [*parts, lifted.to(fused.dtype)] if self.images_to_head else [
                lifted.to(fused.dtype)]
        perception = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return TrunkOutput(self.decide(perception, state), v_pooled, lang.pooled, target_map,
                           tuple(extra_maps), height, perception, tuple(landmark_maps))

    def decide(self, perception: Tensor, state: Tensor | None) -> Tensor:
        """The final MLP over what perception hands the head and the (standardised) state;
        split out so that the head can be refitted on cached perception
        (:func:`vla_gym.training.bc.refit_head`)."""
        if self.config.use_state:
            if state is None:
                raise ValueError("this policy reads the 'state' observation but got none")
            if len(self.state_index):
                state = state.index_select(-1, self.state_index)
            perception = torch.cat([perception, self.state(state)], dim=-1)
        return self.out(perception)

    def decision_modules(self) -> list[nn.Module]:
        """The modules :meth:`decide` runs (state MLP and final MLP)."""
        return [self.out, *([self.state] if self.config.use_state else [])]
