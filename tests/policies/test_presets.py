"""Every preset builds, trains a step on a real env batch and round-trips through disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_helpers import obs_only

from vla_gym.policies import VLAPolicy
from vla_gym.policies.finetune import trainable_parameters
from vla_gym.policies.presets import PRESETS, get_config

FAST = ["small", "seed", "base", "rt1", "nav-small"]
CLIP = ["clip-b32", "clip-b32-lora"]


def run_preset(name: str, batch: dict, tmp_path) -> VLAPolicy:
    policy = VLAPolicy.from_preset(name)
    policy.set_normalization(actions=batch["action"], states=batch["state"])
    loss, _ = policy(batch)
    loss.backward()
    assert torch.isfinite(loss)
    actions = policy.predict(obs_only(batch))
    assert actions.shape == (len(batch["instruction"]), policy.config.contract.dim)
    policy.save_pretrained(tmp_path)
    loaded = VLAPolicy.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.predict(obs_only(batch)), actions)
    for name_, value in policy.normalizer.state_dict().items():
        assert torch.equal(loaded.normalizer.state_dict()[name_], value), name_
    return loaded


def test_preset_lists_are_complete():
    assert set(FAST) | set(CLIP) == set(PRESETS)


@pytest.mark.parametrize("name", FAST)
def test_preset(name, tabletop_batch, nav_batch, tmp_path):
    batch = nav_batch if name.startswith("nav") else tabletop_batch
    run_preset(name, batch, tmp_path)


def test_minilm_preset_is_pretrained_frozen_and_self_contained(tabletop_batch, tmp_path):
    loaded = run_preset("base", tabletop_batch, tmp_path)
    assert loaded.config.language.pretrained is None  # weights now live in the checkpoint
    assert (tmp_path / "tokenizer").is_dir()
    language = loaded.trunk.language
    assert trainable_parameters(language)[0] == 0 and not language.training
    # a pretrained sentence encoder puts paraphrases closer than different targets
    texts = ["pick up the red cube", "lift the red block", "open the window"]
    with torch.no_grad():
        ids, mask = language.tokenize(texts)
        pooled = torch.nn.functional.normalize(language(ids, mask).pooled, dim=-1)
    sims = pooled @ pooled.T
    assert sims[0, 1] > sims[0, 2] + 0.2


@pytest.mark.slow
@pytest.mark.parametrize("name", CLIP)
def test_clip_b32_preset_random_init(name, tabletop_batch, tmp_path):
    config = get_config(name)
    assert config.vision.pretrained is None
    batch = {k: (v[:2] if not isinstance(v, list) else v[:2]) for k, v in tabletop_batch.items()}
    loaded = run_preset(name, batch, tmp_path)
    vision = loaded.trunk.vision.model.config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (768, 12, 32)
    assert loaded.trunk.language.model.config.hidden_size == 512
    for tower in (loaded.trunk.vision, loaded.trunk.language):
        trainable, total = trainable_parameters(tower)
        assert total > 60_000_000
        assert (trainable > 0) == (name == "clip-b32-lora")
        assert trainable < 0.01 * total


def test_hf_language_defaults_to_the_bundled_minilm_and_takes_lora(tabletop_batch):
    from policy_helpers import tiny_config

    policy = VLAPolicy(tiny_config(language={"kind": "hf"}, finetune={"language": "lora"}))
    language = policy.trunk.language
    assert language.model.config.hidden_size == 384 and language.hf_tokenizer is not None
    trainable, total = trainable_parameters(language)
    assert 0 < trainable < 0.01 * total
    loss, _ = policy(tabletop_batch)
    loss.backward()
