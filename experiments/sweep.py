"""Run a study: a grid of ``python -m aurora_rl.train`` overrides x seeds, then aggregate.

    python experiments/sweep.py algorithm                 # experiments/studies/algorithm.yaml
    python experiments/sweep.py lookahead --jobs 2 --seeds 0,1,2
    python experiments/sweep.py schedule --set world.name=default   # the same study, bigger world
    python experiments/sweep.py algorithm --aggregate-only

A study file names what every run shares (``base``), what varies (``grid``: the product of
its lists, and/or ``cells``: explicit override sets, each with an optional ``label``), the
``seeds`` and optionally ``plot_arms`` (the arms drawn; default all). Each (cell, seed)
is one run in ``runs/studies/<study>/<cell>-seed<N>/``; a run whose ``summary.json``
exists is done, so an interrupted sweep resumes where it stopped (a half-written run is
deleted and redone). The aggregate goes to ``experiments/results/<study>/``: ``table.md``
(mean +- std over seeds, per cell and arm, overall and per traffic phase), ``study.json``
and ``accepted_length.png`` (accepted length over requests, mean over seeds with the
min-max band, traffic phases shaded).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from aurora_rl.plots import plot_accepted_length

HERE = Path(__file__).resolve().parent
STUDIES = HERE / "studies"
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Run:
    cell: str  # the label of its grid cell, e.g. "algo.name=pg"
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{file_safe(self.cell)}-seed{self.seed}"


def file_safe(label: str) -> str:
    """A cell label as a file or directory name."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label.replace(",", "+")).strip("_")


@dataclass
class Study:
    name: str
    description: str
    base: list[str]
    cells: list[dict]
    seeds: list[int]
    plot_arms: list[str] | None

    @classmethod
    def load(cls, name_or_path: str) -> "Study":
        path = Path(name_or_path)
        if not path.suffix:
            path = STUDIES / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
            raise SystemExit(f"error: no study {name_or_path!r} (looked for {path}); shipped studies: {known}")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise SystemExit(f"error: {path} is not valid YAML (quote an override that holds [ ] or a comma): {error}")
        unknown = set(spec) - {"description", "base", "grid", "cells", "seeds", "plot_arms"}
        if unknown:
            raise SystemExit(f"error: {path}: unknown study keys {sorted(unknown)}; "
                             "use description, base, grid, cells, seeds, plot_arms")
        grid = spec.get("grid") or {}
        varying = [key for key, values in grid.items() if len(values) > 1]
        cells = []
        for values in itertools.product(*grid.values()) if grid else []:
            cell = dict(zip(grid, values))
            cells.append({"label": ",".join(f"{k}={_format(cell[k])}" for k in varying) or "base", **cell})
        for cell in spec.get("cells") or []:  # explicit cells: their own label, or their settings
            cells.append({"label": cell.get("label") or ",".join(f"{k}={_format(v)}" for k, v in cell.items()), **cell})
        if not cells:
            raise SystemExit(f"error: {path}: a study needs a 'grid' or 'cells' to vary")
        return cls(path.stem, spec.get("description", ""), list(spec.get("base") or []), cells,
                   list(spec.get("seeds") or [0]), spec.get("plot_arms"))

    def runs(self, extra: list[str]) -> list[Run]:
        runs = []
        for cell in self.cells:
            settings = [f"{key}={_format(value)}" for key, value in cell.items() if key != "label"]
            for seed in self.seeds:
                runs.append(Run(cell["label"], seed, tuple(self.base + extra + settings + [f"seed={seed}"])))
        return runs


def _format(value) -> str:
    """A YAML value as an OmegaConf command-line value."""
    if isinstance(value, list):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def execute(run: Run, runs_dir: Path, threads: int) -> tuple[Run, float, str | None]:
    """One train run as a subprocess; its output goes to ``<run>.log`` beside it."""
    run_dir = runs_dir / run.name
    if run_dir.exists():  # a run without summary.json was interrupted: redo it from scratch
        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "aurora_rl.train", *run.overrides,
               f"output_dir={runs_dir}", f"run_name={run.name}", "progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    began = time.perf_counter()
    with open(runs_dir / f"{run.name}.log", "w") as log:
        log.write(" ".join(command) + "\n\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - began
    error = None if code == 0 else f"exit {code}, see {runs_dir / (run.name + '.log')}"
    return run, seconds, error


def sweep(runs: list[Run], runs_dir: Path, jobs: int) -> list[str]:
    """Run what is not done yet, ``jobs`` at a time; returns the failures."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = [run for run in runs if not (runs_dir / run.name / "summary.json").exists()]
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to run ({jobs} at a time)")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures = []
    with ThreadPoolExecutor(jobs) as pool, tqdm(total=len(todo), unit="run") as bar:
        for future in as_completed([pool.submit(execute, run, runs_dir, threads) for run in todo]):
            run, seconds, error = future.result()
            bar.update()
            bar.write(f"{run.name}: {'FAILED ' + error if error else 'done'} in {seconds:.0f}s")
            if error:
                failures.append(f"{run.name}: {error}")
    return failures


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(study: Study, runs: list[Run], runs_dir: Path, out_dir: Path) -> list[Path]:
    """table.md, study.json and the plots from the runs' summary.json files.

    Cells whose traffic has the same phases share a table section and a plot; cells with
    other phases (e.g. a study over schedules) get their own, so no column or shaded band
    ever names a phase the cell did not have.
    """
    cells: dict[str, list[dict]] = {}
    for run in runs:
        path = runs_dir / run.name / "summary.json"
        if path.exists():
            cells.setdefault(run.cell, []).append(json.loads(path.read_text()))
    if not cells:
        raise SystemExit(f"error: no finished runs of {study.name!r} under {runs_dir}; run the study first")
    groups: dict[tuple, list[str]] = {}
    for cell, summaries in cells.items():
        phases = summaries[0]["phases"]
        groups.setdefault(tuple((p["label"], p["start"], p["end"]) for p in phases), []).append(cell)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections, plots, all_rows = [], [], []
    for members in groups.values():
        phases = cells[members[0]][0]["phases"]
        rows, series, spread = [], {}, {}
        for cell in members:
            summaries = cells[cell]
            plotted = [a for a in summaries[0]["arms"] if study.plot_arms is None or a in study.plot_arms]
            for arm in summaries[0]["arms"]:
                per_seed = [s["arms"][arm] for s in summaries if arm in s["arms"]]
                rows.append({"cell": cell, "arm": arm, "seeds": len(per_seed),
                             "accepted_length": _mean_std([r["accepted_length"] for r in per_seed]),
                             "phases": [_mean_std([r["phases"][i]["accepted_length"] for r in per_seed])
                                        for i in range(len(phases))],
                             "phase_labels": [p["label"] for p in phases],
                             "tokens_per_s": _mean_std([r["tokens_per_s"] for r in per_seed]),
                             "vs_target_only": _speedups(summaries, arm),
                             "versions": _mean_std([r["versions_published"] for r in per_seed])})
                if arm in plotted:
                    curves = np.array([r["per_request_accepted_length"] for r in per_seed])
                    label = arm if len(members) == 1 else cell if len(plotted) == 1 else f"{cell}: {arm}"
                    series[label] = curves.mean(axis=0).tolist()
                    spread[label] = (curves.min(axis=0).tolist(), curves.max(axis=0).tolist())
        name = "accepted_length.png" if len(groups) == 1 else f"accepted_length_{file_safe(members[0])}.png"
        title = f"study: {study.name}" + ("" if len(groups) == 1 else f", {', '.join(members)}")
        banded = len(series) <= 4  # more bands than that hide the lines
        plots.append(plot_accepted_length(series, phases, out_dir / name, spread=spread if banded else None,
                                          title=f"{title} (mean over seeds" + (", band = min..max)" if banded else ")")))
        sections.append(render_rows(rows, phases, name))
        all_rows += rows
    (out_dir / "study.json").write_text(json.dumps({"study": study.name, "base": study.base, "seeds": study.seeds,
                                                    "rows": all_rows}, indent=2))
    (out_dir / "table.md").write_text("\n".join([f"# study: {study.name}", "", study.description.strip(), "",
                                                 *sections, FOOTNOTE, ""]))
    return plots


FOOTNOTE = ("accepted length = tokens per target verify step (accepted drafts + 1), mean ± std over seeds; "
            "phase columns are means; vs target_only = tok/s over target_only's in the same run, mean ± std "
            "over seeds (tok/s alone compare only between runs that had the machine alike; with --jobs > 1 "
            "runs share the cores).")


def _speedups(summaries: list[dict], arm: str) -> tuple[float, float] | None:
    """The arm's tok/s over target_only's *of the same run*, mean +- std over seeds: the
    figure that survives a machine whose speed drifts between runs."""
    ratios = [s["arms"][arm]["tokens_per_s"] / s["arms"]["target_only"]["tokens_per_s"]
              for s in summaries if arm in s["arms"] and "target_only" in s["arms"]]
    return _mean_std(ratios) if ratios else None


def render_rows(rows: list[dict], phases: list[dict], plot_name: str) -> str:
    pm = lambda m: f"{m[0]:.2f} ± {m[1]:.2f}"  # noqa: E731
    head = ["cell", "arm", "seeds", "accepted length", *[p["label"] for p in phases], "tok/s", "vs target_only",
            "versions"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["cell"], r["arm"], str(r["seeds"]), pm(r["accepted_length"]),
                 *[f"{m[0]:.2f}" for m in r["phases"]], f"{r['tokens_per_s'][0]:.0f}",
                 pm(r["vs_target_only"]) if r["vs_target_only"] else "-", f"{r['versions'][0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", f"![accepted length over requests]({plot_name})", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a name in experiments/studies/ or a path to a study .yaml")
    parser.add_argument("--seeds", help="comma-separated seeds, replacing the study's")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run (they replace the study's base, not what its cells vary)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cpu_count/jobs threads)")
    parser.add_argument("--runs-dir", default="runs/studies", help="where the runs go (<runs-dir>/<study>/)")
    parser.add_argument("--out", help="aggregate directory (default experiments/results/<study>)")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild table and plot from finished runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)

    study = Study.load(args.study)
    if args.seeds:
        study.seeds = [int(s) for s in args.seeds.split(",")]
    runs = study.runs(args.set)
    runs_dir = Path(args.runs_dir) / study.name
    if args.dry_run:
        for run in runs:
            print(shlex.join([sys.executable, "-m", "aurora_rl.train", *run.overrides, f"run_name={run.name}"]))
        return 0
    failures = [] if args.aggregate_only else sweep(runs, runs_dir, args.jobs)
    out_dir = Path(args.out) if args.out else RESULTS / study.name
    plots = aggregate(study, runs, runs_dir, out_dir)
    print((out_dir / "table.md").read_text())
    print(f"wrote {out_dir}/table.md, study.json, " + ", ".join(p.name for p in plots))
    if failures:
        print("failed runs (rerun the same command to retry them):\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
