"""FiLM's relation layers: self-attention over the modulated tokens before the target map."""

from __future__ import annotations

import pytest
import torch

from vla_gym.policies import VLAPolicy
from vla_gym.policies.configuration import FusionConfig
from vla_gym.policies.encoders.language import LanguageFeatures
from vla_gym.policies.fusion import FiLMFusion

SIDE = 4  # a 4 x 4 grid of image tokens
DIM = 32


def test_relation_layers_need_film_and_a_count():
    with pytest.raises(ValueError, match="relation_layers needs fusion.kind='film'"):
        FusionConfig(kind="concat", relation_layers=1)
    with pytest.raises(ValueError, match="relation_layers must be an integer >= 0"):
        FusionConfig(relation_layers=-1)
    with pytest.raises(ValueError, match="square grid"):
        FiLMFusion(DIM, DIM, 10, FusionConfig(dim=DIM, relation_layers=1))


def test_a_fresh_policy_with_relation_layers_maps_as_plain_film():
    """The relation blocks start as the identity: copying a plain FiLM policy's weights into
    one with relation layers gives the same target map and action."""
    plain = VLAPolicy.from_preset("small").eval()
    related = VLAPolicy.from_preset("small", fusion={"relation_layers": 2}).eval()
    missing = related.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".relation." in key for key in missing)
    batch = {"image": torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8).numpy(),
             "instruction": ["pick up the red cube", "lift the blue ball"],
             "state": torch.randn(2, plain.config.state_dim).numpy()}
    with torch.no_grad():
        a = plain.features(plain.preprocess(batch))
        b = related.features(related.preprocess(batch))
    torch.testing.assert_close(a.target_map, b.target_map)
    torch.testing.assert_close(a.features, b.features)


def _relational_scenes(count: int, generator: torch.Generator):
    """Token grids holding one landmark (feature 0) and two candidates (feature 1) on the same
    row, one left and one right of it, at random places; the instruction (pooled, one-hot)
    says "left of" or "right of". Returns tokens, language and the index of the named cell."""
    tokens = 0.1 * torch.randn(count, SIDE * SIDE, DIM, generator=generator)
    relation = torch.randint(0, 2, (count,), generator=generator)
    target = torch.empty(count, dtype=torch.long)
    for i in range(count):
        row = int(torch.randint(0, SIDE, (1,), generator=generator))
        cols = torch.randperm(SIDE, generator=generator)[:3].sort().values.tolist()
        left, landmark, right = (row * SIDE + c for c in cols)
        tokens[i, landmark, 0] += 3.0
        tokens[i, left, 1] += 3.0
        tokens[i, right, 1] += 3.0
        target[i] = left if relation[i] == 0 else right
    pooled = torch.nn.functional.one_hot(relation, DIM).float()
    lang = LanguageFeatures(pooled, pooled[:, None], torch.ones(count, 1, dtype=torch.bool))
    return tokens, lang, target


def _trained_accuracy(relation_layers: int) -> float:
    torch.manual_seed(0)
    fusion = FiLMFusion(DIM, DIM, SIDE * SIDE, FusionConfig(
        dim=DIM, heads=4, relation_layers=relation_layers))
    optimiser = torch.optim.Adam(fusion.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        tokens, lang, target = _relational_scenes(64, generator)
        _, logits, _ = fusion.forward_with_maps(tokens.mean(1), tokens, lang)
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    tokens, lang, target = _relational_scenes(400, torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, logits, _ = fusion.forward_with_maps(tokens.mean(1), tokens, lang)
    return float((logits.argmax(1) == target).float().mean())


def test_relation_layers_learn_what_per_cell_film_cannot():
    """Which of two identical candidates is "left of" the landmark depends on another cell:
    plain FiLM, reading each cell alone, stays near chance between the two; one relation
    layer learns it."""
    plain = _trained_accuracy(0)
    related = _trained_accuracy(1)
    assert plain < 0.65, plain
    assert related > 0.9, related


def test_train_bc_options_ask_for_relation_layers_on_the_main_view_only():
    from vla_gym.cli import _bc_policy_changes

    changes = _bc_policy_changes(False, True, 2)
    assert changes == {"fusion": {"landmark_map": True, "relation_layers": 2}}
    policy = VLAPolicy.from_preset("small", **changes, views=("image", "wrist_image"))
    assert len(policy.trunk.fusion.relation.attention) == 2
    assert [f.relation for f in policy.trunk.extra_fusion] == [None]
