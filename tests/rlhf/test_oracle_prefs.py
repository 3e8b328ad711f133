"""Segments, query sets and the synthetic labeller: what the reward model will be fed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rlhf_helpers import ENV_KWARGS, PICK, synthetic_segments

from vla_gym.training.label_store import LabelStore
from vla_gym.training.preferences import (
    SEGMENTS_NAME,
    Oracle,
    OracleConfig,
    Variant,
    check_matches_env,
    collect_segments,
    disagreement_pairs,
    load_preferences,
    random_pairs,
    read_query_set,
    write_query_set,
)
from vla_gym.training.query_files import QueryFileError
from vla_gym.types import ARM_STATE_FIELDS

STATE_DIM = len(ARM_STATE_FIELDS)


def test_oracle_prefers_more_progress_and_calls_near_ties_equal():
    oracle = Oracle(OracleConfig(tie_threshold=0.01))
    assert oracle.choose(10.0, 5.0, steps=10) == "left"
    assert oracle.choose(5.0, 10.0, steps=10) == "right"
    assert oracle.choose(5.0, 5.05, steps=10) == "equal"  # 0.005 per step


def test_oracle_errors_at_the_configured_rate_and_repeats_with_its_seed():
    def answers(seed: int) -> list[str]:
        oracle = Oracle(OracleConfig(flip=0.2, seed=seed))
        return [oracle.choose(2.0, 1.0, steps=1) for _ in range(3000)]

    first = answers(0)
    assert first == answers(0) and first != answers(1)
    assert abs(first.count("right") / len(first) - 0.2) < 0.03


def test_boltzmann_oracle_follows_the_logistic_of_the_gap():
    oracle = Oracle(OracleConfig(temperature=0.1, seed=0))
    picks = [oracle.choose(0.1, 0.0, steps=1) for _ in range(4000)]
    expected = 1.0 / (1.0 + np.exp(-1.0))  # gap 0.1 per step over temperature 0.1
    assert abs(picks.count("left") / len(picks) - expected) < 0.03


def test_progress_measure_scores_how_far_the_segment_moved():
    segments = synthetic_segments(n=2, length=3)
    segments.true_rewards[:] = [[0.0, 0.0, 3.0], [2.0, 2.0, 2.0]]
    assert Oracle(OracleConfig(measure="return")).value(segments, 1) == 6.0
    assert Oracle(OracleConfig(measure="progress")).value(segments, 0) == 3.0
    assert Oracle(OracleConfig(measure="progress")).value(segments, 1) == 0.0
    with pytest.raises(ValueError, match="measure"):
        OracleConfig(measure="distance")


def test_random_pairs_share_an_instruction_and_never_repeat():
    segments = synthetic_segments(n=10, groups=2)
    pairs = random_pairs(segments, 100, np.random.default_rng(0))
    assert len(pairs) == 20  # two groups of five: 10 + 10 distinct pairs, no more
    assert len({tuple(sorted(p)) for p in pairs}) == 20
    for a, b in pairs:
        assert a != b and segments.instructions[a] == segments.instructions[b]
    with pytest.raises(ValueError, match="share an instruction"):
        random_pairs(synthetic_segments(n=2, groups=2), 1, np.random.default_rng(0))


def test_disagreement_selection_asks_where_the_members_disagree():
    segments = synthetic_segments(n=12, groups=1)
    returns = np.tile(np.arange(12.0), (3, 1))  # members agree everywhere ...
    returns[:, 7] = [-20.0, 0.0, 20.0]  # ... except about segment 7
    pairs = disagreement_pairs(segments, 5, np.random.default_rng(0), returns, pool_factor=10)
    assert len(pairs) == 5 and all(7 in pair for pair in pairs)
    with pytest.raises(ValueError, match="member_returns"):
        disagreement_pairs(segments, 5, np.random.default_rng(0), returns[:1])


def test_collect_segments_cuts_seeded_rollouts_into_full_windows():
    still = Variant("still", lambda obs, info: np.zeros((len(obs["state"]), 7), np.float32))
    shaky = Variant("shaky", still.policy, noise=0.5)
    kwargs = dict(segment_length=30, env_kwargs=ENV_KWARGS, noise_seed=3)
    segments, frames = collect_segments(PICK, [still, shaky], [5], clip_frames=True,
                                        **{**kwargs, "env_kwargs": {**ENV_KWARGS,
                                                                    "render_size": 48}})
    assert len(segments) == 6  # 100 steps -> three 30-step windows, per variant
    assert segments.images.shape == (6, 30, 32, 32, 3)
    assert segments.states.shape == (6, 30, STATE_DIM)
    assert len(set(segments.instructions)) == 1 and set(segments.seeds) == {5}
    assert list(segments.starts) == [0, 30, 60] * 2
    assert frames is not None and frames[0].shape == (30, 48, 48, 3)
    again, _ = collect_segments(PICK, [still, shaky], [5], **kwargs)
    np.testing.assert_array_equal(again.states, segments.states)
    np.testing.assert_array_equal(again.true_rewards, segments.true_rewards)


def test_query_set_round_trip_with_clips_and_oracle_labels(tmp_path):
    segments = synthetic_segments(n=8, length=4)
    pairs = random_pairs(segments, 6, np.random.default_rng(0))
    frames = [segments.images[i] for i in range(len(segments))]
    manifest = write_query_set(tmp_path / "q", segments, pairs, frames=frames, tag="t")
    assert (tmp_path / "q" / manifest.queries[0].left.clip).stat().st_size > 0
    query_set = read_query_set(tmp_path / "q", env_id=PICK)  # clips checked
    np.testing.assert_array_equal(query_set.segments.images, segments.images)
    with LabelStore(tmp_path / "labels.sqlite") as store:
        assert Oracle().label(query_set, store) == 6
        assert Oracle().label(query_set, store) == 0  # nothing left to label
        assert {label.labeller for label in store.labels()} == {"oracle"}
        store.add(manifest.queries[0].id, "skip", "alice")  # a person's skip adds nothing
    prefs = load_preferences([(tmp_path / "q", tmp_path / "labels.sqlite")])
    assert len(prefs) == 6
    wanted = (segments.true_returns[prefs.left] > segments.true_returns[prefs.right])
    np.testing.assert_array_equal(prefs.p_left == 1.0, wanted)


def test_a_query_set_that_does_not_match_the_env_is_refused(tmp_path):
    segments = synthetic_segments(n=6, size=32)
    write_query_set(tmp_path / "q", segments, random_pairs(segments, 3, np.random.default_rng(0)))
    with pytest.raises(QueryFileError, match="TabletopPick-v0.*not 'vla_gym/TabletopPush-v0'"):
        read_query_set(tmp_path / "q", env_id="vla_gym/TabletopPush-v0")
    query_set = read_query_set(tmp_path / "q", env_id=PICK)
    check_matches_env(query_set, PICK, {"image_size": 32})
    with pytest.raises(QueryFileError, match=r"'image' of shape \(32, 32, 3\).*\(48, 48, 3\)"):
        check_matches_env(query_set, PICK, {"image_size": 48})


def test_corrupt_or_inconsistent_segments_are_refused(tmp_path):
    segments = synthetic_segments(n=6)
    directory = tmp_path / "q"
    write_query_set(directory, segments, random_pairs(segments, 3, np.random.default_rng(0)))
    manifest = json.loads((directory / "queries.json").read_text())
    manifest["queries"][0]["left"]["segment"] = 99
    (directory / "queries.json").write_text(json.dumps(manifest))
    with pytest.raises(QueryFileError, match="segment 99 but .* has 6 segments"):
        read_query_set(directory)
    (directory / SEGMENTS_NAME).write_bytes(b"not a zip file")
    with pytest.raises(QueryFileError, match="cannot read .*segments"):
        read_query_set(directory)
    (directory / SEGMENTS_NAME).unlink()
    with pytest.raises(QueryFileError, match="does not exist"):
        read_query_set(directory)
