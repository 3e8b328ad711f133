"""Expert demonstrations: record them as Minari datasets, read them back for training.

``collect_demos`` (and ``vla-gym collect``) writes; ``load_demos`` reads without loading the
whole dataset; ``check_compatible`` tells whether a dataset fits an env. The on-disk layout is
described in ``vla_gym.data.layout``.
"""

from vla_gym.data.collect import CollectSummary, collect_demos
from vla_gym.data.demos import (
    DemoDataset,
    DemoEpisode,
    Transition,
    check_compatible,
    load_demos,
)
from vla_gym.data.layout import (
    CorruptDatasetError,
    DatasetNotFoundError,
    IncompatibleDatasetError,
    dataset_dir,
    dataset_id,
)

__all__ = [
    "CollectSummary",
    "CorruptDatasetError",
    "DatasetNotFoundError",
    "DemoDataset",
    "DemoEpisode",
    "IncompatibleDatasetError",
    "Transition",
    "check_compatible",
    "collect_demos",
    "dataset_dir",
    "dataset_id",
    "load_demos",
]
