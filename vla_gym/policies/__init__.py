"""VLA policies: encoders, fusion, heads, ``VLAPolicy``, checkpoints, SB3 adapter, loaders.

Importing this package is cheap (configs only); torch, transformers, peft and
stable-baselines3 load on first use of the names that need them.
"""

from __future__ import annotations

from vla_gym.lazy import lazy_getattr
from vla_gym.policies.configuration import (
    AuxConfig,
    FinetuneConfig,
    FusionConfig,
    HeadConfig,
    LanguageConfig,
    UncertaintyConfig,
    VisionConfig,
    VLAConfig,
)

# name -> module that defines it (imported on first access)
_LAZY = {
    "VLAPolicy": "vla_gym.policies.policy",
    "PolicyOutput": "vla_gym.policies.policy",
    "ObservationError": "vla_gym.policies.preprocessing",
    "CheckpointError": "vla_gym.policies.checkpoint",
    "PRESETS": "vla_gym.policies.presets",
    "get_config": "vla_gym.policies.presets",
    "load_batch_policy": "vla_gym.policies.loader",
    "BatchPolicyAdapter": "vla_gym.policies.loader",
    "quantize_int8": "vla_gym.policies.inference",
    "compile_policy": "vla_gym.policies.inference",
    "InstructionToBox": "vla_gym.policies.sb3",
    "VLAFeaturesExtractor": "vla_gym.policies.sb3",
    "make_sb3_env": "vla_gym.policies.sb3",
    "sb3_policy_kwargs": "vla_gym.policies.sb3",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "AuxConfig",
    "FinetuneConfig",
    "FusionConfig",
    "HeadConfig",
    "LanguageConfig",
    "UncertaintyConfig",
    "VLAConfig",
    "VisionConfig",
    *_LAZY,
]
