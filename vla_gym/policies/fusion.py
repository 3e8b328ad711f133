"""Vision-language fusion, from cheapest to richest.

- ``concat``: late fusion, pooled image and instruction vectors side by side.
- ``gated``: late fusion where a learned gate weighs image against instruction per feature.
- ``film``: the instruction scales and shifts every image token (FiLM, as in RT-1), read out
  by mean pooling, a spatial softmax (where each modulated feature peaks) and a
  language-conditioned *target map*: one logit per image cell, whose softmax gives the
  expected (x, y) of the instructed object and its features. The grounding loss can supervise
  that map directly with the cell the target is in, a far denser signal than regressing
  a position from pooled features.
- ``cross_attention``: image tokens attend to words and words to image tokens, both ways.
- ``early``: one transformer over image tokens and word tokens together (with a CLS token);
  with ``vision.kind='vit', vision.depth=0`` the image tokens are raw patch embeddings.

Every module maps ``(vision pooled, vision tokens, LanguageFeatures)`` to ``(B, cfg.dim)``;
``forward_with_map`` also returns the target map's logits ``(B, tokens)`` where a fusion has one
(else None), and ``forward_with_maps`` the landmark map's too (FiLM with
``landmark_map=True``).

``relation_layers`` adds self-attention layers over FiLM's modulated tokens (each with its
cell position) before the map is read out, so a cell can weigh where the other objects are
(the main camera's fusion only).

Why a landmark map: FiLM modulates each image cell on its own, so a cell's logit cannot depend
on where *another* object is, and "the cube left of the bowl" is exactly that. The landmark map
finds the bowl (a plain noun phrase, which per-cell FiLM does well); each cell then gets its
offset from the landmark's expected position as two more inputs, scaled per feature by the
instruction, so "left of" becomes a per-cell test again.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vla_gym.policies.configuration import FusionConfig
from vla_gym.policies.encoders.language import LanguageFeatures
from vla_gym.policies.layers import Block, CrossBlock, SelfAttention, masked_mean


class Fusion(nn.Module):
    def forward(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures) -> Tensor:
        raise NotImplementedError

    def forward_with_map(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures,
                         ) -> tuple[Tensor, Tensor | None]:
        return self(v_pooled, v_tokens, lang), None

    def forward_with_maps(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures,
                          ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(fused, target map logits or None, landmark map logits or None)."""
        return (*self.forward_with_map(v_pooled, v_tokens, lang), None)


class ConcatFusion(Fusion):
    def __init__(self, v_dim: int, l_dim: int, n_tokens: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(v_dim + l_dim, cfg.dim), nn.GELU())

    def forward(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures) -> Tensor:
        return self.proj(torch.cat([v_pooled, lang.pooled], dim=-1))


class GatedFusion(Fusion):
    def __init__(self, v_dim: int, l_dim: int, n_tokens: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.v, self.lang = nn.Linear(v_dim, cfg.dim), nn.Linear(l_dim, cfg.dim)
        self.gate = nn.Linear(2 * cfg.dim, cfg.dim)
        self.act = nn.GELU()

    def forward(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures) -> Tensor:
        v, t = self.v(v_pooled), self.lang(lang.pooled)
        g = torch.sigmoid(self.gate(torch.cat([v, t], dim=-1)))
        return self.act(g * v + (1 - g) * t)


class SpatialSoftmax(nn.Module):
    """Expected (x, y) of each channel's softmax over a square token grid: keypoints.

    Grids that are not square (e.g. with a CLS token) give no keypoints (zeros)."""

    def __init__(self, n_tokens: int) -> None:
        super().__init__()
        side = int(round(n_tokens ** 0.5))
        self.valid = side * side == n_tokens
        coords = torch.linspace(-1.0, 1.0, max(side, 1))
        grid_y, grid_x = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("grid", torch.stack([grid_x.flatten(), grid_y.flatten()], -1),
                             persistent=False)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: Tensor) -> Tensor:  # (B, N, D) -> (B, 2D)
        b, n, d = tokens.shape
        if not self.valid or n != self.grid.shape[0]:
            return tokens.new_zeros(b, 2 * d)
        weights = torch.softmax(tokens / self.log_temperature.exp(), dim=1)  # over positions
        return torch.einsum("bnd,nk->bdk", weights, self.grid).reshape(b, 2 * d)


def expected_cell_xy(logits: Tensor) -> Tensor:
    """(B, 2) expected (x, y) in [-1, 1] of a softmax over a square grid of ``logits``
    (B, side * side), the target map's estimate of where the instructed object is."""
    side = int(round(logits.shape[1] ** 0.5))
    if side * side != logits.shape[1]:
        raise ValueError(f"a target map needs a square grid of cells, got {logits.shape[1]}")
    coords = torch.linspace(-1.0, 1.0, side, device=logits.device, dtype=logits.dtype)
    weights = torch.softmax(logits, dim=1).view(-1, side, side)
    return torch.stack([(weights.sum(1) * coords).sum(-1), (weights.sum(2) * coords).sum(-1)],
                       dim=-1)


class FiLMFusion(Fusion):
    def __init__(self, v_dim: int, l_dim: int, n_tokens: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.v = nn.Linear(v_dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.film = nn.Linear(l_dim, 2 * cfg.dim)
        nn.init.zeros_(self.film.weight)  # starts as the identity modulation
        nn.init.zeros_(self.film.bias)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
        self.keypoints = SpatialSoftmax(n_tokens)
        self.target_logit = nn.Linear(cfg.dim, 1)
        self.readout = nn.Sequential(nn.Linear(4 * cfg.dim + 2, cfg.dim), nn.GELU())
        self.landmark: LandmarkMap | None = None
        # both read cell positions off the token grid
        for option in ("landmark_map", "relation_layers"):
            if getattr(cfg, option) and not self.keypoints.valid:
                raise ValueError(f"fusion.{option} needs a square grid of image tokens, "
                                 f"got {n_tokens}")
        if cfg.landmark_map:
            self.landmark = LandmarkMap(l_dim, cfg.dim)
        self.relation = RelationLayers(cfg) if cfg.relation_layers else None

    def forward(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures) -> Tensor:
        return self.forward_with_maps(v_pooled, v_tokens, lang)[0]

    def forward_with_map(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures,
                         ) -> tuple[Tensor, Tensor | None]:
        return self.forward_with_maps(v_pooled, v_tokens, lang)[:2]

    def forward_with_maps(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures,
                          ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        tokens = self.norm(self.v(v_tokens))
        gamma, beta = self.film(lang.pooled).unsqueeze(1).chunk(2, dim=-1)
        modulated = tokens * (1 + gamma) + beta
        landmark_logits = None
        if self.landmark is not None:
            landmark_logits, relative = self.landmark(tokens, lang, self.keypoints.grid)
            modulated = modulated + relative
        if self.relation is not None:
            modulated = self.relation(modulated, self.keypoints.grid)
        x = self.out(modulated)
        pooled = nn.functional.gelu(x).mean(dim=1)
        logits = self.target_logit(x).squeeze(-1)  # (B, N): where the instructed object is
        weights = torch.softmax(logits, dim=1)
        attended = torch.einsum("bn,bnd->bd", weights, x)
        where = (weights @ self.keypoints.grid if self.keypoints.valid
                 else logits.new_zeros(logits.shape[0], 2))
        fused = self.readout(torch.cat([pooled, self.keypoints(x), attended, where], dim=-1))
        return fused, logits, landmark_logits


class LandmarkMap(nn.Module):
    """The landmark map and what the target map gets from it (see the module docstring).

    The landmark's expected position is detached: the landmark map learns from its own label,
    and the target map cannot bend it to suit itself. The instruction's scale on the relative
    position starts at zero, so a fresh model's target map is the plain FiLM one."""

    def __init__(self, l_dim: int, dim: int) -> None:
        super().__init__()
        self.film = nn.Linear(l_dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(dim, dim))
        self.logit = nn.Linear(dim, 1)
        self.relative = nn.Linear(2, dim)
        self.relative_scale = nn.Linear(l_dim, dim)
        nn.init.zeros_(self.relative_scale.weight)
        nn.init.zeros_(self.relative_scale.bias)

    def forward(self, tokens: Tensor, lang: LanguageFeatures, grid: Tensor
                ) -> tuple[Tensor, Tensor]:
        """``tokens`` (B, N, D) normalised image tokens; ``grid`` (N, 2) cell positions in
        [-1, 1]. Returns the landmark logits (B, N) and the (B, N, D) term added to the target
        path's modulated tokens."""
        gamma, beta = self.film(lang.pooled).unsqueeze(1).chunk(2, dim=-1)
        logits = self.logit(self.out(tokens * (1 + gamma) + beta)).squeeze(-1)
        where = torch.softmax(logits.detach(), dim=1) @ grid  # (B, 2)
        offsets = grid.unsqueeze(0) - where.unsqueeze(1)  # (B, N, 2)
        scale = self.relative_scale(lang.pooled).unsqueeze(1)
        return logits, self.relative(offsets.to(tokens.dtype)) * scale


class RelationLayers(nn.Module):
    """``fusion.relation_layers`` self-attention layers (pre-norm, residual) over FiLM's
    modulated tokens, each token first given its cell's position. The position term and each
    layer's output projection start at zero, so a fresh model's target map is the plain FiLM
    one. Attention only (FiLM's own MLP follows), in float32: on a CPU, bfloat16 attention
    over a few dozen tokens ran slower than float32 (fwd + bwd of a 96 x 64-token batch)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.position = nn.Linear(2, cfg.dim)
        nn.init.zeros_(self.position.weight)
        nn.init.zeros_(self.position.bias)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.dim) for _ in range(cfg.relation_layers))
        self.attention = nn.ModuleList(SelfAttention(cfg.dim, cfg.heads, cfg.dropout)
                                       for _ in range(cfg.relation_layers))
        for attention in self.attention:
            nn.init.zeros_(attention.proj.weight)
            nn.init.zeros_(attention.proj.bias)

    def forward(self, tokens: Tensor, grid: Tensor) -> Tensor:
        """``tokens`` (B, N, D), ``grid`` (N, 2) cell positions in [-1, 1] -> (B, N, D)."""
        with torch.autocast(tokens.device.type, enabled=False):
            x = tokens.float() + self.position(grid.float())
            for norm, attention in zip(self.norms, self.attention, strict=True):
                x = x + attention(norm(x))
        return x.to(tokens.dtype)


class CrossAttentionFusion(Fusion):
    def __init__(self, v_dim: int, l_dim: int, n_tokens: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.v, self.lang = nn.Linear(v_dim, cfg.dim), nn.Linear(l_dim, cfg.dim)
        self.v_pos = nn.Parameter(torch.zeros(1, n_tokens, cfg.dim))
        nn.init.trunc_normal_(self.v_pos, std=0.02)
        self.v_from_l = nn.ModuleList(
            CrossBlock(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.l_from_v = nn.ModuleList(
            CrossBlock(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.out = nn.Sequential(nn.LayerNorm(2 * cfg.dim), nn.Linear(2 * cfg.dim, cfg.dim),
                                 nn.GELU())

    def forward(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures) -> Tensor:
        v, t = self.v(v_tokens) + self.v_pos, self.lang(lang.tokens)
        for v_block, l_block in zip(self.v_from_l, self.l_from_v):
            v, t = v_block(v, t, lang.mask), l_block(t, v)
        return self.out(torch.cat([v.mean(dim=1), masked_mean(t, lang.mask)], dim=-1))


class EarlyFusion(Fusion):
    def __init__(self, v_dim: int, l_dim: int, n_tokens: int, cfg: FusionConfig) -> None:
        super().__init__()
        self.v, self.lang = nn.Linear(v_dim, cfg.dim), nn.Linear(l_dim, cfg.dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.v_pos = nn.Parameter(torch.zeros(1, n_tokens, cfg.dim))
        self.types = nn.Parameter(torch.zeros(2, cfg.dim))  # image, text
        for p in (self.cls, self.v_pos, self.types):
            nn.init.trunc_normal_(p, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, v_pooled: Tensor, v_tokens: Tensor, lang: LanguageFeatures) -> Tensor:
        b = v_tokens.shape[0]
        v = self.v(v_tokens) + self.v_pos + self.types[0]
        t = self.lang(lang.tokens) + self.types[1]
        x = torch.cat([self.cls.expand(b, -1, -1), v, t], dim=1)
        keep = torch.ones(b, 1 + v.shape[1], dtype=torch.bool, device=x.device)
        mask = torch.cat([keep, lang.mask], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x[:, 0])


FUSIONS: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "gated": GatedFusion,
    "film": FiLMFusion,
    "cross_attention": CrossAttentionFusion,
    "early": EarlyFusion,
}


def build_fusion(cfg: FusionConfig, v_dim: int, l_dim: int, n_tokens: int) -> Fusion:
    return FUSIONS[cfg.kind](v_dim, l_dim, n_tokens, cfg)
