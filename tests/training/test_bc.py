"""Behaviour cloning: it learns, resumes exactly, survives Ctrl-C, refuses mismatched data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vla_gym.training.bc import BCConfig, BCTrainer, train_bc
from vla_gym.training.checkpoints import latest_checkpoint
from vla_gym.training.demos import APPROACH_EVERY, APPROACH_STEPS, Demos
from vla_gym.types import landmark_label

PICK = "vla_gym/TabletopPick-v0"


@pytest.fixture(scope="module")
def pick_demos():
    return Demos.from_expert(PICK, 3, seed=0, image_size=48)


def _config(**changes):
    base = dict(steps=40, batch_size=16, eval_every=0, eval_episodes=2, eval_num_envs=1,
                checkpoint_every=10, log_every=5, warmup_steps=5)
    return BCConfig(**{**base, **changes})


def test_demos_from_expert_hold_aligned_arrays(pick_demos):
    d = pick_demos
    assert d.images.shape[1:] == (48, 48, 3) and d.images.dtype == np.uint8
    assert d.actions.shape == (len(d), 7) and d.states.shape == (len(d), 21)
    assert d.num_episodes == 3 and len(set(d.instructions)) == 3
    assert d.target_pos.shape == (len(d), 3) and d.target_pixel.shape == (len(d), 2)
    assert np.isfinite(d.target_pixel).all() and ((d.target_pixel > 0) & (d.target_pixel < 1)).all()
    batch = d.batch(np.array([0, 5]))
    assert set(batch) == {"image", "instruction", "state", "action", "target_pos",
                          "target_pixel", "landmark_pixel", "target"}
    assert d.landmark_pixel.shape == (len(d), 2) and np.isfinite(d.landmark_pixel).all()


def test_loss_falls_well_below_its_start(pick_demos, tmp_path):
    trainer = BCTrainer(pick_demos, tmp_path, _config(steps=150, lr=2e-3))
    first = np.mean([trainer.train_step()["action_loss"] for _ in range(5)])
    for _ in range(140):
        trainer.train_step()
    last = np.mean([trainer.train_step()["action_loss"] for _ in range(5)])
    assert last < 0.35 * first, (first, last)


def test_bf16_autocast_learns_with_float32_weights(pick_demos, tmp_path):
    trainer = BCTrainer(pick_demos, tmp_path, _config(steps=150, lr=2e-3, precision="bf16"))
    first = np.mean([trainer.train_step()["action_loss"] for _ in range(5)])
    for _ in range(140):
        trainer.train_step()
    last = np.mean([trainer.train_step()["action_loss"] for _ in range(5)])
    assert last < 0.5 * first, (first, last)
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    with pytest.raises(ValueError, match="precision must be one of"):
        BCConfig(precision="fp16")


def test_run_writes_policy_curve_summary_and_evaluates(pick_demos, tmp_path):
    result = train_bc(pick_demos, tmp_path, _config(steps=20))
    assert (result.policy_dir / "config.json").is_file()
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert (tmp_path / "summary.json").is_file() and any((tmp_path / "tb").iterdir())
    assert result.evaluations[-1]["episodes"] == 2 and result.steps == 20


def test_time_budget_stops_training_early_and_still_saves(pick_demos, tmp_path):
    trainer = BCTrainer(pick_demos, tmp_path, _config(steps=10_000, time_budget_s=1.0))
    result = trainer.run()
    assert 0 < result.steps < 10_000
    # the cosine decay followed the clock: the learning rate ended near its floor
    assert trainer.scheduler.get_last_lr()[0] < 0.2 * trainer.config.lr
    assert (result.policy_dir / "config.json").is_file() and result.evaluations
    with pytest.raises(ValueError, match="time_budget_s"):
        BCConfig(time_budget_s=0)


def test_resume_continues_exactly_where_it_stopped(pick_demos, tmp_path):
    straight = BCTrainer(pick_demos, tmp_path / "a", _config(steps=30))
    for _ in range(30):
        straight.train_step()
    first = BCTrainer(pick_demos, tmp_path / "b", _config(steps=30))
    for _ in range(20):
        first.train_step()
    first.checkpoint()
    resumed = BCTrainer(pick_demos, tmp_path / "b", _config(steps=30), resume=True)
    assert resumed.step == 20
    for _ in range(10):
        resumed.train_step()
    for a, b in zip(straight.policy.state_dict().values(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b)


def test_ctrl_c_leaves_a_loadable_latest_checkpoint(pick_demos, tmp_path, monkeypatch):
    from vla_gym.policies import VLAPolicy

    trainer = BCTrainer(pick_demos, tmp_path, _config(steps=100, checkpoint_every=1000))
    real_step = trainer.train_step

    def interrupted():
        if trainer.step == 7:
            raise KeyboardInterrupt
        return real_step()

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None
    policy = VLAPolicy.from_pretrained(checkpoint)
    obs = pick_demos.batch(np.arange(2))
    assert policy.predict(obs).shape == (2, 7)
    assert BCTrainer(pick_demos, tmp_path, _config(steps=100), resume=True).step == 7


def test_mismatched_demos_are_refused_before_training(pick_demos, tmp_path):
    train_bc(pick_demos, tmp_path, _config(steps=10))
    nav = Demos.from_expert("vla_gym/NavGoTo-v0", 1, seed=0, image_size=48)
    with pytest.raises(ValueError, match="base_velocity.*arm_ee_delta|arm_ee_delta.*base_vel"):
        BCTrainer(nav, tmp_path, _config(steps=20), resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        BCTrainer(pick_demos, tmp_path / "empty", _config(), resume=True)


def test_cli_collect_then_train_bc_then_rollout_the_checkpoint(tmp_path):
    import json

    from typer.testing import CliRunner

    from vla_gym.cli import app

    runner = CliRunner()
    data, run = tmp_path / "demos", tmp_path / "run"
    result = runner.invoke(app, ["collect", "--env", PICK, "--episodes", "2", "--out", str(data),
                                 "--image-size", "48", "--sync"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "bc", "--dataset", str(data), "--out", str(run),
                                 "--steps", "12", "--batch-size", "8", "--eval-every", "0",
                                 "--eval-episodes", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["steps"] == 12
    assert summary["grounding_frames"] == 0
    scenes = ["train", "bc", "--dataset", str(data), "--steps", "2", "--batch-size", "8",
              "--eval-every", "0", "--eval-episodes", "1", "--grounding-scenes", "1"]
    refused = runner.invoke(app, [*scenes, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "--grounding" in refused.output
    result = runner.invoke(app, [*scenes, "--grounding", "1.0", "--binary-gripper",
                                 "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert json.loads((tmp_path / "g" / "policy" / "config.json").read_text()
                      )["head"]["binary_gripper"] is True
    # one scene, each object approached, a frame every APPROACH_EVERY steps
    assert summary["grounding_frames"] >= 2 * (APPROACH_STEPS // APPROACH_EVERY + 1)
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["rollout", "--env", PICK, "--policy", str(run / "policy"),
                                 "--episodes", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["episodes"] == 1


def test_train_bc_refuses_a_missing_dataset(tmp_path):
    from typer.testing import CliRunner

    from vla_gym.cli import app

    result = CliRunner().invoke(app, ["train", "bc", "--dataset", str(tmp_path / "nope"),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "nope" in str(result.exception) + result.output


def test_wrist_camera_demos_train_a_policy_that_reads_both_views(tmp_path):
    demos = Demos.from_expert(PICK, 1, seed=0, image_size=32, cameras=("main", "wrist"))
    assert set(demos.views) == {"wrist_image"}
    assert demos.views["wrist_image"].shape == demos.images.shape
    assert not np.array_equal(demos.views["wrist_image"], demos.images)
    assert set(demos.batch(np.arange(2))) >= {"image", "wrist_image"}
    result = train_bc(demos, tmp_path / "run", _config(steps=5, eval_episodes=1))
    from vla_gym.policies import VLAPolicy

    policy = VLAPolicy.from_pretrained(result.policy_dir)
    assert policy.config.views == ("image", "wrist_image")
    assert result.evaluations[-1]["episodes"] == 1  # its eval env opened the wrist camera


def test_grounding_scenes_add_approach_frames_of_new_scenes_only():
    demos = Demos.from_expert(PICK, 1, seed=0, image_size=32, noise=0.2, grounding_scenes=2)
    frames = demos.grounding_frames
    per_approach = APPROACH_STEPS // APPROACH_EVERY + 1
    assert frames is not None and np.isnan(frames.actions).all()
    assert len(frames) >= 2 * 2 * per_approach  # two scenes, two or more objects each
    assert not any(np.array_equal(image, demos.images[0]) for image in frames.images)
    for start in range(0, len(frames) - per_approach + 1, per_approach):
        approach = slice(start, start + per_approach)
        assert len(set(frames.targets[approach])) == 1  # one object per approach
        assert len(set(frames.instructions[approach])) == 1
        ee = frames.states[approach, 13:16]
        assert np.linalg.norm(ee[-1] - ee[0]) > 0.03  # the gripper travelled...
        pixels = frames.target_pixel[approach]
        assert np.abs(pixels - pixels[0]).max() < 0.05  # ...while the object stayed put
    assert len(set(frames.targets)) >= 3
    plain = Demos.from_expert(PICK, 1, seed=0, image_size=32, noise=0.2)
    np.testing.assert_array_equal(plain.actions, demos.actions)  # the demos are unchanged
    with pytest.raises(ValueError, match="grounding_scenes"):
        Demos.from_expert(PICK, 1, grounding_scenes=-1)


def test_demos_from_a_slow_demonstrator_lift_at_its_speed(pick_demos):
    slow = Demos.from_expert(PICK, 1, seed=0, image_size=48,
                             expert_options={"lift_speed": 0.2})
    fast = pick_demos.actions[pick_demos.episode == 0]
    closed_rising = [a[2] for a in slow.actions if a[6] > 0 and a[2] > 0.05]
    assert closed_rising and max(closed_rising) == pytest.approx(0.2)
    assert max(a[2] for a in fast if a[6] > 0) == pytest.approx(1.0)
    assert len(slow) > len(fast)  # the same scene (seed 0), a longer lift
    with pytest.raises(ValueError, match="takes options"):
        Demos.from_expert(PICK, 1, expert_options={"speed": 0.2})


def _approaches(frames: Demos) -> list[tuple[int, str, str]]:
    """(first row, target, instruction) of each run of grounding frames sharing both."""
    keys = list(zip(frames.targets, frames.instructions))
    return [(i, *keys[i]) for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]


def test_relational_grounding_adds_approaches_named_by_a_relation():
    """Each object a spatial relation can name is approached once more, right after its own
    approach, from the same reset (same scene, same object) under such an instruction."""
    from vla_gym.training.demos import RELATIONAL_PHRASE

    kwargs = dict(seed=0, image_size=32, noise=0.2, grounding_scenes=4)
    plain = Demos.from_expert(PICK, 1, **kwargs).grounding_frames
    more = Demos.from_expert(PICK, 1, relational_grounding=True, **kwargs).grounding_frames
    assert plain is not None and more is not None
    approaches = _approaches(more)
    added = [k for k, (_, target, _) in enumerate(approaches)
             if k > 0 and target == approaches[k - 1][1]]
    assert added
    for k in added:
        (row, _, text), (before, _, own_text) = approaches[k], approaches[k - 1]
        assert RELATIONAL_PHRASE.search(text) and text != own_text
        np.testing.assert_array_equal(more.images[row], more.images[before])  # same reset
        np.testing.assert_array_equal(more.target_pixel[row], more.target_pixel[before])
    kept = [a[1:] for k, a in enumerate(approaches) if k not in added]
    assert kept == [a[1:] for a in _approaches(plain)]  # the env's own approaches, in order
    with pytest.raises(ValueError, match="tabletop"):
        Demos.from_expert("vla_gym/NavGoTo-v0", 1, grounding_scenes=1, relational_grounding=True,
                          image_size=32)


def test_the_wrist_cameras_target_map_learns_from_its_own_labels(tmp_path):
    demos = Demos.from_expert(PICK, 2, seed=0, image_size=32, cameras=("main", "wrist"))
    wrist = demos.wrist_target_pixel
    assert wrist.shape == (len(demos), 2) and not np.allclose(wrist, demos.target_pixel)
    assert "wrist_target_pixel" in demos.batch(np.arange(2))
    trainer = BCTrainer(demos, tmp_path, _config(steps=80, lr=2e-3, grounding_weight=1.0))
    first = np.mean([trainer.train_step()["wrist_image_map_loss"] for _ in range(5)])
    for _ in range(70):
        trainer.train_step()
    last = np.mean([trainer.train_step()["wrist_image_map_loss"] for _ in range(5)])
    assert last < 0.8 * first, (first, last)


def test_a_wrist_policy_refuses_demos_without_wrist_images(pick_demos, tmp_path):
    expected = "reads \\['wrist_image'\\].*cameras=\\('main', 'wrist'\\)"
    with pytest.raises(ValueError, match=expected):
        BCTrainer(pick_demos, tmp_path, _config(
            policy_changes={"views": ("image", "wrist_image")}))


def test_dart_noise_perturbs_execution_but_labels_stay_the_experts():
    clean = Demos.from_expert(PICK, 2, seed=0, image_size=32)
    noisy = Demos.from_expert(PICK, 2, seed=0, image_size=32, noise=0.5, noisy_fraction=1.0)
    again = Demos.from_expert(PICK, 2, seed=0, image_size=32, noise=0.5, noisy_fraction=1.0)
    np.testing.assert_array_equal(noisy.images, again.images)  # seeded: replayable
    assert not np.array_equal(noisy.states[:20], clean.states[:20])  # the arm went elsewhere
    # the label is the expert's clean command: at the first step (same start state) it equals
    # the clean demo's, although the executed action had noise added (the next state differs)
    np.testing.assert_array_equal(noisy.actions[0], clean.actions[0])
    assert not np.array_equal(noisy.states[1], clean.states[1])
    with pytest.raises(ValueError, match="noise must be >= 0"):
        Demos.from_expert(PICK, 1, noise=-1.0)


def test_knocked_grasps_show_the_expert_backing_off_and_grasping_again():
    from vla_gym.training.demos import KNOCK_DISTANCE

    clean = Demos.from_expert(PICK, 3, seed=0, image_size=32)
    knocked = Demos.from_expert(PICK, 3, seed=0, image_size=32, grasp_misses=1.0)
    for episode in range(3):
        rows = np.flatnonzero(knocked.episode == episode)
        ee = knocked.states[rows, 13:16]
        grip = knocked.actions[rows, 6]
        # The knocked steps are missing from the recording: a jump of a few cm, the biggest.
        jumps = np.linalg.norm(np.diff(ee, axis=0), axis=1)
        gap = int(np.argmax(jumps))
        assert jumps[gap] > 0.6 * KNOCK_DISTANCE[0]
        # Before it the expert was about to close; after it, off target, it opens and backs
        # off upwards, then closes again later (the second grasp).
        assert (grip[:gap + 1] < 0).all()
        after = knocked.actions[rows[gap + 1]]
        assert after[6] < 0 and after[2] > 0
        assert (grip[gap + 1:] > 0).any()
        assert len(rows) > np.sum(clean.episode == episode)
    assert knocked.num_episodes == 3
    none = Demos.from_expert(PICK, 2, seed=0, image_size=32, grasp_misses=0.0)
    np.testing.assert_array_equal(none.actions, clean.actions[clean.episode < 2])
    with pytest.raises(ValueError, match="grasp_misses must be a fraction"):
        Demos.from_expert(PICK, 1, grasp_misses=1.5)
    with pytest.raises(ValueError, match="'grip' dimension"):
        Demos.from_expert("vla_gym/NavGoTo-v0", 1, image_size=32, grasp_misses=1.0)


def _open_labels_on_a_closing_gripper(demos: Demos) -> int:
    """Steps labelled "open" although the gripper is less than 70% of its widest opening,
    before the episode's first "close" label (after it, the expert backing off from a missed
    grasp opens a closed gripper too)."""
    from vla_gym.types import ARM_STATE_FIELDS

    opening = demos.states[:, ARM_STATE_FIELDS.index("gripper_opening")]
    closes = demos.actions[:, 6] > 0
    before_first_close = np.zeros(len(demos), dtype=bool)
    for episode in np.unique(demos.episode):
        rows = np.flatnonzero(demos.episode == episode)
        first = rows[closes[rows]][0] if closes[rows].any() else rows[-1] + 1
        before_first_close[rows[rows < first]] = True
    return int(np.sum(~closes & (opening < 0.7 * opening.max()) & before_first_close))


def test_gripper_blips_show_a_closing_gripper_labelled_open():
    noisy = {"noise": 0.3, "noisy_fraction": 1.0, "image_size": 32}
    plain = Demos.from_expert(PICK, 2, seed=0, **noisy)
    blipped = Demos.from_expert(PICK, 2, seed=0, grip_blips=0.2, **noisy)
    # Without blips an "open" label on the approach always finds the gripper open; with them
    # the gripper was closed for a few steps at a time while the labels, the expert's, kept
    # saying "open".
    assert _open_labels_on_a_closing_gripper(plain) == 0
    assert _open_labels_on_a_closing_gripper(blipped) >= 4
    assert set(np.unique(blipped.actions[:, 6])) <= {-1.0, 1.0}
    assert blipped.num_episodes == 2
    # Blips come only with the noisy episodes.
    clean = Demos.from_expert(PICK, 2, seed=0, image_size=32)
    unblipped = Demos.from_expert(PICK, 2, seed=0, image_size=32, noisy_fraction=0.0,
                                  grip_blips=1.0)
    np.testing.assert_array_equal(unblipped.states, clean.states)
    with pytest.raises(ValueError, match="grip_blips must be a per-step chance"):
        Demos.from_expert(PICK, 1, grip_blips=-0.1)
    with pytest.raises(ValueError, match="'grip' dimension"):
        Demos.from_expert("vla_gym/NavGoTo-v0", 1, image_size=32, noise=0.1,
                          noisy_fraction=1.0, grip_blips=0.5)


def test_bc_policies_do_not_read_velocities_unless_asked(pick_demos, tmp_path):
    """Joint velocities are left out of the policy's state by default (the copycat shortcut);
    the gripper's velocity is read (it tells when the fingers have settled)."""
    from vla_gym.types import ARM_STATE_FIELDS

    trainer = BCTrainer(pick_demos, tmp_path / "a", _config(steps=1))
    velocity = [i for i, name in enumerate(ARM_STATE_FIELDS) if name.startswith("dq")]
    assert trainer.policy.config.state_indices == tuple(
        i for i in range(len(ARM_STATE_FIELDS)) if i not in velocity)
    obs = pick_demos.batch(np.arange(3))
    moved = {**obs, "state": obs["state"].copy()}
    moved["state"][:, velocity] += 5.0
    np.testing.assert_array_equal(trainer.policy.predict(obs), trainer.policy.predict(moved))
    for read in ("ee_x", "gripper_velocity"):
        moved = {**obs, "state": obs["state"].copy()}
        moved["state"][:, ARM_STATE_FIELDS.index(read)] += 0.1
        assert not np.array_equal(trainer.policy.predict(obs), trainer.policy.predict(moved))
    with_velocity = BCTrainer(pick_demos, tmp_path / "b", _config(steps=1, state_velocities=True))
    assert with_velocity.policy.config.state_indices == ()


def test_other_target_frames_label_other_objects_in_the_same_scenes(tmp_path):
    demos = Demos.from_expert(PICK, 2, seed=0, image_size=32, other_targets=True)
    frames = demos.grounding_frames
    assert frames is not None and len(frames) >= 2 and np.isnan(frames.actions).all()
    first_targets = {demos.targets[demos.episode == e][0] for e in range(2)}
    assert not set(frames.targets) & first_targets  # only the objects the demos were not about
    starts = [np.flatnonzero(demos.episode == e)[0] for e in range(2)]
    for image, pixel, text in zip(frames.images, frames.target_pixel, frames.instructions):
        scene = [i for i in starts if np.array_equal(demos.images[i], image)]
        assert scene, "a grounding frame shows one of the demos' own first frames"
        assert not np.allclose(pixel, demos.target_pixel[scene[0]])  # another object
        assert text != demos.instructions[scene[0]]
    trainer = BCTrainer(demos, tmp_path, _config(steps=3, grounding_weight=1.0))
    metrics = trainer.train_step()
    assert metrics["frames_grounding_loss"] > 0 and np.isfinite(metrics["loss"])


def test_target_geometry_takes_the_demo_envs_calibration_and_records_each_shift(tmp_path):
    import gymnasium as gym

    demos = Demos.from_expert(PICK, 1, seed=0, image_size=32, cameras=("main", "wrist"))
    trainer = BCTrainer(demos, tmp_path, _config(steps=3, grounding_weight=1.0,
                                                 target_geometry=True))
    env = gym.make(PICK, image_size=32, cameras=("main", "wrist"))
    assert trainer.policy.config.geometry.cameras == env.unwrapped.camera_calibration()
    env.close()
    batch = trainer.sample_batch()
    for view, label in (("image", "target_pixel"), ("wrist_image", "wrist_target_pixel")):
        moves = batch[f"{view}_shift"]
        assert moves.shape == (16, 2) and np.abs(moves).max() <= 4 / 32 + 1e-6
        assert np.abs(moves).max() > 0  # shifted, and the label moved by the same amount
        original = batch[label] - moves
        known = demos.target_pixel if view == "image" else demos.wrist_target_pixel
        for row in original[np.isfinite(original).all(1)]:
            assert np.abs(known - row).max(1).min() < 1e-5
        # the landmark's label moves with the image too
        landmark = batch[landmark_label(view)] - moves
        known = demos.landmark_pixel if view == "image" else demos.wrist_landmark_pixel
        for row in landmark[np.isfinite(landmark).all(1)]:
            assert np.abs(known - row).max(1).min() < 1e-5
    metrics = trainer.train_step()
    assert np.isfinite(metrics["loss"]) and "target_height_error_m" in metrics
    unlabelled = dataclasses.replace(demos, target_pos=None)
    with pytest.raises(ValueError, match="target_pos"):
        BCTrainer(unlabelled, tmp_path / "none", _config(grounding_weight=1.0,
                                                         target_geometry=True))


def test_cli_grounding_options_refuse_what_they_cannot_feed(tmp_path):
    from typer.testing import CliRunner

    from vla_gym.cli import app

    result = CliRunner().invoke(app, ["train", "bc", "--dataset", str(tmp_path / "d"),
                                      "--out", str(tmp_path / "run"), "--target-geometry"])
    assert result.exit_code == 2 and "--grounding" in result.output
    result = CliRunner().invoke(app, ["train", "bc", "--dataset", str(tmp_path / "d"),
                                      "--out", str(tmp_path / "run"), "--grounding", "1",
                                      "--relational-grounding"])
    assert result.exit_code == 2 and "--grounding-scenes N" in result.output
    result = CliRunner().invoke(app, ["train", "bc", "--dataset", str(tmp_path / "d"),
                                      "--out", str(tmp_path / "run"), "--landmark-map"])
    assert result.exit_code == 2 and "--grounding" in result.output
    result = CliRunner().invoke(app, ["train", "bc", "--dataset", str(tmp_path / "d"),
                                      "--out", str(tmp_path / "run"),
                                      "--grounding-warmup-steps", "100"])
    assert result.exit_code == 2 and "--grounding to a weight" in result.output


def test_refit_head_fits_the_head_on_frozen_perception_and_leaves_perception_alone(
        pick_demos, tmp_path):
    from vla_gym.training.refit import encode_perception, refit_head

    trainer = BCTrainer(pick_demos, tmp_path, _config(steps=10))
    for _ in range(10):
        trainer.train_step()
    policy = trainer.policy
    vision = {k: v.clone() for k, v in policy.trunk.vision.state_dict().items()}
    head = [p.clone() for p in policy.action_heads[0].parameters()]
    result = refit_head(policy, pick_demos, steps=300, batch_size=64, lr=2e-3)
    assert result.frames == len(pick_demos) and result.steps == 300
    # Ten end-to-end steps leave the head far from the demos; 300 steps on cached
    # features bring the un-augmented action loss well below where it started.
    assert result.final_loss < 0.5 * result.initial_loss, result
    # The standardisation folded into the final MLP: the policy's own forward pass on raw
    # perception has the refitted loss.
    perception, state, actions = encode_perception(policy, pick_demos)
    with torch.no_grad():
        folded = policy.action_loss(policy.trunk.decide(perception, state), actions)[0].item()
    assert folded < 1.5 * result.final_loss, (folded, result)
    assert all(torch.equal(v, policy.trunk.vision.state_dict()[k]) for k, v in vision.items())
    assert not all(torch.equal(a, b) for a, b in zip(head, policy.action_heads[0].parameters()))
    action = policy.act({k: v[0] for k, v in pick_demos.batch(np.array([0])).items()
                         if k != "action"})
    assert action.shape == (7,) and np.isfinite(action).all()
    with pytest.raises(ValueError, match="steps >= 1"):
        refit_head(policy, pick_demos, steps=0)
    with pytest.raises(ValueError, match="refit_head_steps"):
        BCConfig(refit_head_steps=-1)


def test_a_refit_run_reports_its_refit_in_the_result_and_summary(pick_demos, tmp_path):
    import json

    result = train_bc(pick_demos, tmp_path, _config(steps=5, refit_head_steps=20))
    assert result.refit is not None and result.refit["steps"] == 20
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["refit"]["frames"] == len(pick_demos)
    assert result.train_seconds >= result.refit["seconds"]


def test_grounding_warmup_trains_the_maps_alone_then_hands_over_to_bc(tmp_path):
    demos = Demos.from_expert(PICK, 2, seed=0, image_size=32, other_targets=True)
    trainer = BCTrainer(demos, tmp_path, _config(steps=60, lr=2e-3, grounding_weight=1.0,
                                                 grounding_warmup_steps=50))
    policy = trainer.policy

    def same(before, module):
        return all(torch.equal(a, b) for a, b in zip(before, module.parameters()))

    head = [p.clone() for p in policy.action_heads[0].parameters()]
    vision = [p.clone() for p in policy.trunk.vision.parameters()]
    warmup = [trainer.train_step() for _ in range(50)]
    # Warm-up steps see grounding frames only: no action loss, the action head untouched,
    # perception moved and its map loss falling.
    assert all("action_loss" not in m for m in warmup)
    assert same(head, policy.action_heads[0]) and not same(vision, policy.trunk.vision)
    first = np.mean([m["frames_grounding_loss"] for m in warmup[:5]])
    last = np.mean([m["frames_grounding_loss"] for m in warmup[-5:]])
    assert last < 0.8 * first, (first, last)
    after = trainer.train_step()
    assert "action_loss" in after and "frames_grounding_loss" in after
    assert not same(head, policy.action_heads[0])


def test_grounding_warmup_refuses_what_it_cannot_train(pick_demos, tmp_path):
    with pytest.raises(ValueError, match="grounding_warmup_steps must be >= 0"):
        BCConfig(grounding_warmup_steps=-1)
    with pytest.raises(ValueError, match="need grounding_weight > 0"):
        BCConfig(grounding_warmup_steps=10)
    with pytest.raises(ValueError, match="needs demos with grounding frames"):
        BCTrainer(pick_demos, tmp_path, _config(grounding_weight=1.0, grounding_warmup_steps=10))
