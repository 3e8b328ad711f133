"""The FiLM landmark map: config checks, its labels and loss, how the target map reads it, and
checkpoints."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from policy_helpers import tiny_config

from vla_gym.policies import VLAPolicy
from vla_gym.policies.presets import default_grounding_classes

PICK = "vla_gym/TabletopPick-v0"
VIEWS = ("image", "wrist_image")
LANDMARK = {"kind": "film", "landmark_map": True}


@pytest.fixture(scope="module")
def labelled_batch():
    """Observations and every pixel label of a few Pick resets, some instructions relational."""
    env = gym.make(PICK, image_size=32, cameras=("main", "wrist"))
    rows = [env.reset(seed=seed) for seed in range(6)]
    env.close()
    batch = {key: np.stack([obs[key] for obs, _ in rows])
             for key in ("image", "wrist_image", "state")}
    batch["instruction"] = [obs["instruction"] for obs, _ in rows]
    for key in ("target_pixel", "wrist_target_pixel", "landmark_pixel", "wrist_landmark_pixel"):
        batch[key] = np.stack([info[key] for _, info in rows]).astype(np.float32)
    return batch


def landmark_policy(**changes) -> VLAPolicy:
    aux = {"grounding_weight": 1.0, "grounding_classes": default_grounding_classes()}
    return VLAPolicy(tiny_config(views=VIEWS, fusion=LANDMARK, aux=aux, **changes))


def maps(policy: VLAPolicy, batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    with torch.no_grad():
        out = policy.features(policy.preprocess(batch))
    return [out.target_map, *out.extra_maps], list(out.landmark_maps)


def test_landmark_map_needs_film():
    with pytest.raises(ValueError, match="landmark_map needs fusion.kind='film'"):
        tiny_config(fusion={"kind": "concat", "landmark_map": True})


def test_every_view_has_a_landmark_map_and_a_plain_film_has_none(labelled_batch):
    targets, landmarks = maps(landmark_policy().eval(), labelled_batch)
    cells = targets[0].shape[1]
    assert [tuple(m.shape) for m in landmarks] == [(6, cells), (6, cells)]
    plain = VLAPolicy(tiny_config(views=VIEWS, fusion={"kind": "film"})).eval()
    assert maps(plain, labelled_batch)[1] == [None, None]


def test_target_map_reads_the_landmark_only_once_the_instruction_scales_it(labelled_batch):
    policy = landmark_policy().eval()
    landmark = policy.trunk.fusion.landmark
    before, _ = maps(policy, labelled_batch)
    with torch.no_grad():  # move the landmark map: a fresh model's target map ignores it
        landmark.logit.weight.normal_()
    after, _ = maps(policy, labelled_batch)
    torch.testing.assert_close(after[0], before[0])
    with torch.no_grad():
        landmark.relative_scale.bias.fill_(1.0)
    scaled, _ = maps(policy, labelled_batch)
    with torch.no_grad():
        landmark.logit.weight.normal_()
    moved, _ = maps(policy, labelled_batch)
    assert not torch.allclose(moved[0], scaled[0])


def test_landmark_loss_trains_the_landmark_map_and_the_target_loss_does_not(labelled_batch):
    policy = landmark_policy().train()
    landmark = policy.trunk.fusion.landmark
    with torch.no_grad():
        landmark.relative_scale.bias.fill_(1.0)  # the target map reads the landmark
    _, metrics = policy.auxiliary_loss(labelled_batch)
    for view in VIEWS:
        assert metrics[f"{view}_landmark_loss"] > 0
    # Without landmark labels only the target maps train: no gradient reaches the landmark
    # map through the relative positions it hands the target map (they are detached).
    targets_only = {k: v for k, v in labelled_batch.items() if "landmark" not in k}
    loss, metrics = policy.auxiliary_loss(targets_only)
    assert not any("landmark" in key for key in metrics)
    loss.backward()
    assert landmark.logit.weight.grad is None or not landmark.logit.weight.grad.any()
    assert landmark.relative.weight.grad is not None and landmark.relative.weight.grad.any()
    policy.zero_grad()
    loss, _ = policy.auxiliary_loss(labelled_batch)
    loss.backward()
    assert landmark.logit.weight.grad.abs().sum() > 0


def test_landmark_map_learns_its_label(labelled_batch):
    """A few optimiser steps on the landmark labels alone bring the map's peak onto the
    landmark's cell for every row of a small batch."""
    torch.manual_seed(0)
    policy = landmark_policy().train()
    only = {k: v for k, v in labelled_batch.items() if k != "target_pixel"
            and k != "wrist_target_pixel"}
    optimiser = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, metrics = policy.auxiliary_loss(only)
        first = metrics["image_landmark_loss"] if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert metrics["image_landmark_loss"] < 0.5 * first
    assert metrics["image_landmark_grounding_cell_accuracy"] == 1.0


def test_landmark_policy_survives_a_round_trip(labelled_batch, tmp_path):
    policy = landmark_policy().eval()
    with torch.no_grad():
        policy.trunk.fusion.landmark.relative_scale.bias.fill_(0.5)
    actions = policy.predict(labelled_batch)
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.config.fusion.landmark_map
    np.testing.assert_array_equal(loaded.predict(labelled_batch), actions)
