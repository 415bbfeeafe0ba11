"""Traffic streams: reproducible schedules with domain tags, and prompt loading from any source."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aurora_rl.world import SCHEDULES, get_world, load_prompts, make_traffic

DOMAINS = ["code", "prose", "math", "sql", "chat"]


@pytest.fixture(scope="module")
def prompts():
    """12 rows per domain, prompts naming their domain so tags can be checked against content."""
    rows = [{"domain": d, "prompt": f"{d} prompt {i}", "reference": f"{d} reference {i}"} for d in DOMAINS for i in range(12)]
    return datasets.Dataset.from_list(rows)


def shares(requests, domain):
    return sum(request.domain == domain for request in requests) / len(requests)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_are_reproducible_seeded_and_tagged(prompts, schedule):
    stream = make_traffic(prompts, schedule, num_requests=200, seed=0)
    assert stream == make_traffic(prompts, schedule, num_requests=200, seed=0)
    assert [r.prompt for r in stream] != [r.prompt for r in make_traffic(prompts, schedule, num_requests=200, seed=1)]
    assert stream.schedule == schedule and len(stream) == 200
    assert [r.index for r in stream] == list(range(200))
    assert len({r.request_id for r in stream}) == 200
    for request in stream:
        assert request.prompt.startswith(f"{request.domain} prompt ")
        assert request.reference == request.prompt.replace("prompt", "reference")
        phase = stream.phases[request.phase]
        assert phase.start <= request.index < phase.end
    assert stream.phases[0].start == 0 and stream.phases[-1].end == 200
    assert all(a.end == b.start for a, b in zip(stream.phases, stream.phases[1:]))


def test_mixed_is_uniform_over_domains(prompts):
    stream = make_traffic(prompts, "mixed", num_requests=5000, seed=3)
    assert [(p.start, p.end, p.label) for p in stream.phases] == [(0, 5000, "mixed")]
    assert all(abs(shares(stream.requests, d) - 0.2) < 0.03 for d in DOMAINS)


def test_ordered_has_equal_blocks_in_domain_order(prompts):
    stream = make_traffic(prompts, "ordered", num_requests=100, seed=0)
    assert [(p.start, p.end, p.label) for p in stream.phases] == [(20 * i, 20 * i + 20, d) for i, d in enumerate(DOMAINS)]
    assert all(r.domain == DOMAINS[r.index // 20] and r.phase == r.index // 20 for r in stream)
    # More phases than domains cycles through them; a subset of domains keeps the given order.
    cycled = make_traffic(prompts, "ordered", num_requests=70, seed=0, domains=["sql", "code"], num_phases=7)
    assert [p.label for p in cycled.phases] == ["sql", "code", "sql", "code", "sql", "code", "sql"]
    assert all(p.end - p.start == 10 for p in cycled.phases)


def test_ordered_draws_without_replacement_until_a_domain_is_exhausted(prompts):
    stream = make_traffic(prompts, "ordered", num_requests=24, seed=0, domains=["math"])
    first, second = [r.prompt for r in stream][:12], [r.prompt for r in stream][12:]
    assert len(set(first)) == 12 and len(set(second)) == 12  # each row once, then a reshuffled second pass
    assert first != second


def test_drift_moves_the_mixture_gradually(prompts):
    stream = make_traffic(prompts, "drift", num_requests=3000, seed=0, domains=["code", "math", "chat"])
    requests = stream.requests
    start, middle, end = requests[:300], requests[1350:1650], requests[-300:]
    assert shares(start, "code") > 0.8 and shares(middle, "math") > 0.8 and shares(end, "chat") > 0.8
    # Halfway between two visits the mixture is about even: a crossfade, not a switch.
    quarter = requests[600:900]
    assert 0.3 < shares(quarter, "code") < 0.7 and 0.3 < shares(quarter, "math") < 0.7
    code_by_tenth = [shares(requests[i : i + 300], "code") for i in range(0, 1500, 300)]
    assert code_by_tenth == sorted(code_by_tenth, reverse=True)
    assert [p.label for p in stream.phases] == ["code", "math", "chat"]
    assert [(p.start, p.end) for p in stream.phases] == [(0, 750), (750, 2250), (2250, 3000)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"schedule": "bursty"}, "unknown schedule 'bursty': choose one of ['mixed', 'ordered', 'drift']"),
        ({"domains": ["code", "poetry"]}, "must be a non-empty subset of the dataset's domains"),
        ({"num_phases": 3}, "num_phases=3 with schedule 'mixed'"),
        ({"num_requests": 0}, "num_requests=0: must be >= 1"),
    ],
)
def test_make_traffic_rejects_bad_arguments(prompts, kwargs, message):
    arguments = {"schedule": "mixed", "num_requests": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError) as error:
        make_traffic(prompts, **arguments)
    assert message in str(error.value)


def test_load_prompts_from_jsonl_and_parquet(tmp_path):
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": f"q{i}", "domain": "support", "extra": i}) + "\n" for i in range(3)))
    from_jsonl = load_prompts(jsonl)
    assert from_jsonl.column_names == ["domain", "prompt", "reference"]
    assert from_jsonl[2] == {"domain": "support", "prompt": "q2", "reference": ""}

    parquet = tmp_path / "requests.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "reference": ["x", "y"]}), parquet)
    from_parquet = load_prompts(parquet)
    assert list(from_parquet) == [
        {"domain": "default", "prompt": "a", "reference": "x"},
        {"domain": "default", "prompt": "b", "reference": "y"},
    ]
    assert [r.domain for r in make_traffic(from_parquet, "mixed", 4, seed=0)] == ["default"] * 4


def test_load_prompts_names_a_missing_prompt_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "hello", "domain": "chat"}\n')
    with pytest.raises(ValueError) as error:
        load_prompts(path)
    assert str(error.value) == (
        f"{path}: missing required column(s) ['prompt']; found ['text', 'domain']. "
        "Each row needs a 'prompt' string (optional: 'domain', 'reference')."
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(tmp_path / "absent.parquet")


def test_load_prompts_from_a_world():
    tiny = get_world("tiny", progress=False)
    assert list(load_prompts(tiny)["prompt"]) == list(tiny.dataset("heldout")["prompt"])
    assert len(load_prompts("tiny", split="train")) == len(tiny.dataset("train"))
    stream = make_traffic(load_prompts(tiny), "ordered", num_requests=50, seed=0)
    assert [p.label for p in stream.phases] == tiny.domains


def test_load_prompts_offline_hub_id_fails_clearly():
    with pytest.raises(ValueError, match=r"as a Hugging Face dataset.*local \.jsonl / \.parquet file"):
        load_prompts("aurora-rl-nonexistent/no-such-dataset", split="test")
