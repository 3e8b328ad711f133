"""Bad observations and bad checkpoints fail loudly, naming what was expected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from policy_helpers import obs_only, tiny_config

from vla_gym.policies import CheckpointError, ObservationError, VLAPolicy


@pytest.fixture(scope="module")
def policy() -> VLAPolicy:
    return VLAPolicy(tiny_config())


@pytest.fixture
def obs(tabletop_batch) -> dict:
    return obs_only(tabletop_batch)


def test_missing_keys_are_named(policy, obs):
    with pytest.raises(ObservationError, match=r"missing \['state'\].*'state': float \(B, 21\)"):
        policy.predict({k: v for k, v in obs.items() if k != "state"})
    with pytest.raises(ObservationError, match="must be a dict"):
        policy.predict([obs])


def test_wrong_image_dtype_or_shape(policy, obs):
    with pytest.raises(ObservationError, match="uint8.*got dtype float32"):
        policy.predict({**obs, "image": obs["image"].astype(np.float32)})
    with pytest.raises(ObservationError, match=r"\(B, H, W, 3\)"):
        policy.predict({**obs, "image": obs["image"][..., :2]})
    with pytest.raises(ObservationError, match=r"\(B, H, W, 3\)"):
        policy.predict({**obs, "image": obs["image"][0]})


def test_other_image_sizes_are_resized_unless_turned_off(obs):
    resizing = VLAPolicy(tiny_config())
    big = np.repeat(np.repeat(obs["image"], 2, axis=1), 2, axis=2)  # 128 px
    assert resizing.predict({**obs, "image": big}).shape == (len(big), 7)
    strict = VLAPolicy(tiny_config(resize_images=False))
    with pytest.raises(ObservationError, match="must be 32x32.*got 128x128"):
        strict.predict({**obs, "image": big})


def test_bad_instructions(policy, obs):
    texts = list(obs["instruction"])
    with pytest.raises(ObservationError, match="entry 2 is empty"):
        policy.predict({**obs, "instruction": texts[:2] + ["  "] + texts[3:]})
    with pytest.raises(ObservationError, match="6 images"):
        policy.predict({**obs, "instruction": texts[:3]})
    with pytest.raises(ObservationError, match="entry 0 is int"):
        policy.predict({**obs, "instruction": [1] * len(texts)})
    out = policy.predict({**obs, "instruction": np.array(texts)})  # numpy str arrays are fine
    assert out.shape == (len(texts), 7)


def test_bad_state(policy, obs):
    with pytest.raises(ObservationError, match=r"shape \(6, 21\), got \(6, 19\)"):
        policy.predict({**obs, "state": obs["state"][:, :19]})
    nan = obs["state"].copy()
    nan[0, 0] = np.nan
    with pytest.raises(ObservationError, match="NaN"):
        policy.predict({**obs, "state": nan})


def test_act_takes_one_observation(policy, obs):
    one = {k: v[0] for k, v in obs.items()}
    np.testing.assert_allclose(policy.act(one), policy.predict(obs)[0], atol=1e-6)
    with pytest.raises(ObservationError, match="must be a string"):
        policy.act({**one, "instruction": ["a list"]})
    policy.reset()


def test_training_batch_needs_actions(policy, obs):
    with pytest.raises(ObservationError, match="'action'"):
        policy(obs)


@pytest.fixture
def saved(tmp_path):
    VLAPolicy(tiny_config()).save_pretrained(tmp_path)
    return tmp_path


def edit_config(path, change) -> None:
    data = json.loads((path / "config.json").read_text())
    change(data)
    (path / "config.json").write_text(json.dumps(data))


def test_missing_directory_or_files(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist"):
        VLAPolicy.from_pretrained(tmp_path / "nothing")
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        VLAPolicy.from_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        VLAPolicy.from_pretrained(saved)


def test_unknown_config_key_or_kind(saved):
    edit_config(saved, lambda d: d["head"].update(temperature=1.0))
    with pytest.raises(CheckpointError, match="not a valid VLAPolicy config.*temperature"):
        VLAPolicy.from_pretrained(saved)
    edit_config(saved, lambda d: (d["head"].pop("temperature"),
                                  d["fusion"].update(kind="perceiver")))
    with pytest.raises(CheckpointError, match="fusion.kind = 'perceiver'"):
        VLAPolicy.from_pretrained(saved)


def test_config_not_matching_the_weights(saved):
    edit_config(saved, lambda d: d["fusion"].update(kind="gated"))
    with pytest.raises(CheckpointError, match=r"does not match the weights.*\['fusion'\]"):
        VLAPolicy.from_pretrained(saved)


def test_inference_settings_may_change(saved, tabletop_batch):
    edit_config(saved, lambda d: d.update(resize_images=False, name="renamed"))
    assert VLAPolicy.from_pretrained(saved).config.name == "renamed"


def test_corrupt_or_foreign_weights(saved):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        VLAPolicy.from_pretrained(saved)
    weights.write_bytes(b"not a tensor file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        VLAPolicy.from_pretrained(saved)
    (saved / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        VLAPolicy.from_pretrained(saved)


def test_weights_from_another_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    import vla_gym.policies.checkpoint as ckpt

    small = VLAPolicy(tiny_config())
    small.save_pretrained(tmp_path)
    other = VLAPolicy(tiny_config(hidden=48))
    tensors = {k: v.contiguous() for k, v in other.state_dict().items()}
    arch = json.dumps(ckpt._architecture(small.config.to_dict()), sort_keys=True)
    save_file(tensors, str(tmp_path / "model.safetensors"),
              metadata={"format": ckpt.FORMAT, "architecture": arch})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        VLAPolicy.from_pretrained(tmp_path)
    del tensors["normalizer.action_std"]
    save_file(tensors, str(tmp_path / "model.safetensors"),
              metadata={"format": ckpt.FORMAT, "architecture": arch})
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\).*normalizer.action_std"):
        VLAPolicy.from_pretrained(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not written by VLAPolicy.save_pretrained"):
        VLAPolicy.from_pretrained(tmp_path)


def test_checkpoint_written_before_a_config_field_existed_loads(tmp_path, obs):
    """An older checkpoint lacks fields added since (FiLM's ``landmark_map``) in config.json
    and in its weights' architecture record; it loads with their defaults, and a real
    architecture difference is still refused."""
    from safetensors.torch import load_file, save_file

    import vla_gym.policies.checkpoint as ckpt

    policy = VLAPolicy(tiny_config(fusion={"kind": "film"}))
    policy.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["fusion"]["landmark_map"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch = ckpt._architecture(policy.config.to_dict())
    del arch["fusion"]["landmark_map"]
    tensors = load_file(str(tmp_path / "model.safetensors"))
    save_file(tensors, str(tmp_path / "model.safetensors"),
              metadata={"format": ckpt.FORMAT, "architecture": json.dumps(arch)})
    loaded = VLAPolicy.from_pretrained(tmp_path)
    assert not loaded.config.fusion.landmark_map
    np.testing.assert_array_equal(loaded.predict(obs), policy.predict(obs))
    arch["fusion"]["dim"] = 2 * arch["fusion"]["dim"]
    save_file(tensors, str(tmp_path / "model.safetensors"),
              metadata={"format": ckpt.FORMAT, "architecture": json.dumps(arch)})
    with pytest.raises(CheckpointError, match=r"\['fusion'\] differ"):
        VLAPolicy.from_pretrained(tmp_path)
