"""The main job end to end on a tiny budget: every artefact of the report exists."""

from __future__ import annotations

import json

from vla_gym.demo import DemoConfig, run_demo
from vla_gym.training.bc import BCConfig


def test_demo_collects_trains_evaluates_and_reports(tmp_path):
    config = DemoConfig(env_id="vla_gym/TabletopPick-v0", episodes=2, num_envs=1,
                        bc=BCConfig(steps=6, batch_size=8, eval_every=0, eval_episodes=1,
                                    eval_num_envs=1), eval_episodes=2)
    summary = run_demo(tmp_path, config, log=lambda *_: None)
    report = (tmp_path / "report.md").read_text()
    assert "learning_curve.png" in report and "held-out paraphrases" in report
    assert "Counterfactual" in report
    for name in ("expert.mp4", "bc/learning_curve.png", "bc/policy/config.json",
                 "eval_train.json", "eval_test.json", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert summary["demos"]["episodes"] == 2 and summary["expert_success"] == 1.0
    assert json.loads((tmp_path / "eval_train.json").read_text())["episodes"] == 2
