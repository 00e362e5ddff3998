"""`minigpt serve` under hostile input, over real HTTP against a live server: range checks of
every numeric field, a failing batcher, body limits, slow work kept off the event loop, the
`Host` check, the key on every non-health route, and invalid text. Each attack runs beside a
normal request, which must still be answered within a second."""

from __future__ import annotations

import json
import threading
import time

import pytest

from minigpt.inference import GenerationEngine
from minigpt.inference.batching import BatchRequest, ContinuousBatcher
from minigpt.tokenizer.chat import chat_eos_ids

from serving import Running

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx2")

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(model_dir):
    from minigpt.inference.server import default_allowed_hosts
    from minigpt.recipes.serve import build_server

    running = Running(build_server(str(model_dir), max_batch_size=4, max_queue=8, device="cpu",
                                   allowed_hosts=default_allowed_hosts("127.0.0.1"), max_request_bytes=2**20))
    yield running
    running.stop()


def post(server, body, path="/v1/chat/completions", **kw):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=data, headers={"Content-Type": "application/json", **kw.pop("headers", {})},
                      timeout=kw.pop("timeout", 60), **kw)


class Bystander:
    """A normal client that, while an attack runs, asks `/health` and a one-token chat reply
    every 0.1 s and records each answer's latency and status."""

    def __init__(self, server) -> None:
        self.server, self.latencies, self.statuses = server, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                for method, path, body in (("GET", "/health", None),
                                           ("POST", "/v1/chat/completions", {"messages": HI, "max_tokens": 1})):
                    start = time.perf_counter()
                    r = client.request(method, self.server.url + path, json=body)
                    self.latencies.append(time.perf_counter() - start)
                    self.statuses.append(r.status_code)
                time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)
        self._stop.set()
        self._thread.join(30)
        assert self.latencies, "the bystander made no request"
        assert set(self.statuses) == {200}, self.statuses
        assert max(self.latencies) < 1.0, f"a normal request waited {max(self.latencies):.2f} s during the attack"


# ------------------------------------------------------------------------------------------
# Request fields: every number is range-checked by the request model
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,param", [
    ("seed", 2**70, "seed"),
    ("seed", -(2**70), "seed"),
    ("n", 17, "n"),
    ("n", 0, "n"),
    ("max_tokens", 2**40, "max_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("max_completion_tokens", -1, "max_completion_tokens"),
    ("top_k", -1, "top_k"),
    ("top_k", 2**40, "top_k"),
    ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("temperature", -0.1, "temperature"),
    ("temperature", 2.5, "temperature"),
    ("presence_penalty", 2.5, "presence_penalty"),
    ("frequency_penalty", -2.5, "frequency_penalty"),
    ("logit_bias", {"5": 101}, "logit_bias"),
    ("logit_bias", {"5": -1000}, "logit_bias"),
    ("logit_bias", {"999999": 1}, "logit_bias"),
    ("stop", ["x" * 1025], "stop"),
])
def test_an_out_of_range_field_is_a_400_naming_it(server, field, value, param):
    r = post(server, {"messages": HI, "max_tokens": 2, field: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    # The server is unharmed: the next request is answered and /health is ok.
    assert post(server, {"messages": HI, "max_tokens": 1}).status_code == 200
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_the_seed_found_by_the_probe_no_longer_takes_the_server_down(server):
    """2**70 used to kill the batcher thread: every later request got 503, /health said ok."""
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="seed"):
        client.chat.completions.create(model="tiny-chat", messages=HI, seed=2**70, max_tokens=2)
    for seed in (0, 2**63 - 17, -(2**63)):  # the edges of the range are served
        r = client.chat.completions.create(model="tiny-chat", messages=HI, seed=seed, max_tokens=2)
        assert r.choices[0].finish_reason in ("stop", "length")
    assert server.batcher.alive


def test_logit_bias_and_penalties_change_the_reply_as_openai_defines_them(server, loaded):
    _, tok = loaded
    client = server.client()
    plain = client.completions.create(model="tiny-chat", prompt="the cat", max_tokens=8, temperature=0)
    forced_id = tok("z", add_special_tokens=False)["input_ids"][0]
    forced = client.completions.create(model="tiny-chat", prompt="the cat", max_tokens=8, temperature=0,
                                       logit_bias={str(forced_id): 100})
    assert forced.choices[0].text == "z" * 8 != plain.choices[0].text
    # Banning the first greedy token changes the reply's start.
    first = tok(plain.choices[0].text, add_special_tokens=False)["input_ids"][0]
    banned = client.completions.create(model="tiny-chat", prompt="the cat", max_tokens=8, temperature=0,
                                       logit_bias={str(first): -100})
    assert tok(banned.choices[0].text, add_special_tokens=False)["input_ids"][0] != first
    # A strong frequency penalty forbids repeating a token the greedy reply repeats.
    long_plain = client.completions.create(model="tiny-chat", prompt="the cat", max_tokens=40, temperature=0).choices[0].text
    ids = tok(long_plain, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) < len(ids), "the test needs a greedy reply that repeats a token"
    penalised = client.completions.create(model="tiny-chat", prompt="the cat", max_tokens=40, temperature=0,
                                          frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    assert penalised != long_plain


def test_the_batcher_applies_the_penalty_to_generated_counts(loaded):
    """Frequency penalty 2 subtracts 2 per earlier occurrence: against a biased single
    favourite, the reply alternates away from it once it has been produced."""
    model, tok = loaded
    engine = GenerationEngine(model, eos_token_id=chat_eos_ids(tok), pad_token_id=tok.pad_token_id)
    batcher = ContinuousBatcher(engine, max_batch_size=1, max_queue=2).start()
    try:
        z = tok("z", add_special_tokens=False)["input_ids"][0]
        got: list[int] = []
        done = threading.Event()
        batcher.submit(BatchRequest([5, 6, 7], 6, temperature=0, logit_bias={z: 100}, on_token=got.append,
                                    on_finish=lambda reason: done.set()))
        assert done.wait(30) and got == [z] * 6
        got.clear()
        done.clear()
        # A bias of 10 makes z the first token; each occurrence then costs it 2 (frequency)
        # plus 2 once (presence), so within 8 tokens the penalty outweighs the bias.
        batcher.submit(BatchRequest([5, 6, 7], 8, temperature=0, logit_bias={z: 10.0}, frequency_penalty=2.0,
                                    presence_penalty=2.0, on_token=got.append, on_finish=lambda reason: done.set()))
        assert done.wait(30)
        assert got[0] == z and got.count(z) < 8
    finally:
        batcher.close()


# ------------------------------------------------------------------------------------------
# A batcher that fails
# ------------------------------------------------------------------------------------------


def test_a_request_that_fails_in_the_batcher_fails_alone_and_the_loop_goes_on(loaded):
    """A failure injected where one request is admitted (its generator) ends that request with
    an error; the loop keeps serving the others."""
    from minigpt.inference.server import OpenAIServer, create_app

    model, tok = loaded
    engine = GenerationEngine(model, eos_token_id=chat_eos_ids(tok), pad_token_id=tok.pad_token_id)
    batcher = ContinuousBatcher(engine, max_batch_size=2, max_queue=4)
    real = batcher._request_generator

    def fails_for_seed_13(request):
        if request.seed == 13:
            raise RuntimeError("injected")
        return real(request)

    batcher._request_generator = fails_for_seed_13
    running = Running(create_app(OpenAIServer(batcher, tok, "tiny-chat")))
    try:
        r = post(running, {"messages": HI, "max_tokens": 2, "seed": 13})
        assert r.status_code == 500 and "injected" in r.json()["error"]["message"]
        r = post(running, {"messages": HI, "max_tokens": 2, "seed": 14})
        assert r.status_code == 200
        assert httpx.get(running.url + "/health").status_code == 200 and batcher.restarts == 0
    finally:
        running.stop()


def test_a_loop_that_dies_is_restarted_then_reported_and_the_server_stops(loaded):
    """The loop itself raising is restarted (its requests end with the error); failing more
    than `max_restarts` times a minute, the batcher stops for good: /health says 503, requests
    get 503, and `on_failure` (which `minigpt serve` uses to exit non-zero) is called."""
    from minigpt.inference.server import OpenAIServer, create_app

    model, tok = loaded
    engine = GenerationEngine(model, eos_token_id=chat_eos_ids(tok), pad_token_id=tok.pad_token_id)
    batcher = ContinuousBatcher(engine, max_batch_size=2, max_queue=4)
    real_prefill = batcher._prefill
    failing = threading.Event()
    failing.set()

    def prefill(*args):  # the loop itself fails once, with a request admitted to a slot
        if failing.is_set():
            failing.clear()
            raise RuntimeError("injected loop fault")
        return real_prefill(*args)

    batcher._prefill = prefill
    calls: list[str] = []
    running = Running(create_app(OpenAIServer(batcher, tok, "tiny-chat"), on_failure=calls.append))
    try:
        r = post(running, {"messages": HI, "max_tokens": 2})
        assert r.status_code == 500 and "injected loop fault" in r.json()["error"]["message"]
        assert post(running, {"messages": HI, "max_tokens": 2}).status_code == 200
        assert batcher.restarts == 1 and httpx.get(running.url + "/health").status_code == 200

        batcher.max_restarts = 1  # a second failure within the minute is one too many
        failing.set()
        r = post(running, {"messages": HI, "max_tokens": 2})
        assert r.status_code == 500 and "injected loop fault" in r.json()["error"]["message"]
        deadline = time.time() + 20
        while not calls and time.time() < deadline:
            time.sleep(0.05)
        assert calls == ["error: RuntimeError: injected loop fault"]
        health = httpx.get(running.url + "/health")
        assert health.status_code == 503 and "injected loop fault" in health.json()["error"]
        r = post(running, {"messages": HI, "max_tokens": 2})
        assert r.status_code == 503 and "injected loop fault" in r.json()["error"]["message"]
    finally:
        running.stop()


def test_the_serve_command_exits_non_zero_when_its_loop_dies(model_dir, monkeypatch):
    from minigpt.recipes import serve as serve_mod

    def always(self):
        raise RuntimeError("permanent fault")

    monkeypatch.setattr(ContinuousBatcher, "_loop", always)
    monkeypatch.setattr(ContinuousBatcher, "max_restarts", 0, raising=False)
    real_init = ContinuousBatcher.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        self.max_restarts = 0

    monkeypatch.setattr(ContinuousBatcher, "__init__", init)
    code: list = []

    def run():
        try:
            serve_mod.serve(str(model_dir), port=0, device="cpu", log_level="critical")
            code.append(0)
        except SystemExit as e:
            code.append(e.code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert code == [1]


# ------------------------------------------------------------------------------------------
# Bodies: size limit, slow work off the event loop, invalid text
# ------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_a_413_before_it_is_read(server):
    big = json.dumps({"messages": [{"role": "user", "content": "a" * (2**20 + 10)}]}).encode()
    with Bystander(server):
        start = time.perf_counter()
        r = post(server, big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert time.perf_counter() - start < 2

        def chunks():  # no Content-Length: the limit applies to the bytes as they arrive
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536]

        r = httpx.post(server.url + "/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_a_large_prompt_does_not_stall_other_clients(server):
    """A message just under the body limit: refused as beyond the context by its size alone, and
    whatever it costs, other clients are answered within a second meanwhile."""
    with Bystander(server):
        for text in ("word " * 200_000, "\u4e2d" * 150_000, "[" * 900_000):
            r = post(server, {"messages": [{"role": "user", "content": text}]})
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
            r = post(server, {"prompt": text}, path="/v1/completions")
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        # Many small messages that fit the byte bound but not the context are tokenized off the loop.
        many = [{"role": "user", "content": "hello world " * 20}] * 200
        r = post(server, {"messages": many})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_render_is_bounded_and_does_not_stall_other_clients(server):
    with Bystander(server):
        r = post(server, {"text": "[" * 99_000}, path="/render", timeout=30)
        assert r.status_code == 200 and "[[[" in r.json()["html"]
        assert post(server, {"text": "x" * 200_000}, path="/render").status_code == 400
    assert post(server, {"text": "**bold**"}, path="/render").json()["html"].strip() == "<p><strong>bold</strong></p>"


def test_a_lone_surrogate_is_a_400(server):
    for body, param in ((b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
                        (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "a\\udfff"}]}]}',
                         "messages.0.content"),
                        (b'{"prompt": "x\\ud800"}', "prompt"),
                        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}', "stop")):
        path = "/v1/completions" if b"prompt" in body else "/v1/chat/completions"
        r = post(server, body, path=path)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"].startswith(param), r.json()


# ------------------------------------------------------------------------------------------
# Who may talk to the server
# ------------------------------------------------------------------------------------------


def test_a_foreign_host_header_is_refused(server):
    assert httpx.get(server.url + "/health", headers={"Host": "attacker.example"}).status_code == 400
    assert post(server, {"messages": HI, "max_tokens": 1}, headers={"Host": "attacker.example:8000"}).status_code == 400
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "localhost"):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 200


def test_default_allowed_hosts():
    from minigpt.inference.server import LOOPBACK_HOSTS, default_allowed_hosts

    assert default_allowed_hosts("127.0.0.1") == LOOPBACK_HOSTS == default_allowed_hosts("localhost")
    assert default_allowed_hosts("::1") == LOOPBACK_HOSTS
    assert default_allowed_hosts("0.0.0.0") == ["*"] == default_allowed_hosts("192.168.1.5")


def test_with_a_key_render_and_the_api_description_need_it(model_dir):
    from minigpt.recipes.serve import build_server

    running = Running(build_server(str(model_dir), api_key="s3cret", max_batch_size=2, device="cpu"))
    try:
        assert post(running, {"text": "[" * 1000}, path="/render").status_code == 401
        ok = post(running, {"text": "*a*"}, path="/render", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "<em>a</em>" in ok.json()["html"]
        for path in ("/openapi.json", "/docs"):
            assert httpx.get(running.url + path).status_code == 404
            assert httpx.get(running.url + path, headers={"Authorization": "Bearer s3cret"}).status_code == 404
        assert httpx.get(running.url + "/").status_code == 200  # the page itself holds no secret
    finally:
        running.stop()
    public = Running(build_server(str(model_dir), max_batch_size=2, device="cpu"))
    try:
        assert httpx.get(public.url + "/openapi.json").status_code == 200
    finally:
        public.stop()


def test_a_render_past_its_budget_kills_the_child_and_the_next_render_works():
    import asyncio

    from minigpt.inference.web import MarkdownWorker

    async def scenario():
        worker = MarkdownWorker(seconds=0.3)
        try:
            assert "<em>a</em>" in await worker.render("*a*")
            first = worker._proc
            start = time.perf_counter()
            assert await worker.render("[" * 99_000) is None
            assert time.perf_counter() - start < 1.5 and first.returncode is not None  # killed
            assert "<strong>b</strong>" in await worker.render("**b**")
        finally:
            await worker.close()

    asyncio.run(scenario())
