"""Bad requests get the right 4xx with an OpenAI-style error body, overload gets 429, a
shutting-down server 503 -- and the server answers the next good request correctly."""

import threading

import httpx
import openai
import pytest

from aurora_rl.runtime.config import EngineSection, ServerSection
from serving_harness import MODEL, greedy, serving, text_of, tiny, tiny_server, wait_for

LIMITS = ServerSection(max_body_bytes=16_384, max_prompt_tokens=400, max_tokens=256)
GOOD = {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 16, "temperature": 0}
TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable_error"}  # fmt: skip


@pytest.fixture(scope="module")
def url():
    with serving(tiny_server(server=LIMITS)) as base:
        yield base


def error(status, message, code, param=None):
    return status, {"error": {"message": message, "type": TYPES[status], "param": param, "code": code}}


def answer(response):
    return response.status_code, response.json()


def assert_still_serving(url, headers=None):
    """The next good request is answered, with the target's own greedy text."""
    tokenizer, model = tiny()
    expected = greedy(model, tokenizer(GOOD["prompt"])["input_ids"], 16, tokenizer.eos_token_id, tokenizer.pad_token_id)
    response = httpx.post(f"{url}/v1/completions", json=GOOD, headers=headers)
    assert response.status_code == 200
    assert response.json()["choices"][0]["text"] == text_of(tokenizer, expected)


def test_malformed_json(url):
    response = httpx.post(f"{url}/v1/completions", content=b'{"model": "aurora-tiny", "prompt": ',
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer(response) == error(400, "We could not parse the JSON body of your request (Expecting value at "
                                          "character 35); send a JSON object with Content-Type: application/json.",
                                     "json_invalid")  # fmt: skip
    assert_still_serving(url)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"model": "gpt-4"}, error(404, "The model 'gpt-4' does not exist; this server serves 'aurora-tiny' (see GET /v1/models).", "model_not_found", "model")),
        ({"max_tokens": -5}, error(400, "Invalid 'max_tokens': Input should be greater than or equal to 1 (got -5).", "invalid_value", "max_tokens")),
        ({"max_tokens": 300}, error(400, "Invalid 'max_tokens': 300 is more than this server allows (256, server.max_tokens).", "invalid_value", "max_tokens")),
        ({"prompt": list(range(3, 404))}, error(400, "The prompt is 401 tokens long; this server accepts at most 400 (server.max_prompt_tokens). Shorten the prompt.", "context_length_exceeded", "prompt")),
        ({"prompt": list(range(3, 303)), "max_tokens": 250}, error(400, "This model's maximum context length is 512 tokens. However, you requested 550 tokens (300 in the prompt, 250 for the completion). Please reduce the prompt or 'max_tokens'.", "context_length_exceeded", "max_tokens")),
        ({"prompt": [5, 99999]}, error(400, "Invalid 'prompt': token ids [99999] lie outside the vocabulary [0, 768).", "invalid_value", "prompt")),
        ({"prompt": ["one", "two"]}, error(400, "Invalid 'prompt': got a batch of 2 prompts; this server takes one prompt per request (send them as separate, concurrent requests).", "invalid_value", "prompt")),
        ({"n": 2}, error(400, "Unsupported parameter: 'n' = 2 is not implemented by this server; omit it (or send 1).", "unsupported_parameter", "n")),
        ({"temperature": 3}, error(400, "Invalid 'temperature': Input should be less than or equal to 2 (got 3).", "invalid_value", "temperature")),
        ({"model": None}, error(400, "Invalid 'model': Input should be a valid string (got None).", "invalid_value", "model")),
    ],
    ids=["unknown-model", "negative-max-tokens", "max-tokens-over-limit", "prompt-too-long", "over-context",
         "token-outside-vocab", "batched-prompts", "unsupported-n", "temperature-range", "model-null"],  # fmt: skip
)
def test_invalid_completion_requests(url, change, expected):
    assert answer(httpx.post(f"{url}/v1/completions", json={**GOOD, **change})) == expected
    assert_still_serving(url)


def test_invalid_chat_requests(url):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert answer(httpx.post(f"{url}/v1/chat/completions", json={**chat, "messages": []})) == error(
        400, "Invalid 'messages': List should have at least 1 item after validation, not 0 (got []).", "invalid_value", "messages")
    assert answer(httpx.post(f"{url}/v1/chat/completions", json={"messages": chat["messages"]})) == error(
        400, "Missing required parameter: 'model'.", "missing_required_parameter", "model")
    assert answer(httpx.post(f"{url}/v1/chat/completions", json={**chat, "logprobs": True})) == error(
        400, "Unsupported parameter: 'logprobs' = True is not implemented by this server; omit it (or send False).",
        "unsupported_parameter", "logprobs")
    assert_still_serving(url)


def test_unknown_url_and_method(url):
    assert answer(httpx.post(f"{url}/v1/embeddings", json={})) == error(
        404, "Unknown request URL: POST /v1/embeddings. See GET /v1/models.", "unknown_url")
    response = httpx.get(f"{url}/v1/completions")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    assert_still_serving(url)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body(url, chunked):
    body = httpx.Request("POST", "/", json={**GOOD, "prompt": "x" * 20_000}).content
    content = iter([body[:8192], body[8192:]]) if chunked else body  # chunked: no Content-Length to go by
    response = httpx.post(f"{url}/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert answer(response) == error(413, "The request body exceeds this server's limit of 16384 bytes "
                                          "(server.max_body_bytes); send a shorter prompt.", "request_too_large")  # fmt: skip
    assert 'aurora_http_requests_total{code="413",endpoint="/v1/completions"}' in httpx.get(f"{url}/metrics").text
    assert_still_serving(url)


def test_openai_client_raises_the_matching_errors(url):
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=4)
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as negative:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=-1)
    assert negative.value.param == "max_tokens"
    assert_still_serving(url)


def test_api_key():
    with serving(tiny_server(server=ServerSection(api_key="sekret"))) as url:
        assert answer(httpx.post(f"{url}/v1/completions", json=GOOD)) == error(
            401, "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.", "missing_api_key")
        wrong = httpx.post(f"{url}/v1/completions", json=GOOD, headers={"Authorization": "Bearer guess"})
        assert answer(wrong) == error(401, "Incorrect API key provided; use the key this server was started with "
                                           "(server.api_key or $AURORA_RL_API_KEY).", "invalid_api_key")  # fmt: skip
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="guess", max_retries=0).models.list()
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
        assert_still_serving(url, headers={"Authorization": "Bearer sekret"})


def test_a_full_queue_answers_429_and_then_serves_everyone():
    server = tiny_server(engine=EngineSection(max_active=1, max_queue=1))
    decoding, release = threading.Event(), threading.Event()

    def hold_first_step(trace):  # keeps the one decode slot busy until the test says so
        decoding.set()
        release.wait(30)

    server.engine.add_trace_listener(hold_first_step)
    with serving(server) as url:
        answers = []
        ask = lambda: answers.append(httpx.post(f"{url}/v1/completions", json=GOOD, timeout=60))  # noqa: E731
        threads = [threading.Thread(target=ask)]
        threads[0].start()
        decoding.wait(30)  # request 1 holds the slot
        threads.append(threading.Thread(target=ask))
        threads[1].start()
        wait_for(lambda: server.engine.queue_depth == 1, what="request 2 to queue")
        assert answer(httpx.post(f"{url}/v1/completions", json=GOOD)) == error(
            429, "The server is at capacity: 1 requests are already waiting (engine.max_queue); retry later.", "queue_full")
        release.set()
        for thread in threads:
            thread.join(60)
        assert [a.status_code for a in answers] == [200, 200]
        assert_still_serving(url)


def test_a_closing_server_answers_503():
    server = tiny_server()
    with serving(server) as url:
        assert_still_serving(url)
        server.engine.close()  # what shutdown does first: stop taking requests
        assert answer(httpx.post(f"{url}/v1/completions", json=GOOD)) == error(
            503, "The server is shutting down and takes no new requests; retry on another replica.", "shutting_down")
        assert httpx.get(f"{url}/health").json()["status"] == "unavailable"
