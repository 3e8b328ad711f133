"""Step infos batched as gymnasium batches them, in columns rather than key by key.

gymnasium's ``VectorEnv._add_info`` batches one sub-env's info at a time, re-deriving each
key's batch array on every step. Every step of an env family gives infos of one *layout*: the
same keys in the same order, each value of the same type (and, for arrays, dtype and shape).
``InfoLayout`` is that layout; ``InfoColumns`` holds a run of envs' infos of one layout as one
numpy structured record per env for the values gymnasium batches into numeric arrays, plus a
list per key of the other values. A group of envs' infos then crosses a pipe as the records'
raw bytes (``InfoEncoder`` / ``InfoDecoder``, the layout itself sent once), and the vector env's
batch is a slice of the joined records per key (``batch_infos``). Infos of different layouts
(an episode's first info, another task family's) go key by key through gymnasium's rule.
Either way the batch is bit-identical to gymnasium's: the same keys in the same order, values,
dtypes and masks.
"""

from __future__ import annotations

import itertools
import operator
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np

InfoRows = list[tuple[int, dict[str, Any]]]  # (env number within the part, info)
InfoPart = Union["InfoColumns", InfoRows]
AddInfo = Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]]


def is_scalar_kind(kind: type) -> bool:
    """Whether gymnasium batches values of this type into a 1-D array of that dtype."""
    return kind in (int, float, bool) or issubclass(kind, np.number)


def empty_info_batch(value: Any, n: int) -> np.ndarray:
    """The array ``VectorEnv._add_info`` batches ``value``'s key into (gymnasium's rule)."""
    kind = type(value)
    if is_scalar_kind(kind):
        return np.zeros(n, dtype=kind)
    if isinstance(value, np.ndarray):
        return np.zeros((n, *value.shape), dtype=value.dtype)
    return np.full(n, fill_value=None, dtype=object)


class InfoLayout:
    """The keys of an info in order, each value's type, and each array's dtype and shape.
    Values that gymnasium batches into numeric arrays (numbers, numeric ndarrays) are fields
    of ``dtype``, a numpy structured record; the rest are kept as objects."""

    def __init__(self, keys: tuple[str, ...], kinds: tuple[type, ...],
                 arrays: tuple[tuple[str, np.dtype, tuple[int, ...]], ...]) -> None:
        self.keys, self.kinds, self.arrays = keys, kinds, arrays
        array_specs = {key: (dtype, shape) for key, dtype, shape in arrays}
        self.numeric = tuple(key for key, kind in zip(keys, kinds, strict=True)
                             if is_scalar_kind(kind) or kind is np.ndarray)
        self.objects = tuple(key for key in keys if key not in self.numeric)
        self.numeric_keys = frozenset(self.numeric)
        # objects numpy stores as one element each when a list of them is assigned to a slice
        self.flat_objects = {key: kind in (str, type(None)) for key, kind in
                             zip(keys, kinds, strict=True) if key in self.objects}
        self.dtype = np.dtype([(key, *array_specs[key]) if key in array_specs
                               else (key, np.dtype(kind))
                               for key, kind in zip(keys, kinds, strict=True)
                               if key in self.numeric])
        self._kind = dict(zip(keys, kinds, strict=True))
        self._hash = hash(self._signature())  # looked up on every encoded step
        getter = operator.itemgetter(*self.numeric) if self.numeric else None
        # a record is assigned from a tuple, whatever the number of fields
        self._record: Callable[[dict[str, Any]], tuple] = (
            (lambda info: ()) if getter is None
            else (lambda info: (getter(info),)) if len(self.numeric) == 1 else getter)

    @classmethod
    def of(cls, info: dict[str, Any]) -> InfoLayout | None:
        """``info``'s layout, or None where its values cannot all be batched in columns
        (nested dicts, ``final_obs``, ndarray subclasses, arrays of non-numeric dtype, keys
        that are not non-empty strings)."""
        keys = tuple(info)
        if "final_obs" in info or any(type(k) is not str or not k for k in keys):
            return None
        kinds = tuple(map(type, info.values()))
        arrays = []
        for key, kind in zip(keys, kinds, strict=True):
            value = info[key]
            if kind is dict or (kind is not np.ndarray and issubclass(kind, np.ndarray)):
                return None
            if is_scalar_kind(kind) and np.dtype(kind).kind not in "biufc":
                return None  # e.g. np.timedelta64: gymnasium's rule, key by key
            if kind is np.ndarray:
                if value.dtype.kind not in "biufc":
                    return None
                arrays.append((key, value.dtype, value.shape))
        return cls(keys, kinds, tuple(arrays))

    def _signature(self) -> tuple:
        return self.keys, self.kinds, self.arrays

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InfoLayout) and self._signature() == other._signature()

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        return InfoLayout, self._signature()

    def fits(self, info: dict[str, Any]) -> bool:
        """Whether ``info`` has this layout."""
        if tuple(info) != self.keys or tuple(map(type, info.values())) != self.kinds:
            return False
        for key, dtype, shape in self.arrays:
            value = info[key]
            if value.dtype != dtype or value.shape != shape:
                return False
        return True

    def columns(self, infos: Sequence[dict[str, Any]]) -> InfoColumns:
        """Infos of this layout (one per env, in env order) as columns."""
        records = np.empty(len(infos), self.dtype)
        for i, info in enumerate(infos):
            records[i] = self._record(info)
        return InfoColumns(self, records, [[info[key] for info in infos]
                                           for key in self.objects])

    def value(self, records: np.ndarray, key: str, i: int) -> Any:
        """Env ``i``'s value of numeric ``key``, of the type the env gave."""
        kind = self._kind[key]
        if kind is np.ndarray:
            return np.array(records[key][i], dtype=self.dtype[key].base)
        return kind(records[key][i])


class InfoColumns:
    """Infos of one layout for a run of envs: ``records`` (one structured record per env, the
    numeric values) and ``objects`` (per non-numeric key, one value per env)."""

    __slots__ = ("layout", "records", "objects")

    def __init__(self, layout: InfoLayout, records: np.ndarray,
                 objects: list[list[Any]]) -> None:
        self.layout, self.records, self.objects = layout, records, objects

    def __len__(self) -> int:
        return len(self.records)

    def rows(self) -> InfoRows:
        """The infos again, one dict per env, values of the types the envs gave."""
        layout = self.layout
        numeric = {key: [layout.value(self.records, key, i) for i in range(len(self))]
                   for key in layout.numeric}
        objects = dict(zip(layout.objects, self.objects, strict=True))
        return [(i, {key: (numeric[key][i] if key in numeric else objects[key][i])
                     for key in layout.keys}) for i in range(len(self))]


class InfoLayouts:
    """Turns the info rows of a run of ``k`` envs into ``InfoColumns`` where they share a
    layout, remembering layouts seen (most steps reuse the last one)."""

    def __init__(self) -> None:
        self.known: dict[InfoLayout, int] = {}  # layout -> its number, in order of first use
        self._last: InfoLayout | None = None

    def part(self, rows: InfoRows, k: int) -> InfoPart:
        """``rows`` as columns when there is one info per env (``0 .. k-1``, in order), all of
        one layout; otherwise the rows themselves."""
        if len(rows) != k or any(env != i for i, (env, _) in enumerate(rows)) or k == 0:
            return rows
        infos = [info for _, info in rows]
        layout = self._fitting(infos)
        if layout is None:
            return rows
        self._last = layout
        return layout.columns(infos)

    def _fitting(self, infos: list[dict[str, Any]]) -> InfoLayout | None:
        """The layout all ``infos`` have: the last one used, another seen before (e.g. a reset's
        after steps'), or a new one; None if they differ."""
        last = self._last
        if last is not None and all(last.fits(info) for info in infos):  # most steps
            return last
        for layout in self.known:
            if all(layout.fits(info) for info in infos):
                return layout
        layout = InfoLayout.of(infos[0])
        if layout is None or not all(layout.fits(info) for info in infos[1:]):
            return None
        self.known[layout] = len(self.known)
        return layout


# A part on the wire: b"R" + pickled rows, or b"C" + (layout number, length of the pickled
# layout: 0 once the receiver has it, number of envs) + the pickled layout + the records'
# raw bytes + the pickled object columns.
_ROWS, _COLUMNS = b"R", b"C"
_COLUMNS_HEADER = struct.Struct("<III")


class InfoEncoder(InfoLayouts):
    """A sender's parts as bytes; each layout is sent in full the first time only."""

    def __init__(self) -> None:
        super().__init__()
        self._sent: set[int] = set()

    def encode(self, rows: InfoRows, k: int) -> bytes:
        part = self.part(rows, k)
        if not isinstance(part, InfoColumns):
            return _ROWS + pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
        number = self.known[part.layout]
        layout = b""
        if number not in self._sent:
            layout = pickle.dumps(part.layout, protocol=pickle.HIGHEST_PROTOCOL)
            self._sent.add(number)
        return b"".join((_COLUMNS, _COLUMNS_HEADER.pack(number, len(layout), len(part)), layout,
                         part.records.tobytes(),
                         pickle.dumps(part.objects, protocol=pickle.HIGHEST_PROTOCOL)))


class InfoDecoder:
    """One sender's parts back from ``InfoEncoder.encode``'s bytes."""

    def __init__(self) -> None:
        self._layouts: dict[int, InfoLayout] = {}

    def decode(self, data: bytes | memoryview) -> InfoPart:
        data = memoryview(data)
        if data[:1] == _ROWS:
            return pickle.loads(data[1:])
        if data[:1] != _COLUMNS:
            raise ValueError(f"not an info part: starts with {bytes(data[:1])!r}")
        number, layout_size, k = _COLUMNS_HEADER.unpack_from(data, 1)
        at = 1 + _COLUMNS_HEADER.size
        if layout_size:
            self._layouts[number] = pickle.loads(data[at:at + layout_size])
            at += layout_size
        layout = self._layouts.get(number)
        if layout is None:
            raise ValueError(f"info layout {number} was never sent to this decoder")
        size = k * layout.dtype.itemsize
        records = (np.frombuffer(data, layout.dtype, count=k, offset=at) if size
                   else np.empty(k, layout.dtype))
        return InfoColumns(layout, records, pickle.loads(data[at + size:]))


def batch_infos(parts: Sequence[tuple[int, InfoPart]], n: int, add_info: AddInfo,
                ) -> dict[str, Any]:
    """The batched infos of ``n`` envs from ``parts`` ((first env, part), in env order, rows
    numbered within their part), as ``add_info`` (gymnasium's rule) would batch them one by
    one. Where every part is columns of one layout covering all ``n`` envs, each key is one
    array built at once."""
    columns = [part for _, part in parts if isinstance(part, InfoColumns)]
    if (len(columns) == len(parts) and columns and sum(map(len, columns)) == n
            and all(part.layout == columns[0].layout for part in columns[1:])):
        return _join(columns, n)
    vector_infos: dict[str, Any] = {}
    for start, part in parts:
        for i, info in (part.rows() if isinstance(part, InfoColumns) else part):
            add_info(vector_infos, info, start + i)
    return vector_infos


def _join(columns: Sequence[InfoColumns], n: int) -> dict[str, Any]:
    layout = columns[0].layout
    # joined as bytes: np.concatenate takes ~10 us for a few structured records
    records = (columns[0].records if len(columns) == 1 else np.frombuffer(
        b"".join([part.records.tobytes() for part in columns]), layout.dtype, count=n))
    objects = iter(zip(*(part.objects for part in columns)))
    present = np.ones(n, dtype=np.bool_)
    vector_infos: dict[str, Any] = {}
    for key in layout.keys:
        if key in layout.numeric_keys:
            vector_infos[key] = records[key].copy()  # C-contiguous, the field's dtype
        else:
            column = np.empty(n, dtype=object)
            values = list(itertools.chain.from_iterable(next(objects)))
            if layout.flat_objects[key]:
                column[:] = values
            else:  # element by element: a value that is itself a sequence stays one element
                for i, value in enumerate(values):
                    column[i] = value
            vector_infos[key] = column
        vector_infos["_" + key] = present.copy()
    return vector_infos
