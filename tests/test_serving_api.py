"""The OpenAI-compatible server, driven over loopback with the official ``openai`` client:
every answer equals the target's own greedy output (lossless), streamed or not, alone or
with concurrent requests."""

import json
import threading

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aurora_rl.runtime.chat import plain_transcript
from serving_harness import MODEL, greedy, serving, text_of, tiny, tiny_server, wait_for

PROMPTS = [
    "def fibonacci(n):\n",
    "SELECT name, price FROM",
    "The river ran quietly through the",
    "Question: 17 + 25 = ?\nAnswer:",
]


@pytest.fixture(scope="module")
def server():
    return tiny_server()


@pytest.fixture(scope="module")
def url(server):
    with serving(server) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def reference(prompt_ids, max_tokens):
    tokenizer, model = tiny()
    return greedy(model, prompt_ids, max_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)


def emitted(server, request_id):
    traces = server.engine.traces_of(request_id)
    assert traces, f"no traces kept for {request_id}"
    return [t for trace in traces for t in trace.emitted.tolist()]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_equals_target_greedy(server, client, prompt):
    tokenizer, _ = tiny()
    ids = tokenizer(prompt)["input_ids"]
    expected = reference(ids, 40)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=40, temperature=0)
    assert emitted(server, response.id) == expected  # token for token
    assert response.choices[0].text == text_of(tokenizer, expected)
    assert response.choices[0].finish_reason == ("stop" if expected[-1] == tokenizer.eos_token_id else "length")
    assert response.usage.prompt_tokens == len(ids) and response.usage.completion_tokens == len(expected)
    spec = response.model_extra["spec_decode"]
    assert spec["verify_steps"] == len(server.engine.traces_of(response.id))
    assert spec["accepted_tokens"] == len(expected) - spec["verify_steps"]  # each step adds one target token
    assert response.system_fingerprint == f"draft-v{server.live.version}"


def test_token_id_prompt_equals_text_prompt(server, client):
    tokenizer, _ = tiny()
    ids = tokenizer(PROMPTS[0])["input_ids"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=24, temperature=0)
    by_text = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=24, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text == text_of(tokenizer, reference(ids, 24))


def test_streamed_completion_is_the_same_text(server, client):
    tokenizer, _ = tiny()
    prompt = PROMPTS[2]
    expected = text_of(tokenizer, reference(tokenizer(prompt)["input_ids"], 48))
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=48, temperature=0, stream=True,
                                       stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # really streamed, step by step
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 48


def chat_reference(question, max_tokens):
    """The target's greedy continuation of the plain chat transcript, cut where it starts
    the next user turn (the plain template's stop string), and its finish reason."""
    tokenizer, _ = tiny()
    ids = reference(tokenizer(plain_transcript([("user", question)]))["input_ids"], max_tokens)
    text = text_of(tokenizer, ids)
    stopped = "\nUser:" in text or ids[-1] == tokenizer.eos_token_id
    return text.split("\nUser:")[0], "stop" if stopped else "length"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_equals_target_greedy(client, stream):
    question = "How many metres are in 3 kilometres?"
    expected, finish_reason = chat_reference(question, 64)
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=64, temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        response = client.chat.completions.create(**kwargs)
        text, finish = response.choices[0].message.content, response.choices[0].finish_reason
    assert text == expected and finish == finish_reason


def test_stop_strings_cut_the_text_and_finish_with_stop(client):
    tokenizer, _ = tiny()
    full = text_of(tokenizer, reference(tokenizer(PROMPTS[0])["input_ids"], 48))
    stop = full[20:23]  # a string the target is known to produce
    response = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=48, temperature=0, stop=[stop])
    assert response.choices[0].text == full[: full.index(stop)]
    assert response.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=48, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model=MODEL, prompt=PROMPTS[1], max_tokens=32, temperature=1.0, top_p=0.95)
    first = client.completions.create(**kwargs, seed=7).choices[0].text
    assert client.completions.create(**kwargs, seed=7).choices[0].text == first
    others = {client.completions.create(**kwargs, seed=s).choices[0].text for s in (8, 9, 10)}
    assert others - {first}  # a different seed draws a different sample


def test_concurrent_requests_are_interleaved_and_lossless(server, client):
    tokenizer, _ = tiny()
    prompts = [p + suffix for p in PROMPTS for suffix in ("", " x")]
    results = {}

    def ask(prompt):
        results[prompt] = client.completions.create(model=MODEL, prompt=prompt, max_tokens=32, temperature=0)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for prompt, response in results.items():
        assert emitted(server, response.id) == reference(tokenizer(prompt)["input_ids"], 32), prompt
    spans = sorted((ts[0].wall_time, ts[-1].wall_time) for r in results.values() for ts in [server.engine.traces_of(r.id)])
    overlapping = sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert len(results) == 8 and overlapping >= 4  # requests were decoded side by side, step by step


def test_models_health_and_metrics(server, client, url):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "ok", "model": MODEL, "draft_version": server.live.version, "learner": "off",
                      "queue_depth": 0, "active_requests": 0}  # fmt: skip

    def scrape():
        samples = {}
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    before = scrape()
    response = client.completions.create(model=MODEL, prompt=PROMPTS[3], max_tokens=40, temperature=0)
    after = scrape()
    spec = response.model_extra["spec_decode"]

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("aurora_draft_steps_total") == spec["verify_steps"]
    assert delta("aurora_verify_forwards_total") == spec["verify_steps"]  # alone: one forward per step
    assert delta("aurora_draft_tokens_total") == spec["proposed_tokens"]
    assert delta("aurora_accepted_tokens_total") == spec["accepted_tokens"]
    assert delta("aurora_generated_tokens_total") == response.usage.completion_tokens
    assert sum(delta("aurora_position_accepted_total", position=str(i)) for i in range(4)) == spec["accepted_tokens"]
    assert delta("aurora_accepted_length_count") == spec["verify_steps"]
    assert delta("aurora_http_requests_total", endpoint="/v1/completions", code="200") == 1
    assert after[("aurora_draft_version", ())] == server.live.version
    assert after[("aurora_queue_depth", ())] == 0
    assert after[("aurora_learner_state", (("state", "off"),))] == 1


def test_a_client_that_disconnects_mid_stream_frees_its_decode_slot(server, url):
    def cancelled():
        text = httpx.get(f"{url}/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith('aurora_requests_total{finish_reason="cancelled"}'))  # fmt: skip

    before = cancelled()
    body = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as response:
        first = next(line for line in response.iter_lines() if line.startswith("data: "))
    request_id = json.loads(first[len("data: ") :])["id"]
    wait_for(lambda: cancelled() == before + 1, what="the engine to cancel the request")
    assert server.engine.num_active == 0
    generated = sum(len(t.emitted) for t in server.engine.traces_of(request_id))
    assert generated < len(reference(tiny()[0](PROMPTS[0])["input_ids"], 400))  # it stopped before its budget
