"""Traffic: seeded, domain-tagged request streams over any prompt dataset.

Three schedules model how production traffic moves between domains:

- `mixed`: every request's domain is drawn i.i.d. and uniformly (a stationary mixture).
- `ordered`: equal contiguous blocks, one domain each, in order (abrupt shifts).
- `drift`: the mixture weights slide smoothly from one domain to the next (gradual shift).

`ordered` and `drift` visit `num_phases` domains (default: each domain once, cycling
through `domains` when there are more phases than domains). Within a domain, rows are
drawn without replacement until the domain is exhausted, then reshuffled.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from .recipe import RECIPES
from .world import World, get_world

SCHEDULES = ("mixed", "ordered", "drift")
DEFAULT_DOMAIN = "default"


@dataclass(frozen=True)
class Request:
    """One prompt in a stream; `phase` indexes `TrafficStream.phases`."""

    index: int
    request_id: str
    domain: str
    prompt: str
    reference: str
    phase: int


@dataclass(frozen=True)
class Phase:
    """Requests [start, end) of a stream; `label` is the block's domain, the dominant domain, or "mixed"."""

    start: int
    end: int
    label: str


@dataclass(frozen=True)
class TrafficStream:
    """A reproducible sequence of requests and the phases that partition it."""

    requests: list[Request]
    schedule: str
    phases: list[Phase]

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)


def load_prompts(source: World | datasets.Dataset | str | os.PathLike, split: str = "heldout") -> datasets.Dataset:
    """A prompt dataset with columns domain, prompt, reference from any of five sources.

    Args:
        source: a `World`; a world name ("tiny", "default"); a local `.jsonl` or `.parquet`
            file; a Hugging Face dataset id (needs a network or a local HF cache); or an
            already loaded `datasets.Dataset` (returned as it is, so env copies share one).
        split: the world split ("train" / "heldout") or the HF split ("train", "test", ...);
            ignored for local files.

    Only `prompt` is required; a missing `domain` becomes "default", a missing `reference` "".
    """
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, World):
        return source.dataset(split)
    if isinstance(source, str) and source in RECIPES:
        return get_world(source).dataset(split)
    path = Path(source)
    if path.suffix in (".jsonl", ".parquet"):
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {path} does not exist.")
        table = pa_json.read_json(path) if path.suffix == ".jsonl" else pq.read_table(path)
        dataset = datasets.Dataset(table)
    else:
        try:
            dataset = datasets.load_dataset(str(source), split=split)
        except Exception as error:
            raise ValueError(
                f"could not load {str(source)!r} (split {split!r}) as a Hugging Face dataset: {error}. "
                f"Without a network, pass a World, one of {sorted(RECIPES)}, or a local .jsonl / .parquet file."
            ) from error
    return _normalise_columns(dataset, str(source))


def _normalise_columns(dataset: datasets.Dataset, source: str) -> datasets.Dataset:
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"{source}: missing required column(s) ['prompt']; found {dataset.column_names}. "
            "Each row needs a 'prompt' string (optional: 'domain', 'reference')."
        )
    for column, default in (("domain", DEFAULT_DOMAIN), ("reference", "")):
        if column not in dataset.column_names:
            dataset = dataset.add_column(column, [default] * len(dataset))
    return dataset.select_columns(["domain", "prompt", "reference"])


def _visit_of_request(schedule: str, num_visits: int, num_requests: int) -> np.ndarray:
    """Index of the visit each request belongs to: its block (ordered) or its dominant visit (drift)."""
    if schedule == "mixed":
        return np.zeros(num_requests, dtype=int)
    if schedule == "ordered":
        return np.arange(num_requests) * num_visits // num_requests
    return np.rint(np.linspace(0, num_visits - 1, num_requests)).astype(int)


def _domain_weights(schedule: str, visit_domains: np.ndarray, num_domains: int, num_requests: int) -> np.ndarray:
    """Probability of each domain for each request, shape (num_requests, num_domains).

    `visit_domains[v]` is the domain index of visit v.
    """
    requests = np.arange(num_requests)
    weights = np.zeros((num_requests, num_domains))
    if schedule == "mixed":
        weights[:] = 1 / num_domains
    elif schedule == "ordered":
        weights[requests, visit_domains[_visit_of_request(schedule, len(visit_domains), num_requests)]] = 1.0
    else:  # drift: a piecewise-linear crossfade from each visit's domain to the next one's
        position = np.linspace(0, len(visit_domains) - 1, num_requests)
        lower = np.floor(position).astype(int)
        upper = np.minimum(lower + 1, len(visit_domains) - 1)
        # add.at, not assignment: consecutive visits may share a domain
        np.add.at(weights, (requests, visit_domains[lower]), 1 - (position - lower))
        np.add.at(weights, (requests, visit_domains[upper]), position - lower)
    return weights


def _phases(labels: list[str], visit_of_request: np.ndarray) -> tuple[list[Phase], np.ndarray]:
    """Maximal runs of requests in the same visit, and each request's phase index."""
    starts = [0, *(np.flatnonzero(np.diff(visit_of_request)) + 1).tolist()]
    ends = [*starts[1:], len(visit_of_request)]
    phases = [Phase(start, end, labels[visit_of_request[start]]) for start, end in zip(starts, ends)]
    phase_of_request = np.repeat(np.arange(len(phases)), [end - start for start, end in zip(starts, ends)])
    return phases, phase_of_request


def make_traffic(
    dataset: datasets.Dataset,
    schedule: str,
    num_requests: int,
    seed: int,
    *,
    domains: list[str] | None = None,
    num_phases: int | None = None,
) -> TrafficStream:
    """Draw a reproducible stream of `num_requests` requests from `dataset` under `schedule`.

    Args:
        dataset: columns domain, prompt, reference (see `load_prompts`).
        schedule: one of "mixed", "ordered", "drift".
        num_requests: stream length (>= 1).
        seed: the same seed, dataset and arguments give the same stream.
        domains: domains to draw from, in visiting order; default: the dataset's, in order of first appearance.
        num_phases: domain visits for ordered / drift (default len(domains)); must be None or 1 for mixed.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {list(SCHEDULES)}.")
    if num_requests < 1:
        raise ValueError(f"num_requests={num_requests}: must be >= 1.")
    domain_of_row = np.asarray(list(dataset["domain"]))
    available = list(dict.fromkeys(domain_of_row.tolist()))
    domains = list(domains) if domains is not None else available
    missing = [domain for domain in domains if domain not in available]
    if not domains or missing:
        raise ValueError(f"domains {domains!r}: must be a non-empty subset of the dataset's domains {available}.")
    if schedule == "mixed" and num_phases not in (None, 1):
        raise ValueError(f"num_phases={num_phases} with schedule 'mixed': a mixed stream has one phase; pass None.")
    num_phases = num_phases if num_phases is not None else len(domains)
    if num_phases < 1:
        raise ValueError(f"num_phases={num_phases}: must be >= 1.")
    visits = [domains[i % len(domains)] for i in range(num_phases)]
    visit_domains = np.array([domains.index(domain) for domain in visits])
    weights = _domain_weights(schedule, visit_domains, len(domains), num_requests)
    labels = ["mixed"] if schedule == "mixed" else visits
    phases, phase_of_request = _phases(labels, _visit_of_request(schedule, len(labels), num_requests))

    rng = np.random.default_rng(seed)
    rows_of = {domain: np.flatnonzero(domain_of_row == domain) for domain in domains}
    decks: dict[str, list[int]] = {domain: [] for domain in domains}
    requests = []
    for index in range(num_requests):
        domain = domains[rng.choice(len(domains), p=weights[index])]
        if not decks[domain]:
            decks[domain] = rng.permutation(rows_of[domain]).tolist()
        row = dataset[decks[domain].pop()]
        requests.append(
            Request(
                index=index,
                request_id=f"{schedule}-s{seed}-{index:06d}",
                domain=domain,
                prompt=row["prompt"],
                reference=row["reference"],
                phase=int(phase_of_request[index]),
            )
        )
    return TrafficStream(requests=requests, schedule=schedule, phases=phases)
