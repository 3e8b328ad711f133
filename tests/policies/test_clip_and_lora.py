"""CLIP towers loaded by path (tiny random-init checkpoints), LoRA and frozen fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_helpers import obs_only, tiny_config

from vla_gym.policies import VLAPolicy, get_config, quantize_int8
from vla_gym.policies.finetune import trainable_parameters

pytest.importorskip("transformers")
pytest.importorskip("peft")


def clip_config(tiny_clip, finetune: str = "frozen", **changes):
    return tiny_config(
        vision={"kind": "clip", "image_size": 64, "pretrained": str(tiny_clip["vision"])},
        language={"kind": "clip_text", "pretrained": str(tiny_clip["text"])},
        finetune={"vision": finetune, "language": finetune}, **changes)


def train_steps(policy: VLAPolicy, batch: dict, steps: int) -> list[float]:
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss, _ = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("fusion", ["gated", "film", "cross_attention", "early"])
def test_clip_towers_by_path(fusion, tiny_clip, tabletop_batch, tmp_path):
    policy = VLAPolicy(clip_config(tiny_clip, fusion={"kind": fusion}))
    import transformers

    reference = transformers.CLIPVisionModel.from_pretrained(tiny_clip["vision"]).state_dict()
    loaded = policy.trunk.vision.model.state_dict()
    assert reference.keys() == loaded.keys()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items())
    train_steps(policy, tabletop_batch, 2)
    actions = policy.predict(obs_only(tabletop_batch))
    policy.save_pretrained(tmp_path)
    again = VLAPolicy.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again.predict(obs_only(tabletop_batch)), actions)


def test_frozen_towers_keep_their_weights(tiny_clip, tabletop_batch):
    policy = VLAPolicy(clip_config(tiny_clip))
    before = {k: v.clone() for k, v in policy.trunk.vision.state_dict().items()}
    train_steps(policy, tabletop_batch, 2)
    for key, value in policy.trunk.vision.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not policy.trunk.vision.training  # frozen encoders stay in eval mode


def test_lora_trains_adapters_only_and_round_trips(tiny_clip, tabletop_batch, tmp_path):
    policy = VLAPolicy(clip_config(tiny_clip, finetune="lora"))
    for tower in (policy.trunk.vision, policy.trunk.language):
        trainable, total = trainable_parameters(tower)
        assert 0 < trainable < total
        names = [n for n, p in tower.named_parameters() if p.requires_grad]
        assert all("lora_" in n for n in names)
    base = {n: p.clone() for n, p in policy.trunk.vision.named_parameters() if "lora_" not in n}
    train_steps(policy, tabletop_batch, 3)
    for name, param in policy.trunk.vision.named_parameters():
        if name in base:
            assert torch.equal(param, base[name]), name
    actions = policy.predict(obs_only(tabletop_batch))
    policy.save_pretrained(tmp_path)
    loaded = VLAPolicy.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.predict(obs_only(tabletop_batch)), actions)
    merged = quantize_int8(loaded)  # merges the adapters, then quantises
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert np.abs(merged.predict(obs_only(tabletop_batch)) - actions).max() < 0.05


def test_lora_on_the_patch_vit(tabletop_batch):
    policy = VLAPolicy(tiny_config(vision={"kind": "vit", "depth": 2},
                                   finetune={"vision": "lora", "lora_rank": 2}))
    trainable, total = trainable_parameters(policy.trunk.vision)
    assert 0 < trainable < total / 4
    assert train_steps(policy, tabletop_batch, 2)


def test_clip_preset_loads_a_whole_clip_checkpoint(tiny_clip_model, tabletop_batch, tmp_path):
    config = get_config("clip-b32", pretrained=str(tiny_clip_model),
                        vision={"image_size": 64}, fusion={"dim": 32}, hidden=32,
                        head={"hidden": 32})
    policy = VLAPolicy(config)
    assert policy.trunk.vision.model.config.hidden_size == 32
    assert policy.trunk.language.hf_tokenizer is not None
    loss, _ = policy(tabletop_batch)
    loss.backward()
    policy.save_pretrained(tmp_path)
    np.testing.assert_array_equal(VLAPolicy.from_pretrained(tmp_path).predict(
        obs_only(tabletop_batch)), policy.predict(obs_only(tabletop_batch)))


def test_unreachable_pretrained_source_says_what_to_pass(tmp_path):
    config = tiny_config(vision={"kind": "clip", "pretrained": str(tmp_path / "nope")})
    with pytest.raises(OSError, match="local model directory"):
        VLAPolicy(config)


def test_clip_text_needs_a_tokenizer_or_hashed(tiny_clip, tmp_path):
    import shutil

    bare = tmp_path / "bare_text"
    shutil.copytree(tiny_clip["text"], bare)
    for f in bare.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            f.unlink()
    config = tiny_config(language={"kind": "clip_text", "pretrained": str(bare)})
    with pytest.raises(ValueError, match="tokenizer"):
        VLAPolicy(config)
    hashed = VLAPolicy(tiny_config(language={"kind": "clip_text", "pretrained": str(bare),
                                             "tokenizer": "hashed"}))
    assert hashed.trunk.language.hf_tokenizer is None
