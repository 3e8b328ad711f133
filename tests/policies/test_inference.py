"""Real-time inference: int8 dynamic quantisation stays close to float; torch.compile runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from policy_helpers import obs_only, tiny_config

from vla_gym.policies import CheckpointError, VLAPolicy, compile_policy, quantize_int8


@pytest.mark.parametrize("name", ["small", "seed"])
def test_int8_actions_close_to_float(name, tabletop_batch):
    policy = VLAPolicy.from_preset(name)
    obs = obs_only(tabletop_batch)
    reference = policy.predict(obs)
    qpolicy = quantize_int8(policy)
    quantized = qpolicy.predict(obs)
    assert qpolicy.is_quantized and not policy.is_quantized
    assert any(".quantized." in type(m).__module__ for m in qpolicy.modules())
    np.testing.assert_array_equal(policy.predict(obs), reference)  # the float copy is intact
    assert np.abs(quantized - reference).max() < 0.05
    assert np.abs(quantized - reference).mean() < 0.01


def test_int8_policy_is_not_saved(tabletop_batch, tmp_path):
    with pytest.raises(CheckpointError, match="quantise after loading"):
        quantize_int8(VLAPolicy(tiny_config())).save_pretrained(tmp_path)


def test_int8_bins_and_discrete_heads_run(tabletop_batch):
    obs = obs_only(tabletop_batch)
    for head in ({"kind": "bins"}, {"kind": "discrete"}):
        policy = VLAPolicy(tiny_config(head=head, language={"kind": "lstm"}))
        assert quantize_int8(policy).predict(obs).shape == policy.predict(obs).shape


@pytest.mark.slow
def test_compiled_policy_matches_eager(tabletop_batch, tmp_path):
    pytest.importorskip("torch._inductor")
    policy = VLAPolicy(tiny_config(fusion={"kind": "film"}))
    obs = obs_only(tabletop_batch)
    eager = policy.predict(obs)
    compiled = compile_policy(policy)
    torch.testing.assert_close(torch.from_numpy(compiled.predict(obs)),
                               torch.from_numpy(eager), atol=1e-5, rtol=1e-4)
    compiled.save_pretrained(tmp_path)  # same state-dict names as the eager policy
    np.testing.assert_allclose(VLAPolicy.from_pretrained(tmp_path).predict(obs), eager,
                               atol=1e-6)
