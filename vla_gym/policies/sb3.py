"""stable-baselines3 adapter: VLA encoders as a features extractor over a Box-only env.

SB3 cannot store a gymnasium ``Text`` space, so :class:`InstructionToBox` replaces the
instruction with either fixed-width token ids + mask (``mode="tokens"``: the extractor's
language encoder trains with the policy) or a cached sentence embedding (``mode="embedding"``:
a frozen encoder such as MiniLM runs once per distinct instruction, not once per step).
:class:`VLAFeaturesExtractor` then runs the same :class:`~vla_gym.policies.model.VLATrunk`
a :class:`~vla_gym.policies.policy.VLAPolicy` holds::

    env = make_sb3_env("vla_gym/TabletopPick-v0", config="small", image_size=64)
    model = PPO("MultiInputPolicy", env, policy_kwargs=sb3_policy_kwargs("small"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from vla_gym.policies._optional import require
from vla_gym.policies.configuration import VLAConfig
from vla_gym.policies.encoders.language import LanguageEncoder, LanguageFeatures, build_language
from vla_gym.policies.model import VLATrunk
from vla_gym.policies.preprocessing import check_instructions, resize
from vla_gym.types import IMAGE, INSTRUCTION, STATE

IDS, MASK, EMBEDDING = "instruction_ids", "instruction_mask", "instruction_embedding"
MODES = ("tokens", "embedding")


def _config(config: VLAConfig | str) -> VLAConfig:
    if isinstance(config, VLAConfig):
        return config
    from vla_gym.policies.presets import get_config

    return get_config(config)


class InstructionToBox(gym.ObservationWrapper):
    """Replaces the ``instruction`` Text observation with Box observations SB3 can store."""

    def __init__(self, env: gym.Env, config: VLAConfig | str = "small",
                 mode: str = "tokens") -> None:
        super().__init__(env)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or INSTRUCTION not in space.spaces:
            raise ValueError(f"InstructionToBox needs a Dict observation space with "
                             f"'{INSTRUCTION}', got {space}")
        self.config, self.mode = _config(config), mode
        self.encoder = build_language(self.config.language).eval()
        self.encoder.requires_grad_(False)
        self._cache: dict[str, tuple[np.ndarray, ...]] = {}
        subspaces = {k: v for k, v in space.spaces.items() if k != INSTRUCTION}
        self.observation_space = spaces.Dict({**subspaces, **self._instruction_spaces()})

    def _instruction_spaces(self) -> dict[str, spaces.Space]:
        if self.mode == "embedding":
            dim = self.encoder.out_dim
            return {EMBEDDING: spaces.Box(-np.inf, np.inf, (dim,), np.float32)}
        length = self.encoder.max_tokens
        vocab = _vocab_size(self.encoder)
        return {IDS: spaces.Box(0, vocab - 1, (length,), np.int64),
                MASK: spaces.Box(0, 1, (length,), np.int8)}

    def _encode(self, text: str) -> tuple[np.ndarray, ...]:
        if text not in self._cache:
            with torch.inference_mode():
                ids, mask = self.encoder.tokenize([text])
                if self.mode == "embedding":
                    pooled = self.encoder(ids, mask).pooled[0]
                    self._cache[text] = (pooled.float().cpu().numpy(),)
                else:
                    width = self.encoder.max_tokens
                    padded = np.zeros((2, width), dtype=np.int64)
                    padded[0, : ids.shape[1]] = ids[0, :width].cpu().numpy()
                    padded[1, : ids.shape[1]] = mask[0, :width].cpu().numpy()
                    self._cache[text] = (padded[0], padded[1].astype(np.int8))
        return self._cache[text]

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        text = check_instructions(observation[INSTRUCTION])[0]
        out = {k: v for k, v in observation.items() if k != INSTRUCTION}
        values = self._encode(text)
        keys = (EMBEDDING,) if self.mode == "embedding" else (IDS, MASK)
        out.update(zip(keys, values))
        return out


def _vocab_size(encoder: LanguageEncoder) -> int:
    if encoder.hf_tokenizer is not None:
        return len(encoder.hf_tokenizer)
    assert encoder.hashed is not None
    return encoder.hashed.vocab_size


class PrecomputedLanguage(LanguageEncoder):
    """Stands in for the language encoder when the env already gives a sentence embedding."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        nn.Module.__init__(self)
        self.proj = nn.Linear(in_dim, out_dim)
        self.out_dim = out_dim

    def embed(self, embedding: Tensor) -> LanguageFeatures:
        pooled = self.proj(embedding)
        mask = torch.ones(pooled.shape[0], 1, dtype=torch.bool, device=pooled.device)
        return LanguageFeatures(pooled, pooled[:, None], mask)


def _base_extractor() -> type:
    return require("stable_baselines3.common.torch_layers").BaseFeaturesExtractor


class VLAFeaturesExtractor(_base_extractor()):  # type: ignore[misc]
    """SB3 features extractor: the VLA trunk over image, instruction Boxes and state.

    ``images_scaled``: SB3 divides image observations by 255 unless the policy was built with
    ``normalize_images=False``; say which so pixels end up in [0, 1] either way.
    """

    def __init__(self, observation_space: spaces.Dict, config: VLAConfig | str = "small",
                 images_scaled: bool = True) -> None:
        config = _config(config)
        missing = [view for view in config.views if view not in observation_space.spaces]
        if missing:
            raise ValueError(f"VLAFeaturesExtractor needs the image observation(s) {missing} "
                             f"(obs_mode='rgb', cameras={config.cameras}); got keys "
                             f"{sorted(observation_space.spaces)}")
        super().__init__(observation_space, features_dim=config.hidden)
        self.config, self.images_scaled = config, images_scaled
        image_shape = observation_space[IMAGE].shape or ()
        self.channels_first = len(image_shape) == 3 and image_shape[0] == 3
        self.embedding = EMBEDDING in observation_space.spaces
        language = None
        if self.embedding:
            (dim,) = observation_space[EMBEDDING].shape or (0,)
            language = PrecomputedLanguage(dim, config.language.dim)
        elif IDS not in observation_space.spaces:
            raise ValueError("wrap the env with InstructionToBox (make_sb3_env does) so the "
                             f"instruction arrives as '{IDS}'/'{MASK}' or '{EMBEDDING}'")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.trunk = VLATrunk(config, language=language)
        vision = self.trunk.vision
        self.register_buffer("pixel_mean", torch.tensor(vision.mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(vision.std).view(1, 3, 1, 1))

    def _images(self, images: Tensor) -> Tensor:
        if not self.channels_first:
            images = images.permute(0, 3, 1, 2)
        images = images.float() if self.images_scaled else images.float() / 255.0
        images = resize(images, self.config.vision.image_size)
        return (images - self.pixel_mean) / self.pixel_std

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        if self.embedding:
            embedder = cast(PrecomputedLanguage, self.trunk.language)
            lang = embedder.embed(observations[EMBEDDING].float())
        else:
            mask = observations[MASK] > 0.5
            lang = self.trunk.language(observations[IDS].long(), mask)
        state = observations.get(STATE) if self.config.use_state else None
        extra = [self._images(observations[view]) for view in self.config.extra_views]
        return self.trunk(self._images(observations[IMAGE]), lang, state, extra).features


def make_sb3_env(env_id: str, config: VLAConfig | str = "small", mode: str = "tokens",
                 n_envs: int = 1, seed: int = 0, **env_kwargs: Any) -> Any:
    """An SB3 ``VecEnv`` of ``env_id`` with the instruction turned into Boxes."""
    env_util = require("stable_baselines3.common.env_util")
    cfg = _config(config)
    wrapper: Callable[[gym.Env], gym.Env] = lambda e: InstructionToBox(e, cfg, mode)  # noqa: E731
    return env_util.make_vec_env(env_id, n_envs=n_envs, seed=seed, wrapper_class=wrapper,
                                 env_kwargs=env_kwargs)


def sb3_policy_kwargs(config: VLAConfig | str = "small", **extra: Any) -> dict[str, Any]:
    """``policy_kwargs`` for PPO / SAC ``"MultiInputPolicy"`` with the VLA extractor."""
    return {"features_extractor_class": VLAFeaturesExtractor,
            "features_extractor_kwargs": {"config": _config(config)},
            "share_features_extractor": True, **extra}
