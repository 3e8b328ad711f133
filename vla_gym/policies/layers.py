"""Transformer building blocks shared by the patch ViT and the fusion modules.

Attention uses plain ``nn.Linear`` projections named ``qkv`` / ``q`` / ``kv`` / ``proj`` so
LoRA (``peft``) can target them and int8 dynamic quantisation covers them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0,
        ) -> nn.Sequential:
    """``layers`` Linear layers with GELU (and dropout) between them."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden), nn.GELU()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _key_mask(mask: Tensor | None) -> Tensor | None:
    """(B, Nk) bool, True = attend -> broadcastable SDPA mask."""
    return None if mask is None else mask[:, None, None, :]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(mask), dropout_p=p)
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        q = _split_heads(self.q(x), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.kv(context).chunk(2, dim=-1))
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(mask), dropout_p=p)
        return self.proj(_merge_heads(out))


class Block(nn.Module):
    """Pre-norm transformer block (self-attention + MLP)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.mlp = mlp(dim, 4 * dim, dim, dropout=dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Pre-norm cross-attention block: ``x`` attends to ``context``, then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_x, self.norm_c = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads, dropout)
        self.mlp = mlp(dim, 4 * dim, dim, dropout=dropout)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_x(x), self.norm_c(context), mask)
        return x + self.mlp(self.norm2(x))


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the tokens where ``mask`` is True; plain mean when ``mask`` is None."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

