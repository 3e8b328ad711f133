"""Learning works (overfit a handful of samples); instruction caching; uncertainty + fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_helpers import obs_only, tiny_config

from vla_gym.policies import VLAPolicy, get_config


def overfit(policy: VLAPolicy, batch: dict, steps: int, lr: float = 3e-3) -> tuple[float, float]:
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    policy.train()
    first = last = None
    for _ in range(steps):
        loss, _ = policy(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    return first, last


@pytest.mark.parametrize("head", ["continuous", "bins"])
def test_small_preset_overfits_a_handful_of_samples(head, tabletop_batch):
    policy = VLAPolicy(get_config("small", head={"kind": head, "bins": 32}))
    policy.set_normalization(actions=tabletop_batch["action"], states=tabletop_batch["state"])
    first, last = overfit(policy, tabletop_batch, steps=120)
    assert last < 0.1 * first, (first, last)
    predicted = policy.predict(obs_only(tabletop_batch))
    tolerance = 0.1 if head == "continuous" else 2.5 / 31  # within a couple of bins
    assert np.abs(predicted - tabletop_batch["action"]).max() < tolerance


def test_instruction_embeddings_are_cached_per_distinct_instruction(tabletop_batch):
    policy = VLAPolicy(tiny_config()).eval()
    cache = policy.trunk.cache
    obs = obs_only(tabletop_batch)
    first = policy.predict(obs)
    distinct = len(set(obs["instruction"]))
    assert (cache.misses, len(cache.entries)) == (distinct, distinct)
    again = policy.predict(obs)
    assert cache.misses == distinct and cache.hits >= len(obs["instruction"])
    np.testing.assert_array_equal(first, again)
    # a batch with the same instruction repeated is encoded once
    same = {**obs, "instruction": [obs["instruction"][0]] * len(obs["instruction"])}
    policy.predict(same)
    assert cache.misses == distinct


def test_cached_and_fresh_embeddings_agree_and_training_invalidates(tabletop_batch):
    policy = VLAPolicy(tiny_config(language={"kind": "lstm"}))
    obs = obs_only(tabletop_batch)
    cached = policy.predict(obs)
    policy.trunk.cache.clear()
    with torch.no_grad():
        fresh = policy.trunk.language(*policy.trunk.language.tokenize(obs["instruction"]))
    cached_feats = policy.trunk.cache.lookup(policy.trunk.language, obs["instruction"])
    torch.testing.assert_close(cached_feats.pooled, fresh.pooled)
    overfit(policy, tabletop_batch, steps=2)  # trainable encoder: weights change
    policy.eval()
    policy.predict(obs)
    assert policy.trunk.cache.misses == 3 * len(set(obs["instruction"]))  # re-encoded
    assert not np.array_equal(policy.predict(obs), cached)


def test_training_a_frozen_encoder_policy_uses_the_cache(tabletop_batch):
    policy = VLAPolicy(tiny_config(finetune={"language": "frozen"}))
    policy.predict(obs_only(tabletop_batch))  # filled under inference_mode
    first, last = overfit(policy, tabletop_batch, steps=3)
    assert np.isfinite(last) and policy.trunk.cache.hits > 0


@pytest.mark.parametrize("method", ["ensemble", "mc_dropout"])
def test_uncertainty_is_exposed_and_triggers_the_fallback(method, tabletop_batch):
    obs = obs_only(tabletop_batch)
    config = tiny_config(uncertainty={"method": method, "members": 4, "dropout": 0.3})
    out = VLAPolicy(config).predict_with_uncertainty(obs)
    assert out.uncertainty.shape == (len(obs["instruction"]),)
    assert (out.uncertainty > 0).all() and not out.fallback.any()
    np.testing.assert_array_equal(VLAPolicy(config).predict_with_uncertainty(obs).action,
                                  out.action)  # seeded: repeatable
    stop = config.replace(uncertainty={"threshold": 0.0})
    safe = VLAPolicy(stop).predict_with_uncertainty(obs)
    assert safe.fallback.all() and (safe.action == 0).all()
    custom = config.replace(uncertainty={"threshold": 0.0, "fallback": (0,) * 6 + (-1,)})
    np.testing.assert_array_equal(VLAPolicy(custom).predict(obs)[:, 6], -1.0)


def test_discrete_ensemble_uncertainty_is_disagreement(tabletop_batch):
    config = tiny_config(head={"kind": "discrete"}, uncertainty={"method": "ensemble"})
    out = VLAPolicy(config).predict_with_uncertainty(obs_only(tabletop_batch))
    assert ((0 <= out.uncertainty) & (out.uncertainty <= 1)).all()
    assert out.action.dtype == np.int64


def test_predict_does_not_leave_the_policy_in_eval_mode(tabletop_batch):
    policy = VLAPolicy(tiny_config()).train()
    policy.predict(obs_only(tabletop_batch))
    assert policy.training


def test_target_cells_map_image_positions_and_ignore_unseen_targets():
    from vla_gym.policies.heads import target_cells

    pixels = torch.tensor([[0.0, 0.0], [0.99, 0.99], [0.30, 0.60], [float("nan")] * 2,
                           [1.2, 0.5], [-0.1, 0.5]])
    assert target_cells(pixels, 8).tolist() == [0, 63, 4 * 8 + 2, -100, -100, -100]


def test_film_target_map_learns_where_the_target_is(tabletop_batch):
    """The grounding loss supervises the FiLM fusion's target map with the target's image
    cell; on a handful of samples it fits every one of them."""
    from vla_gym.policies.presets import default_grounding_classes

    policy = VLAPolicy(get_config("small", aux={"grounding_weight": 1.0,
                                                "grounding_classes": default_grounding_classes()}))
    policy.set_normalization(actions=tabletop_batch["action"], states=tabletop_batch["state"])
    _, before = policy(tabletop_batch)
    overfit(policy, tabletop_batch, steps=150)
    policy.eval()
    with torch.no_grad():
        _, after = policy(tabletop_batch)
    assert before["grounding_cell_accuracy"] < 0.5
    assert after["grounding_cell_accuracy"] == 1.0, after
    assert after["grounding_pos_error_m"] < before["grounding_pos_error_m"]


def test_bilinear_cell_weights_are_a_distribution_centred_on_the_position():
    from vla_gym.policies.heads import bilinear_cell_weights

    side = 8
    pixels = torch.tensor([[0.30, 0.60], [0.0625, 0.0625], [0.99, 0.01]])
    weights = bilinear_cell_weights(pixels, side)
    assert torch.allclose(weights.sum(-1), torch.ones(3))
    index = torch.arange(side * side)
    cols, rows = (index % side).float(), (index // side).float()
    expected = torch.stack([(weights * cols).sum(-1), (weights * rows).sum(-1)], -1)
    # cell-centre coordinates: pixel * side - 0.5, clamped to the grid
    assert torch.allclose(expected[0], torch.tensor([1.9, 4.3]), atol=1e-5)
    assert torch.allclose(expected[1], torch.tensor([0.0, 0.0]), atol=1e-5)
    assert torch.allclose(expected[2], torch.tensor([7.0, 0.0]), atol=1e-5)


def test_binary_gripper_commands_the_gripper_fully_open_or_closed(tabletop_batch):
    obs = obs_only(tabletop_batch)
    config = tiny_config(uncertainty={"method": "ensemble", "members": 2})
    plain = VLAPolicy(config).eval()
    binary = VLAPolicy(config.replace(head={"binary_gripper": True})).eval()
    binary.load_state_dict(plain.state_dict())
    raw, out = plain.predict(obs), binary.predict(obs)
    np.testing.assert_array_equal(out[:, :6], raw[:, :6])
    np.testing.assert_array_equal(out[:, 6], np.where(raw[:, 6] > 0, 1.0, -1.0))
    assert set(np.unique(raw[:, 6])) - {-1.0, 1.0}  # the raw predictions were in between
    # the fallback's own command stands (a hold at 0 is not turned into "open")
    stop = VLAPolicy(config.replace(head={"binary_gripper": True},
                                    uncertainty={"threshold": 0.0}))
    np.testing.assert_array_equal(stop.predict(obs), 0.0)


@pytest.mark.parametrize("changes", [{"action": "base_velocity"},
                                     {"head": {"kind": "discrete", "binary_gripper": True}}])
def test_binary_gripper_needs_a_gripper_and_a_continuous_action(changes):
    head = changes.pop("head", {"binary_gripper": True})
    with pytest.raises(ValueError, match="binary_gripper needs .*'grip' dimension"):
        get_config("small", head=head, **changes)
