"""Serving throughput and latency vs concurrency (1, 4, 16 clients), learning on and off,
with batched verify steps (``engine.max_batch=8``) and without (``max_batch=1``: one request
per forward pass, the baseline), side by side in one run.

Each setting starts ``python -m aurora_rl.serve`` fresh (same world, same draft start),
replays the same fixed request list through the replay client on loopback, and stops the
server (see serving_load.py, whose ``run_setting`` this reuses). Prints one table and writes
``benchmarks/results/serving_concurrency_<world>.{json,md,png}``.

    python benchmarks/serving_concurrency.py                         # tiny world, 48 requests per setting
    python benchmarks/serving_concurrency.py --world default --clients 1,8 --requests 32
    python benchmarks/serving_concurrency.py --clients 1,8 --learning off --serve-arg drafter.kind=eagle --tag eagle
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aurora_rl.serve.replay import ReplayConfig  # noqa: E402
from aurora_rl.world.traffic import load_prompts, make_traffic  # noqa: E402
from serving_load import run_setting  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RESULTS = Path(__file__).parent / "results"


def table(rows: list[dict]) -> str:
    head = "| clients | learning | max_batch | req/s | tokens/s | p50 latency s | p99 latency s | p50 TTFT s | accepted length (first -> last window) | errors | lost |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        windows = r["windows"]
        tau = f"{windows[0]['accepted_length']:.2f} -> {windows[-1]['accepted_length']:.2f}" if windows else "-"
        lines.append(f"| {r['clients']} | {r['learning']} | {r['max_batch']} | {r['requests_per_second']:.2f} | {r['tokens_per_second']:.0f} | "
                     f"{r['latency_seconds']['p50']:.2f} | {r['latency_seconds']['p99']:.2f} | {r['ttft_seconds']['p50']:.2f} | "
                     f"{tau} | {r['errors']} | {r['lost']} |")
    return "\n".join(lines)


def speedups(rows: list[dict]) -> str:
    """Tokens/s of the largest batch over max_batch=1, per clients x learning."""
    batches = sorted({r["max_batch"] for r in rows})
    if len(batches) < 2:
        return ""
    lines = [f"| clients | learning | tokens/s, max_batch={batches[-1]} / max_batch={batches[0]} | p50 latency ratio |",
             "|---|---|---|---|"]
    for clients in sorted({r["clients"] for r in rows}):
        for learning in ("off", "on"):
            pick = {r["max_batch"]: r for r in rows if r["clients"] == clients and r["learning"] == learning}
            if batches[0] in pick and batches[-1] in pick:
                ours, base = pick[batches[-1]], pick[batches[0]]
                lines.append(f"| {clients} | {learning} | {ours['tokens_per_second'] / base['tokens_per_second']:.2f}x | "
                             f"{ours['latency_seconds']['p50'] / base['latency_seconds']['p50']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    settings = sorted({(r["learning"], r["max_batch"]) for r in rows})
    for index, (learning, batch) in enumerate(settings):
        sub = [r for r in rows if (r["learning"], r["max_batch"]) == (learning, batch)]
        clients = [r["clients"] for r in sub]
        style, color, name = "o-" if batch > 1 else "s--", f"C{index}", f"learning {learning}, max_batch {batch}"
        left.plot(clients, [r["tokens_per_second"] for r in sub], style, color=color, label=name)
        right.plot(clients, [r["latency_seconds"]["p50"] for r in sub], style, color=color, label=f"p50, {name}")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="tokens / s", title="throughput", ylim=(0, None))
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="seconds", title="request latency")
    for ax in (left, right):
        ax.set_xticks(sorted({r["clients"] for r in rows}), labels=[str(c) for c in sorted({r["clients"] for r in rows})])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="tiny")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=48, help="requests per setting (the same list each time)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--draft", default="pretrained", help="pretrained | scratch")
    parser.add_argument("--max-batch", default="1,8", help="engine.max_batch values to compare (1 = no batching)")
    parser.add_argument("--learning", default="off,on", help="learning settings to run")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra key=value for the server (repeatable)")
    parser.add_argument("--tag", default="", help="suffix of the results' file names (e.g. eagle)")
    parser.add_argument("--out", default="runs/serving_concurrency", help="server logs and snapshots")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from the last results JSON")
    args = parser.parse_args()
    stem = f"serving_concurrency_{args.world}" + (f"_{args.tag}" if args.tag else "")
    if args.plot_only:
        plot(json.loads((RESULTS / f"{stem}.json").read_text()), RESULTS / f"{stem}.png")
        return 0

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = make_traffic(load_prompts(args.world), "mixed", args.requests, seed=0).requests
    rows = []
    for clients in [int(c) for c in args.clients.split(",")]:
        cfg = ReplayConfig(source=args.world, schedule="mixed", num_requests=args.requests, clients=clients,
                           max_tokens=args.max_tokens, windows=3)  # fmt: skip
        for learning in args.learning.split(","):
            for batch in [int(b) for b in args.max_batch.split(",")]:
                serve_args = [f"world.name={args.world}", f"draft={args.draft}", "torch_threads=1",
                              f"learn={learning == 'on'}", f"engine.max_batch={batch}", *args.serve_arg]  # fmt: skip
                name = f"c{clients}_learning_{learning}_batch{batch}"
                summary = run_setting(name, serve_args, cfg, requests, out_dir)
                summary.pop("server_rss_mib", None)
                rows.append({"clients": clients, "learning": learning, "max_batch": batch, **summary})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = table(rows) + "\n\n" + speedups(rows)
    (RESULTS / f"{stem}.md").write_text(
        f"# Serving vs concurrency ({args.world} world, {args.requests} requests per setting, "
        f"max_tokens {args.max_tokens}, draft {args.draft}{', ' + ' '.join(args.serve_arg) if args.serve_arg else ''})\n\n{text}\n\n![throughput and latency]({stem}.png)\n")
    plot(rows, RESULTS / f"{stem}.png")
    print("\n" + text)
    print(f"\nwrote {RESULTS}/{stem}.{{json,md,png}}")
    return 1 if any(r["errors"] or r["lost"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
