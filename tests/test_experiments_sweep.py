"""experiments/sweep.py: a real micro study on the tiny world, resumed, then aggregated."""

import json
import os
import subprocess
import sys
from pathlib import Path

SWEEP = Path(__file__).resolve().parents[1] / "experiments" / "sweep.py"
MICRO_STUDY = """\
description: two k values x two seeds, static draft only
base: [world.name=tiny, "arms=[static]", traffic.num_requests=4, traffic.max_new_tokens=12,
       drafter.pretrain_steps=20, traffic.schedule=ordered]
grid:
  decode.k: [1, 3]
seeds: [0, 1]
"""


def sweep(*args, cwd):
    return subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_a_study_runs_every_cell_and_seed_resumes_and_aggregates(tmp_path):
    study = tmp_path / "micro.yaml"
    study.write_text(MICRO_STUDY)
    args = [str(study), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--jobs", "2"]
    first = sweep(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0 of 4 runs already done; 4 to run" in first.stdout
    runs = sorted(p.name for p in (tmp_path / "runs" / "micro").iterdir() if p.is_dir())
    assert runs == ["decode.k=1-seed0", "decode.k=1-seed1", "decode.k=3-seed0", "decode.k=3-seed1"]

    rows = json.loads((tmp_path / "results" / "study.json").read_text())["rows"]
    assert [(r["cell"], r["arm"], r["seeds"]) for r in rows] == [("decode.k=1", "static", 2), ("decode.k=3", "static", 2)]
    # the aggregate is the mean of the runs' own summaries
    per_seed = [json.loads((tmp_path / "runs" / "micro" / f"decode.k=3-seed{s}" / "summary.json").read_text())
                for s in (0, 1)]
    taus = [s["arms"]["static"]["accepted_length"] for s in per_seed]
    assert abs(rows[1]["accepted_length"][0] - sum(taus) / 2) < 1e-9
    assert rows[0]["accepted_length"][0] <= 2.0  # k=1: at most one draft token per verify step
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| decode.k=3 | static | 2 |" in table and " ± " in table
    assert (tmp_path / "results" / "accepted_length.png").stat().st_size > 10_000

    again = sweep(*args, cwd=tmp_path)  # resumes: nothing left to run
    assert again.returncode == 0 and "4 of 4 runs already done; 0 to run" in again.stdout


def test_a_study_with_an_unknown_key_is_refused_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {decode.k: [1]}\nseed: [0]\n")
    result = sweep(str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert f"error: {bad}: unknown study keys ['seed']; use description, base, grid, cells, seeds, plot_arms" in result.stderr
