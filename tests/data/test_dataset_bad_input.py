"""Wrong env, wrong resume parameters, missing or damaged datasets: clear errors naming why."""

from __future__ import annotations

import shutil

import gymnasium as gym
import pytest
from data_helpers import PICK, SMALL

from vla_gym.data import (
    CorruptDatasetError,
    DatasetNotFoundError,
    IncompatibleDatasetError,
    check_compatible,
    collect_demos,
    dataset_dir,
    load_demos,
)


def test_dataset_of_another_env_is_rejected(pick_root):
    demos = load_demos(pick_root)
    with pytest.raises(IncompatibleDatasetError) as err:
        check_compatible(demos, "vla_gym/NavGoTo-v0")
    message = str(err.value)
    assert "NavGoTo" in message and "observation['state'] (21,)" in message
    assert "action (7,)" in message and "(2,)" in message


def test_other_image_size_is_rejected(pick_root):
    env = gym.make(PICK, image_size=48)
    with pytest.raises(IncompatibleDatasetError, match=r"observation\['image'\] \(32, 32, 3\)"):
        check_compatible(str(pick_root), env)
    env.close()
    state_only = gym.make(PICK, obs_mode="state")
    with pytest.raises(IncompatibleDatasetError, match=r"\['image'\] only in dataset"):
        check_compatible(load_demos(pick_root), state_only)
    state_only.close()


def test_resume_with_other_parameters_is_refused(pick_root):
    with pytest.raises(IncompatibleDatasetError, match="seed: on disk 5, asked 6"):
        collect_demos(PICK, 3, pick_root, seed=6, env_kwargs=SMALL)
    with pytest.raises(IncompatibleDatasetError, match="env_kwargs"):
        collect_demos(PICK, 3, pick_root, seed=5, env_kwargs={"image_size": 48})


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nope")):
        load_demos(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no demo dataset at .*empty"):
        load_demos(tmp_path / "empty")


def _copy(pick_root, tmp_path):
    shutil.copytree(pick_root, tmp_path / "copy")
    return tmp_path / "copy", dataset_dir(tmp_path / "copy", PICK) / "data"


def test_corrupt_metadata_names_the_file(pick_root, tmp_path):
    root, data = _copy(pick_root, tmp_path)
    (data / "metadata.json").write_text('{"total_episodes": 3, "data_fo')
    with pytest.raises(CorruptDatasetError, match=str(data / "metadata.json")):
        load_demos(root)


def test_damaged_episode_file_names_the_dataset(pick_root, tmp_path):
    root, data = _copy(pick_root, tmp_path)
    part = data / "1" / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:100])
    demos = load_demos(root)  # opening reads no episode
    demos.episode(0)
    with pytest.raises(CorruptDatasetError, match=f"episode 1 of {data}"):
        demos.episode(1)


def test_missing_episode_folder_is_reported(pick_root, tmp_path):
    root, data = _copy(pick_root, tmp_path)
    shutil.rmtree(data / "2")
    with pytest.raises(CorruptDatasetError, match=r"folders \[2\] are missing"):
        load_demos(root)


def test_dataset_dir_without_metadata_blocks_collection(tmp_path):
    dataset_dir(tmp_path, PICK).mkdir(parents=True)
    with pytest.raises(CorruptDatasetError, match="has no data/metadata.json"):
        collect_demos(PICK, 1, tmp_path, env_kwargs=SMALL)


def test_resume_with_other_expert_options_is_refused(pick_root):
    with pytest.raises(IncompatibleDatasetError,
                       match=r"expert_options: on disk None, asked \{'square_cubes': False\}"):
        collect_demos(PICK, 3, pick_root, seed=5, env_kwargs=SMALL,
                      expert_options={"square_cubes": False})
    with pytest.raises(ValueError, match=r"takes options \['lift_speed', 'square_cubes'\]"):
        collect_demos(PICK, 3, pick_root, seed=5, env_kwargs=SMALL, expert_options={"x": 1})
