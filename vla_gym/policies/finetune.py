"""Parameter-efficient fine-tuning: frozen encoders, or LoRA adapters through ``peft``.

A frozen encoder keeps its weights and stays in eval mode (no dropout noise), so its
instruction embeddings can be cached. LoRA freezes the encoder and adds rank-``r`` adapters to
its attention projections; the adapters travel in the checkpoint like any other weight.
"""

from __future__ import annotations

from torch import nn

from vla_gym.policies._optional import require
from vla_gym.policies.configuration import FinetuneConfig


def apply_finetune(encoder: nn.Module, mode: str, cfg: FinetuneConfig) -> None:
    """Set ``encoder``'s trainable weights for ``mode`` ('full', 'frozen' or 'lora')."""
    if mode == "full":
        return
    encoder.requires_grad_(False)
    if mode == "frozen":
        encoder.eval()
        return
    peft = require("peft")
    targets = list(cfg.lora_targets or getattr(encoder, "lora_targets", ()))
    if not targets:
        raise ValueError(f"{type(encoder).__name__} names no LoRA target modules; set "
                         "finetune.lora_targets")
    target = getattr(encoder, "model", encoder)  # HF encoders keep the model in ``.model``
    lora = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                           lora_dropout=cfg.lora_dropout, target_modules=targets)
    try:
        peft.inject_adapter_in_model(lora, target)
    except ValueError as exc:
        raise ValueError(f"LoRA found none of the target modules {targets} in "
                         f"{type(encoder).__name__}: {exc}") from exc


def is_frozen(module: nn.Module) -> bool:
    """True when no weight of ``module`` trains."""
    return not any(p.requires_grad for p in module.parameters())


def trainable_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total
