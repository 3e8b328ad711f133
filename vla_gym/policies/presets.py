"""Named policy configs. ``get_config(name, **changes)`` returns a frozen :class:`VLAConfig`.

| preset        | vision               | language                | fusion          | head         |
|---------------|----------------------|-------------------------|-----------------|--------------|
| small         | CNN 64 px            | hashed-word embedding   | FiLM            | continuous   |
| seed          | patch ViT 64 px      | LSTM                    | concat          | continuous   |
| base          | patch ViT 96 px      | MiniLM (frozen, cached) | cross-attention | Gaussian NLL |
| rt1           | CNN 96 px            | MiniLM (frozen, cached) | FiLM            | 256 bins     |
| clip-b32      | CLIP ViT-B/32 224 px | CLIP text B/32 (frozen) | gated           | continuous   |
| clip-b32-lora | as clip-b32, with LoRA r=8 on both towers                                        |
| nav-small     | as small, for the mobile base (2-D ``base_velocity``, 5-D odometry state)        |

``clip-b32`` is random-init at the real B/32 sizes unless ``pretrained=PATH_OR_HUB_NAME`` is
given (the path of a ``CLIPModel`` / ``CLIPVisionModel`` checkpoint directory, used for both
towers and the tokenizer); ``base`` and ``rt1`` add grounding and contrastive auxiliary losses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from vla_gym.policies.configuration import (
    MINILM,
    AuxConfig,
    FinetuneConfig,
    FusionConfig,
    HeadConfig,
    LanguageConfig,
    VisionConfig,
    VLAConfig,
)


def default_grounding_classes() -> tuple[str, ...]:
    """Every 'colour shape' target name the tabletop scenes can produce (info['target'])."""
    from vla_gym.envs.language.vocabulary import COLOURS, SHAPES

    return tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)


def _aux() -> AuxConfig:
    return AuxConfig(grounding_weight=0.1, grounding_classes=default_grounding_classes(),
                     contrastive_weight=0.1)


def _small() -> VLAConfig:
    return VLAConfig(
        name="small",
        vision=VisionConfig(kind="cnn", image_size=64, width=32),
        language=LanguageConfig(kind="embedding", dim=64),
        fusion=FusionConfig(kind="film", dim=64),
        head=HeadConfig(kind="continuous", hidden=128),
        hidden=128,
    )


def _seed() -> VLAConfig:
    return VLAConfig(
        name="seed",
        vision=VisionConfig(kind="vit", image_size=64, patch_size=8, dim=128, depth=4, heads=4),
        language=LanguageConfig(kind="lstm", dim=128),
        fusion=FusionConfig(kind="concat", dim=128),
        hidden=256,
    )


def _base() -> VLAConfig:
    return VLAConfig(
        name="base",
        vision=VisionConfig(kind="vit", image_size=96, patch_size=8, dim=192, depth=6, heads=6),
        language=LanguageConfig(kind="hf", pretrained=MINILM),
        fusion=FusionConfig(kind="cross_attention", dim=192, heads=6, layers=2),
        head=HeadConfig(kind="continuous", loss="nll"),
        finetune=FinetuneConfig(language="frozen"),
        aux=_aux(),
    )


def _rt1() -> VLAConfig:
    return VLAConfig(
        name="rt1",
        vision=VisionConfig(kind="cnn", image_size=96, width=48),
        language=LanguageConfig(kind="hf", pretrained=MINILM),
        fusion=FusionConfig(kind="film", dim=192),
        head=HeadConfig(kind="bins", bins=256),
        finetune=FinetuneConfig(language="frozen"),
        aux=_aux(),
    )


def _clip_b32(pretrained: str | None = None, lora: bool = False) -> VLAConfig:
    mode = "lora" if lora else "frozen"
    return VLAConfig(
        name="clip-b32-lora" if lora else "clip-b32",
        vision=VisionConfig(kind="clip", image_size=224, pretrained=pretrained),
        language=LanguageConfig(kind="clip_text", pretrained=pretrained, max_tokens=77),
        fusion=FusionConfig(kind="gated", dim=512),
        head=HeadConfig(kind="continuous", hidden=512),
        finetune=FinetuneConfig(vision=mode, language=mode),
        hidden=512,
    )


def _nav_small() -> VLAConfig:
    return _small().replace(name="nav-small", action="base_velocity", state_dim=5)


PRESETS: dict[str, Callable[..., VLAConfig]] = {
    "small": _small,
    "seed": _seed,
    "base": _base,
    "rt1": _rt1,
    "clip-b32": _clip_b32,
    "clip-b32-lora": lambda pretrained=None: _clip_b32(pretrained, lora=True),
    "nav-small": _nav_small,
}


def get_config(name: str, pretrained: str | None = None, **changes: Any) -> VLAConfig:
    """The preset ``name`` with ``changes`` applied (sections take dicts of field changes).

    ``pretrained`` is accepted by the CLIP presets only.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    if pretrained is not None and not name.startswith("clip"):
        raise ValueError(f"preset {name!r} takes no 'pretrained'; set the encoder's "
                         "config instead (vision={'pretrained': ...})")
    config = PRESETS[name](pretrained) if pretrained is not None else PRESETS[name]()
    return config.replace(**changes) if changes else config


def preset_table() -> list[dict[str, Any]]:
    """One row per preset (for docs and the benchmark's report)."""
    rows = []
    for name in PRESETS:
        c = get_config(name)
        rows.append({"preset": name, "vision": c.vision.kind, "image_size": c.vision.image_size,
                     "language": c.language.kind, "fusion": c.fusion.kind,
                     "head": c.head.kind, "finetune": dataclasses.asdict(c.finetune)})
    return rows
