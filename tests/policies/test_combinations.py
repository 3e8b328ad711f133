"""Every fusion x head, every encoder pair: forward, backward and a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_helpers import obs_only, tiny_config

from vla_gym.policies import VLAPolicy
from vla_gym.policies.configuration import FUSION_KINDS

HEADS = {
    "mse": {"kind": "continuous", "loss": "mse"},
    "nll": {"kind": "continuous", "loss": "nll"},
    "bins": {"kind": "bins"},
    "discrete": {"kind": "discrete", "num_actions": 20},
}


def training_batch(batch: dict, head_kind: str) -> dict:
    if head_kind != "discrete":
        return batch
    return {**batch, "action": np.arange(len(batch["instruction"])) % 20}


def check_step_and_round_trip(policy: VLAPolicy, batch: dict, tmp_path) -> np.ndarray:
    loss, metrics = policy(batch)
    assert torch.isfinite(loss) and metrics["loss"] == pytest.approx(loss.item())
    loss.backward()
    trained = [p for p in policy.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained), "a trainable weight got no grad"
    actions = policy.predict(obs_only(batch))
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded.predict(obs_only(batch)), actions)
    assert loaded.config == VLAPolicy.from_pretrained(tmp_path / "ckpt").config
    return actions


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_fusion_and_head(fusion, head, tabletop_batch, tmp_path):
    config = tiny_config(fusion={"kind": fusion}, head=HEADS[head])
    batch = training_batch(tabletop_batch, HEADS[head]["kind"])
    actions = check_step_and_round_trip(VLAPolicy(config), batch, tmp_path)
    b = len(batch["instruction"])
    if head == "discrete":
        assert actions.shape == (b, 1) and actions.dtype == np.int64
        assert ((0 <= actions) & (actions < 20)).all()
    else:
        assert actions.shape == (b, 7) and actions.dtype == np.float32
        assert np.abs(actions).max() <= 1.0


@pytest.mark.parametrize("language", ["embedding", "lstm"])
@pytest.mark.parametrize("vision", ["cnn", "vit"])
def test_learned_encoders(vision, language, tabletop_batch, tmp_path):
    config = tiny_config(vision={"kind": vision}, language={"kind": language},
                         fusion={"kind": "cross_attention"})
    check_step_and_round_trip(VLAPolicy(config), tabletop_batch, tmp_path)


def test_early_fusion_over_raw_patches(tabletop_batch, tmp_path):
    config = tiny_config(vision={"kind": "vit", "depth": 0}, fusion={"kind": "early"})
    check_step_and_round_trip(VLAPolicy(config), tabletop_batch, tmp_path)


def test_base_velocity_contract_on_a_nav_env(nav_batch, tmp_path):
    config = tiny_config(action="base_velocity", state_dim=5)
    actions = check_step_and_round_trip(VLAPolicy(config), nav_batch, tmp_path)
    assert actions.shape == (len(nav_batch["instruction"]), 2)


def test_auxiliary_heads_report_metrics(tabletop_batch, grounding_classes, tmp_path):
    config = tiny_config(aux={"grounding_weight": 1.0, "grounding_classes": grounding_classes,
                              "contrastive_weight": 1.0})
    policy = VLAPolicy(config)
    _, metrics = policy(tabletop_batch)
    for key in ("grounding_loss", "grounding_pos_error_m", "grounding_accuracy",
                "contrastive_loss", "contrastive_accuracy"):
        assert key in metrics
    assert all(t in grounding_classes for t in tabletop_batch["target"])
    check_step_and_round_trip(policy, tabletop_batch, tmp_path)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b = VLAPolicy(tiny_config()), VLAPolicy(tiny_config())
    c = VLAPolicy(tiny_config(seed=1))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    VLAPolicy(tiny_config())
    assert torch.equal(torch.rand(3), expected)
