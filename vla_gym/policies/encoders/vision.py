"""Image encoders: a small CNN (fast default), a patch ViT, and CLIP's vision tower.

Each takes a normalised float batch ``(B, 3, S, S)`` and returns ``(pooled (B, D), tokens
(B, N, D))``: pooled features feed late fusion, tokens feed FiLM, cross-attention and early
fusion. ``mean`` / ``std`` say how the policy's preprocessing normalises pixels for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vla_gym.policies._optional import require
from vla_gym.policies.configuration import VisionConfig
from vla_gym.policies.layers import Block

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionEncoder(nn.Module):
    out_dim: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    lora_targets: tuple[str, ...] = ()


class SmallCNN(VisionEncoder):
    """Three strided conv stages: ~1 ms a 64 px image on one core; tokens = the last map.

    Two coordinate channels (x, y in [-1, 1]) join the pixels (CoordConv), so features can
    carry absolute image position, which a controller needs and convolutions alone discard.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(
            nn.Conv2d(5, w, 5, stride=2, padding=2), nn.GroupNorm(1, w), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(1, 2 * w), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
        )
        self.out_dim = 2 * w

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        b, _, h, w = images.shape
        ys = torch.linspace(-1.0, 1.0, h, device=images.device, dtype=images.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=images.device, dtype=images.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x, grid_y]).expand(b, -1, -1, -1)
        tokens = self.net(torch.cat([images, coords], dim=1)).flatten(2).transpose(1, 2)
        return tokens.mean(dim=1), tokens  # (B, C), (B, H*W, C)


class PatchViT(VisionEncoder):
    """Patch Vision Transformer: conv patchify, CLS token, learned positions, pre-norm blocks."""

    lora_targets = ("qkv", "proj")

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patchify = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, cfg.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.out_dim = cfg.dim

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.patchify(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


class CLIPVision(VisionEncoder):
    """CLIP's vision tower (``transformers.CLIPVisionModel``), pretrained or from a config."""

    mean, std = CLIP_MEAN, CLIP_STD
    lora_targets = ("q_proj", "v_proj")

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        tf = require("transformers")
        if cfg.pretrained:
            self.model = load_pretrained(tf.CLIPVisionModel, cfg.pretrained)
        else:  # the defaults of CLIPVisionConfig are ViT-B/32 at 224 px
            self.model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**_hf_kwargs(cfg.hf_config)))
        self.interpolate = cfg.image_size != self.model.config.image_size
        self.out_dim = self.model.config.hidden_size

    @property
    def hf_model(self) -> Any:
        return self.model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(pixel_values=images, interpolate_pos_encoding=self.interpolate)
        return out.pooler_output, out.last_hidden_state[:, 1:]


def load_pretrained(model_cls: Any, source: str) -> Any:
    """``model_cls.from_pretrained(source)`` with an error that says what to pass instead."""
    try:
        return model_cls.from_pretrained(source)
    except OSError as exc:
        raise OSError(f"cannot load {model_cls.__name__} weights from {source!r}: {exc}. Pass "
                      "a local model directory (hub names need network access to the hub)"
                      ) from exc


def _hf_kwargs(hf_config: dict[str, Any]) -> dict[str, Any]:
    """A saved HF config dict minus the keys its constructor sets itself."""
    skip = {"model_type", "transformers_version", "architectures", "_name_or_path", "id2label",
            "label2id"}
    return {k: v for k, v in hf_config.items() if k not in skip}


def build_vision(cfg: VisionConfig) -> VisionEncoder:
    kinds = {"cnn": SmallCNN, "vit": PatchViT, "clip": CLIPVision}
    return kinds[cfg.kind](cfg)
