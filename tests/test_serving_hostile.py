"""Hostile and odd input: every refusal is an OpenAI-style JSON error with the right 4xx
(a bug: a 500 with a JSON body, counted), values OpenAI accepts are accepted, and nothing
cheap to send is expensive to answer -- a huge prompt is refused before it is tokenised, a
client that leaves stops its decoding, a short body or a huge header cannot hold the server."""

import json
import socket
import threading

import httpx
import pytest

from aurora_rl.runtime.config import EngineSection, ServerSection
from serving_harness import MODEL, expected_text, serving, tiny, tiny_server, wait_for

GOOD = {"model": MODEL, "prompt": "def add(a, b):", "max_tokens": 16, "temperature": 0}
SECTION = ServerSection(read_timeout=1.0, max_header_bytes=4096)
TYPES = {400: "invalid_request_error", 401: "authentication_error", 408: "invalid_request_error",
         415: "invalid_request_error", 431: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}  # fmt: skip


@pytest.fixture(scope="module")
def server():
    return tiny_server(server=SECTION)


@pytest.fixture(scope="module")
def url(server):
    with serving(server, SECTION) as base:
        yield base


def error(status, message, code, param=None):
    return status, {"error": {"message": message, "type": TYPES[status], "param": param, "code": code}}


def answer(response):
    assert response.headers["content-type"].startswith("application/json"), response.text  # never plain text
    return response.status_code, response.json()


def assert_still_serving(url, headers=None):
    response = httpx.post(f"{url}/v1/completions", json=GOOD, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_text(GOOD["prompt"], 16)


def test_a_seed_outside_int64_or_uint64_is_a_400_and_the_extremes_work(url):
    assert answer(httpx.post(f"{url}/v1/completions", json={**GOOD, "seed": 18446744073709551616})) == error(
        400, "Invalid 'seed': Input should be less than 18446744073709551616 (got 18446744073709551616).",
        "invalid_value", "seed")
    for seed in (18446744073709551615, -(2**63)):  # the ends of what a generator takes
        sampled = {**GOOD, "temperature": 1.0, "seed": seed}
        first, again = (httpx.post(f"{url}/v1/completions", json=sampled, timeout=120) for _ in range(2))
        assert first.status_code == 200 and first.json()["choices"][0]["text"] == again.json()["choices"][0]["text"]
    assert_still_serving(url)


def post_escaped(url, body):
    """POST ``body`` as ASCII JSON: a lone surrogate travels as the escape ``\\ud800``."""
    return httpx.post(url, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


def test_a_lone_surrogate_is_a_400_naming_where_it_is(url):
    assert answer(post_escaped(f"{url}/v1/completions", {**GOOD, "prompt": "ab\ud800cd"})) == error(
        400, "Invalid 'prompt': character 2 is a lone surrogate (U+D800), which is not valid Unicode; send UTF-8 "
             "text (surrogates only in valid pairs).", "invalid_value", "prompt")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "\udfff"}]}
    assert answer(post_escaped(f"{url}/v1/chat/completions", chat)) == error(
        400, "Invalid 'messages[1].content': character 0 is a lone surrogate (U+DFFF), which is not valid Unicode; "
             "send UTF-8 text (surrogates only in valid pairs).", "invalid_value", "messages[1].content")
    status, body = answer(post_escaped(f"{url}/v1/completions", {**GOOD, "model": "x\ud800"}))
    assert status == 404 and body["error"]["code"] == "model_not_found"  # an echo of it is still valid JSON
    assert_still_serving(url)


def test_a_tiny_temperature_decodes_like_greedy(url):
    """1e-40 (and 1e-320, below float32's range) sharpen the distribution onto the argmax:
    the answer is the target's greedy text, not a NaN error."""
    for temperature in (1e-40, 1e-320):
        response = httpx.post(f"{url}/v1/completions", json={**GOOD, "temperature": temperature, "seed": 3}, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["text"] == expected_text(GOOD["prompt"], 16)


def test_null_is_the_default_for_the_parameters_openai_takes_it_for(url):
    nulls = {"n": None, "stream": None, "echo": None, "presence_penalty": None, "frequency_penalty": None,
             "logprobs": None, "stop": None, "seed": None}  # fmt: skip
    response = httpx.post(f"{url}/v1/completions", json={**GOOD, **nulls}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected_text(GOOD["prompt"], 16)
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
    assert httpx.post(f"{url}/v1/chat/completions", json={**chat, "n": None, "logprobs": None, "stream": None},
                      timeout=120).status_code == 200  # fmt: skip


def test_an_empty_body_and_a_wrong_content_type_say_so(url):
    assert answer(httpx.post(f"{url}/v1/completions", content=b"", headers={"Content-Type": "application/json"})) == error(
        400, "The request body is empty; send a JSON object with the request's parameters (Content-Type: "
             "application/json).", "missing_body")
    assert answer(httpx.post(f"{url}/v1/completions", content=b"prompt=hi",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})) == error(
        415, "Unsupported Content-Type 'application/x-www-form-urlencoded': send the body as JSON with "
             "Content-Type: application/json.", "unsupported_media_type")  # fmt: skip
    charset = httpx.post(f"{url}/v1/completions", json=GOOD, headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status_code == 200
    assert_still_serving(url)


def test_a_bug_is_a_json_500_and_counted(server, url, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(server.engine, "submit", broken)
    assert answer(httpx.post(f"{url}/v1/completions", json=GOOD)) == error(
        500, "The server failed on this request (a bug: it was logged and counted in aurora_internal_errors_total); "
             "retry, and report it if it persists.", "internal_error")
    metrics = httpx.get(f"{url}/metrics").text
    assert "aurora_internal_errors_total 1.0" in metrics
    assert 'aurora_http_requests_total{code="500",endpoint="/v1/completions"} 1.0' in metrics
    monkeypatch.undo()
    assert_still_serving(url)


def test_the_key_is_checked_before_the_body_and_bearer_is_case_insensitive():
    section = ServerSection(api_key="sekret")
    with serving(tiny_server(server=section), section) as url:
        broken_json = httpx.post(f"{url}/v1/completions", content=b'{"model": ', headers={"Content-Type": "application/json"})
        assert answer(broken_json) == error(401, "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.",
                                            "missing_api_key")  # fmt: skip
        for scheme in ("bearer", "BEARER", "Bearer"):
            assert_still_serving(url, headers={"Authorization": f"{scheme} sekret"})


def test_a_full_queue_answers_429_with_retry_after():
    server = tiny_server(engine=EngineSection(max_active=1, max_queue=1))
    release = threading.Event()
    server.engine.add_trace_listener(lambda trace: release.wait(300))  # the one slot stays busy
    with serving(server) as url:
        threads = [threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",), kwargs={"json": GOOD, "timeout": 300})
                   for _ in range(2)]  # fmt: skip
        # One at a time: sent together, the second could find the first still queued (a full
        # queue) on a busy machine and be refused before the slot is taken.
        threads[0].start()
        wait_for(lambda: server.engine.num_active == 1, what="a busy slot")
        threads[1].start()
        wait_for(lambda: server.engine.num_active == 1 and server.engine.queue_depth == 1, what="a busy slot and a full queue")
        full = httpx.post(f"{url}/v1/completions", json=GOOD)
        assert full.status_code == 429 and full.headers["Retry-After"] == "1"
        release.set()
        for thread in threads:
            thread.join()


def test_a_huge_prompt_is_refused_before_tokenising_and_health_answers_meanwhile(url, server, monkeypatch):
    tokenizer, _ = tiny()
    calls = []
    original = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(len(a[0])) or original(self, *a, **k))
    huge = "x" * 1_000_000
    status, body = answer(httpx.post(f"{url}/v1/completions", json={**GOOD, "prompt": huge}, timeout=120))
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["message"].startswith("The prompt is at least ")
    assert calls == []  # never tokenised
    monkeypatch.undo()
    assert_still_serving(url)


def test_a_client_that_leaves_a_non_streamed_request_stops_its_decoding(url, server):
    finished = []
    server.engine.add_finish_listener(lambda stats: finished.append(stats.finish_reason))
    long = {**GOOD, "prompt": "The river ran quietly through the", "max_tokens": 480}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=long, timeout=httpx.Timeout(60, read=0.3))
    wait_for(lambda: "cancelled" in finished, what="the abandoned request to be cancelled")
    wait_for(lambda: server.engine.num_active == 0, what="its decode slot to free")
    assert_still_serving(url)


def test_a_body_shorter_than_its_content_length_times_out_with_408(url):
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=300) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\": ")  # fmt: skip
        reply = b""
        while chunk := sock.recv(65536):  # the server answers, then closes the connection
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    assert b"did not arrive within 1 s (server.read_timeout)" in body
    assert_still_serving(url)


def test_a_header_over_the_limit_is_refused(url):
    response = httpx.get(f"{url}/health", headers={"X-Padding": "a" * 8192})
    status, body = answer(response)
    assert status == 431 and body["error"]["code"] == "headers_too_large"
    assert body["error"]["message"].endswith("this server accepts at most 4096 (server.max_header_bytes). Send fewer "
                                             "or shorter headers.")  # fmt: skip
    assert httpx.get(f"{url}/health").status_code == 200
