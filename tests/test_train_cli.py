"""``python -m aurora_rl.train``: a subprocess smoke run, and bad configs failing before work."""

import json
import os
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aurora_rl.train.__main__ import main
from aurora_rl.policies.factory import DrafterSection
from aurora_rl.train.config import DEFAULT_ARMS, ConfigError, load_config

TINY_RUN = [
    "world.name=tiny",
    "traffic.num_requests=10",
    "traffic.max_new_tokens=24",
    "offline.num_requests=4",
    "offline.updates=6",
    "drafter.pretrain_steps=20",
    "learner.min_traces=8",
    "learner.train_every=16",  # ~12 learner rounds over the ~200 steps: enough to publish, cheap
    "learner.publish_every=2",
    "progress=false",
    # The controller path (bandit by default) has its own tests; pinned here so this smoke
    # run's cost stays what it was (an adaptive k = 0 means more steps, so more learner rounds).
    "decode.controller=fixed",
]


def test_entry_point_runs_every_arm_and_writes_the_run_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "aurora_rl.train", *TINY_RUN, f"output_dir={tmp_path}", "run_name=smoke"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "smoke"
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["arms"]) == list(DEFAULT_ARMS)
    for arm, r in summary["arms"].items():
        assert r["requests"] == 10 and len(r["per_request_accepted_length"]) == 10
        assert r["accepted_length"] >= 1.0 and r["tokens_per_s"] > 0
        assert [p["label"] for p in r["phases"]] == ["code", "prose", "math", "sql", "chat"]
        assert list((run / "tensorboard" / arm).glob("events.out.tfevents.*"))
    online = summary["arms"]["online_scratch"]
    # wall clock by proposals per step: target_only never proposes; a drafting arm's steps are split by k
    assert list(summary["arms"]["target_only"]["step_ms_by_k"]) == ["0"]
    assert all(0 <= int(k) <= 4 and ms > 0 for k, ms in online["step_ms_by_k"].items()) and len(online["step_ms_by_k"]) > 1
    assert online["versions_published"] >= 1 and online["updates"] > 0 and online["learner_state"] == "idle"
    assert summary["arms"]["static"]["versions_published"] == 0
    hybrid = summary["arms"]["online_pretrained+suffix"]
    assert hybrid["versions_published"] >= 1 and 0 < hybrid["suffix_share"] < 1
    resolved = (run / "config.yaml").read_text()
    assert "num_requests: 10" in resolved and "name: tiny" in resolved
    assert (run / "accepted_length.png").stat().st_size > 10_000
    assert "tau = accepted length" in result.stdout
    # One x-axis: requests and learner updates are logged at the arm's global step (verify steps).
    events = EventAccumulator(str(run / "tensorboard" / "online_scratch"), size_guidance={"scalars": 0}).Reload()
    request_steps = [e.step for e in events.Scalars("spec/accepted_length")]
    update_steps = [e.step for e in events.Scalars("learner/version")]
    total_steps = round(sum(online["per_request_tokens"]) / online["accepted_length"])
    assert len(request_steps) == 10 and request_steps == sorted(set(request_steps)) and request_steps[-1] == total_steps
    assert len(update_steps) == online["updates"] + online["rejected_updates"]
    # one trace per engine step (concurrency 1): sync rounds run exactly every train_every=16 traces
    assert update_steps == sorted(update_steps) and all(step % 16 == 0 for step in update_steps)
    assert 16 <= update_steps[0] and update_steps[-1] <= total_steps


def test_arms_batch_requests_through_the_engine_without_changing_their_output(tmp_path):
    """traffic.concurrency=3 advances three requests per engine step (the server's batched
    path); greedy output is the target's either way, so every request emits the same
    number of tokens as at concurrency 1, and the target-only arm never accepts a draft."""
    runs = {}
    for concurrency in (1, 3):
        overrides = [*TINY_RUN, "arms=[target_only,suffix]", f"traffic.concurrency={concurrency}",
                     f"output_dir={tmp_path}", f"run_name=c{concurrency}"]
        assert main(overrides) == 0
        runs[concurrency] = json.loads((tmp_path / f"c{concurrency}" / "summary.json").read_text())["arms"]
    for arm in ("target_only", "suffix"):
        one, three = runs[1][arm], runs[3][arm]
        assert (one["concurrency"], three["concurrency"]) == (1, 3)
        assert one["per_request_tokens"] == three["per_request_tokens"] and len(one["per_request_tokens"]) == 10
    assert set(runs[3]["target_only"]["per_request_accepted_length"]) == {1.0}


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.nme=pg", "bad config key 'algo.nme': Key 'nme' not in 'AlgoConfig'. Did you mean: 'name'?"),
        ("decode.k=0", "decode.k=0 must be >= 1 (proposals per verify step)"),
        ("decode.top_p=0", "decode.top_p=0.0 must be in (0, 1] (1 = off)"),
        ("traffic.schedule=random", "traffic.schedule='random' is not one of mixed, ordered, drift"),
        ("traffic.concurrency=0", "traffic.concurrency=0 must be >= 1"),
        ("offline.updates=0", "offline.updates=0 must be >= 1"),
        ("learner.buffer_capacity=0", "learner.buffer_capacity must be >= 1, got 0"),
        ("learner.gate_margin=abc", "bad config key 'learner.gate_margin': Value 'abc' of type 'str' could not be converted to Float"),
        ("algo.lambda_discard=-1", "algo.lambda_discard must be >= 0, got -1.0"),
        ("world.target=/no/such/model", "world.target='/no/such/model' does not exist: give an existing local path"),
        ("drafter.path=./missing-drafter", "drafter.path='./missing-drafter' does not exist"),
        ("arms=[static,greedy]", "each arm must be one of target_only, static, offline, online_scratch, online_pretrained"),
        ("world.target_weights=int8", "world.target_weights='int8': choose one of ['fp32', 'fp16']"),
        ("drafter.draft_vocab_size=-1", "drafter.draft_vocab_size=-1 must be >= 0 (0 = the full vocabulary)"),
    ],
)
def test_bad_config_fails_before_any_work_naming_key_and_fix(override, message, tmp_path, capsys):
    code = main([override, f"output_dir={tmp_path}"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run directory: nothing started


def test_yaml_file_then_cli_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("algo:\n  name: osd\n  lr: 0.01\ntraffic:\n  schedule: drift\n")
    cfg = load_config(["--config", str(config), "algo.lr=0.02"])
    assert (cfg.algo.name, cfg.algo.lr, cfg.traffic.schedule) == ("osd", 0.02, "drift")
    with pytest.raises(ConfigError, match=re.escape("--config 'nope.yaml' does not exist")):
        load_config(["--config", "nope.yaml"])


def test_help_lists_every_key_with_its_meaning(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for key in ("algo.lambda_discard", "learner.publish_every", "traffic.schedule", "drafter.pretrain_domains"):
        assert key in text


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(["--config", str(path)])


def test_the_drafter_section_says_what_its_kind_needs(tmp_path):
    assert DrafterSection(kind="eagle", eagle_layers=[2, -1]).hidden_layers == (2, -1)
    assert DrafterSection().hidden_layers == () and DrafterSection().pretraining_problem(external_target=False) is None
    assert DrafterSection(kind="eagle").pretraining_problem(external_target=True) is None  # learns from the target
    with pytest.raises(ConfigError) as error:
        load_config([f"world.target={tmp_path}"])
    assert str(error.value) == (
        "world.target is an external model, so the world's drafter pretraining does not fit its vocabulary: set "
        "drafter.path to a small causal LM sharing its tokenizer, or use arms=[online_scratch]"
    )
    assert load_config([f"world.target={tmp_path}", "arms=[online_scratch]"]).world.target == str(tmp_path)
