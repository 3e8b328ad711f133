"""Infos batched in columns and sent as records: gymnasium's batches, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.vector.vector_env import VectorEnv
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.envs.test_vector import assert_same
from vla_gym.vector_info import (
    InfoColumns,
    InfoDecoder,
    InfoEncoder,
    InfoLayouts,
    batch_infos,
)


class _Gym(VectorEnv):
    """gymnasium's own ``_add_info``, the reference."""

    def __init__(self, n: int) -> None:
        self.num_envs = n


def _gymnasium(rows, n):
    merged = {}
    for env_num, info in rows:
        _Gym(n)._add_info(merged, info, env_num)
    return merged


def _sent(rows, starts, n):
    """``rows`` cut into parts at ``starts``, each encoded by its own sender and decoded."""
    bounds = [*starts, n]
    parts = []
    for start, stop in zip(bounds, bounds[1:]):
        part_rows = [(env - start, info) for env, info in rows if start <= env < stop]
        parts.append((start, InfoDecoder().decode(InfoEncoder().encode(part_rows,
                                                                       stop - start))))
    return parts


def _info(k):
    return {"task": "pick", "reward": 0.5 * k, "success": k == 2, "count": k,
            "f32": np.float32(k), "f64": np.float64(-k), "pos": np.arange(3.0) + k,
            "pixel": np.ones(2, np.float32), "big_endian": np.arange(2, dtype=">i4") * k,
            "zero_d": np.array(k, np.int16), "none": None, "tags": ("a", k), "nan": np.nan,
            "flag": np.bool_(k)}


ROWS = {
    "uniform": [(k, _info(k)) for k in range(4)],
    "keys-differ": [(0, _info(0)), (1, {"reward": 1.0}), (2, _info(2)), (3, _info(3))],
    "kinds-differ": [(0, {"x": 1}), (1, {"x": 2.5}), (2, {"x": 3}), (3, {"x": True})],
    "shapes-differ": [(k, {"a": np.ones(1 if k == 1 else 3)}) for k in range(4)],
    "env-missing": [(0, {"x": 1.0}), (2, {"x": 2.0})],
    "same-step-final": [(0, {"x": 1.0}), (0, {"final_obs": 1, "final_info": {"x": 1.0}}),
                        (1, {"x": 2.0}), (2, {"x": 3.0}), (3, {"x": 4.0})],
    "nested": [(k, {"d": {"inner": float(k)}}) for k in range(4)],
    "string-arrays": [(k, {"s": np.array(["a", "b"])}) for k in range(4)],
    "empty": [(k, {}) for k in range(4)],
    "objects-only": [(k, {"name": f"n{k}", "tags": [k, k]}) for k in range(4)],
}


@pytest.mark.parametrize("starts", [(0,), (0, 1), (0, 2, 3)], ids=["one", "1+3", "2+1+1"])
@pytest.mark.parametrize("name", list(ROWS))
def test_batches_match_gymnasium_however_the_envs_are_split(name, starts):
    rows = ROWS[name]
    expected = _gymnasium(rows, 4)
    assert_same(batch_infos([(0, InfoLayouts().part(rows, 4))], 4, _Gym(4)._add_info), expected)
    assert_same(batch_infos(_sent(rows, starts, 4), 4, _Gym(4)._add_info), expected)


def test_uniform_rows_travel_as_records_and_come_back_as_the_same_values():
    rows = ROWS["uniform"]
    message = InfoEncoder().encode(rows, 4)
    part = InfoDecoder().decode(message)
    assert message[:1] == b"C" and isinstance(part, InfoColumns)
    assert part.layout.objects == ("task", "none", "tags", "flag")  # np.bool_: gymnasium's rule
    assert_same(part.rows(), rows)  # float stays float, np.float32 np.float32, 0-d arrays ...
    for name in ("keys-differ", "same-step-final", "nested", "string-arrays"):
        assert InfoEncoder().encode(ROWS[name], 4)[:1] == b"R"


def test_a_layout_is_sent_once_and_several_layouts_alternate():
    encoder, decoder = InfoEncoder(), InfoDecoder()
    a = [(k, {"x": float(k), "s": "a"}) for k in range(2)]
    b = [(k, {"y": k, "p": np.ones(3) * k}) for k in range(2)]
    messages = [encoder.encode(rows, 2) for rows in (a, b, a, b, a)]
    assert len(messages[2]) < len(messages[0]) and len(messages[3]) < len(messages[1])
    assert messages[2] == messages[4]
    assert len(encoder.known) == 2  # a layout seen before is reused, not built again
    for rows, message in zip((a, b, a, b, a), messages):
        assert_same(decoder.decode(message).rows(), rows)
    with pytest.raises(ValueError, match="layout 1 was never sent"):
        InfoDecoder().decode(messages[3])
    with pytest.raises(ValueError, match="not an info part"):
        decoder.decode(b"\x80junk")


_SCALARS = {
    "int": st.integers(-2**62, 2**62), "float": st.floats(allow_nan=True, allow_infinity=True),
    "bool": st.booleans(), "f32": st.floats(width=32).map(np.float32),
    "i8": st.integers(-128, 127).map(np.int8), "str": st.text(max_size=3),
    "none": st.none(), "tuple": st.tuples(st.integers(0, 3)),
    "array": st.lists(st.floats(width=16), min_size=2, max_size=2).map(
        lambda v: np.array(v, np.float16)),
}


@st.composite
def _rows_and_split(draw):
    n = draw(st.integers(1, 5))
    kinds = draw(st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(list(_SCALARS)),
                                 max_size=5))
    rows = [(env, {key: draw(_SCALARS[kind]) for key, kind in kinds.items()})
            for env in range(n)]
    if n > 1 and kinds and draw(st.booleans()):  # one env of another kind or without a key
        env, key = draw(st.integers(0, n - 1)), draw(st.sampled_from(sorted(kinds)))
        rows[env][1][key] = draw(_SCALARS[draw(st.sampled_from(list(_SCALARS)))])
        if draw(st.booleans()):
            del rows[env][1][key]
    starts = sorted({0, *draw(st.lists(st.integers(1, n - 1), max_size=2))}) if n > 1 else [0]
    return rows, starts, n


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # gymnasium's casts
@settings(max_examples=150, deadline=None)
@given(_rows_and_split())
def test_any_infos_batch_as_gymnasium_batches_them(case):
    rows, starts, n = case
    try:
        expected = _gymnasium(rows, n)
    except (TypeError, ValueError, OverflowError) as error:  # e.g. an array where a number was
        with pytest.raises(type(error)):
            batch_infos(_sent(rows, starts, n), n, _Gym(n)._add_info)
        return
    assert_same(batch_infos(_sent(rows, starts, n), n, _Gym(n)._add_info), expected)
