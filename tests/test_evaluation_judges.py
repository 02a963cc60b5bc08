"""stackalign.evaluation.judges against a local OpenAI-compatible chat-completions server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stackalign.evaluation import (
    JUDGE_SYSTEM_PROMPT,
    GoldJudge,
    JudgeError,
    LLMJudge,
    parse_scores,
    win_tie,
)

KEY = "sk-test-very-secret-0123456789"
KEY_ENV = "STACKALIGN_TEST_JUDGE_KEY"
MARKER = "PREFERRED"

_ANSWER = re.compile(
    r"\[The Start of Assistant (\d)'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S
)


def answers(user_message: str) -> dict[int, str]:
    return {int(k): v for k, v in _ANSWER.findall(user_message)}


class FakeServer:
    """A chat-completions server in a thread; ``reply(request_json) -> (status, content or error)``."""

    def __init__(self, reply: Callable[[dict], tuple[int, str]]):
        self.reply = reply
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.auth.append(self.headers.get("Authorization"))
                outer.paths.append(self.path)
                status, content = outer.reply(body)
                if status == 200:
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                    }
                else:
                    payload = {"error": {"message": content}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def prefers_marker(body: dict) -> tuple[int, str]:
    """Scores the answer containing MARKER 9 and the other 3, wherever it sits; 'no idea' without one."""
    user = body["messages"][1]["content"]
    ans = answers(user)
    if "GARBLE" in user:
        return 200, "Both answers have merits.\nI cannot decide."
    if MARKER in ans[1]:
        return 200, "9 3\nAssistant 1 is better."
    if MARKER in ans[2]:
        return 200, "3 9\nAssistant 2 is better."
    return 200, "5 5\nEqually good."


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY_ENV


def make_judge(server: FakeServer, key_env: str, **kw) -> LLMJudge:
    kw.setdefault("backoff", 0.0)
    return LLMJudge("judge-model", base_url=server.base_url, api_key_env=key_env, **kw)


def test_order_swap_is_undone_and_method_wins_regardless_of_position(key_env):
    prompts = [f"Human: question {i}?\n\nAssistant:" for i in range(24)]
    method = [f"answer {i} {MARKER}" for i in range(24)]
    baseline = [f"answer {i} plain" for i in range(24)]
    with FakeServer(prefers_marker) as server:
        judge = make_judge(server, key_env)
        res = win_tie(judge, prompts, method, baseline)
    assert (res.win, res.tie, res.loss, res.unparseable, res.n) == (24, 0, 0, 0, 24)
    assert res.rate == 1.0
    swapped = [j.swapped for j in res.judgements]
    assert any(swapped) and not all(swapped), "the coin flip must show both orders"
    for j in res.judgements:
        assert j.scores == (9.0, 3.0)
    # the request follows the protocol: system prompt, user message with question and both answers
    body = server.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0 and body["max_tokens"] == 2048
    assert body["messages"][0] == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    user = body["messages"][1]["content"]
    assert user.startswith("[Question]\n" + prompts[0])
    assert set(answers(user).values()) == {method[0], baseline[0]}
    assert server.paths[0] == "/v1/chat/completions"


def test_positional_judge_is_mapped_back(key_env):
    # A judge that always prefers whatever is shown first: the method wins exactly when it was shown first.
    with FakeServer(lambda body: (200, "8 2")) as server:
        res = win_tie(make_judge(server, key_env), [f"q{i}" for i in range(16)], ["m"] * 16, ["b"] * 16)
    for j in res.judgements:
        assert j.outcome == (-1 if j.swapped else 1)
    assert res.win + res.loss == 16 and res.win == sum(not j.swapped for j in res.judgements)


def test_same_pair_same_order_and_seed_changes_it(key_env):
    with FakeServer(prefers_marker) as server:
        j0 = make_judge(server, key_env, seed=0)
        j1 = make_judge(server, key_env, seed=1)
        pairs = [(f"p{i}", f"a{i} {MARKER}", f"b{i}") for i in range(32)]
        first = [j0.judge(*p).swapped for p in pairs]
        again = [j0.judge(*p).swapped for p in pairs]
        other = [j1.judge(*p).swapped for p in pairs]
    assert first == again
    assert first != other


def test_unparseable_counted_separately_not_as_ties(key_env):
    prompts = ["q1", "q2 GARBLE", "q3", "q4 GARBLE"]
    method = [f"x {MARKER}", "y", "z", "w"]
    baseline = ["x", f"y {MARKER}", "z", "w"]
    with FakeServer(prefers_marker) as server:
        res = win_tie(make_judge(server, key_env), prompts, method, baseline)
    # q1: method wins; q2, q4: unparseable; q3: tie (5 5)
    assert (res.win, res.tie, res.loss, res.unparseable, res.n) == (1, 1, 0, 2, 4)
    assert res.rate == pytest.approx(2 / 2)
    assert res.judgements[1].outcome is None and res.judgements[1].reply.startswith("Both answers")
    assert res.to_dict() == {
        "win": 1,
        "tie": 1,
        "loss": 0,
        "unparseable": 2,
        "n": 4,
        "rate": 1.0,
        "win_rate": 0.75,
    }


def test_all_unparseable_gives_no_rate(key_env):
    with FakeServer(lambda body: (200, "I refuse.")) as server:
        res = win_tie(make_judge(server, key_env), ["a", "b"], ["x", "y"], ["u", "v"])
    assert res.unparseable == 2 and res.rate is None


def test_api_key_sent_in_header_but_never_kept(key_env):
    with FakeServer(prefers_marker) as server:
        judge = make_judge(server, key_env)
        res = win_tie(judge, ["q", "q GARBLE"], [f"a {MARKER}", "a"], ["b", "b"], workers=2)
    assert server.auth == [f"Bearer {KEY}"] * 2
    blobs = [repr(judge), str(vars(judge)), repr(res), json.dumps(res.to_dict(with_judgements=True))]
    blobs += [repr(j) for j in res.judgements]
    for blob in blobs:
        assert KEY not in blob


def test_no_key_env_sends_no_authorization(monkeypatch):
    with FakeServer(prefers_marker) as server:
        judge = LLMJudge("m", base_url=server.base_url, api_key_env=None)
        assert judge.judge("q", MARKER, "b").outcome == 1
    assert server.auth == [None]


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=KEY_ENV):
        LLMJudge("m", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV)


def test_retries_with_backoff_then_succeeds(key_env):
    calls = {"n": 0}

    def flaky(body):
        calls["n"] += 1
        if calls["n"] == 1:
            return 503, "overloaded"
        if calls["n"] == 2:
            return 429, "rate limited"
        return prefers_marker(body)

    with FakeServer(flaky) as server:
        j = make_judge(server, key_env, max_retries=3).judge("q", f"a {MARKER}", "b")
    assert j.outcome == 1 and calls["n"] == 3


def test_gives_up_after_retries_and_fails_fast_on_auth_errors(key_env):
    with FakeServer(lambda body: (500, "boom")) as server:
        with pytest.raises(JudgeError, match="after 3 attempts") as info:
            make_judge(server, key_env, max_retries=2).judge("q", "a", "b")
        assert len(server.requests) == 3
    assert KEY not in str(info.value)

    with FakeServer(lambda body: (401, "invalid api key")) as server:
        with pytest.raises(JudgeError, match="HTTP 401.*invalid api key") as info:
            make_judge(server, key_env, max_retries=5).judge("q", "a", "b")
        assert len(server.requests) == 1
    assert KEY not in str(info.value)


def test_unreachable_server_is_a_judge_error(key_env):
    with FakeServer(prefers_marker) as server:
        url = server.base_url
    judge = LLMJudge("m", base_url=url, api_key_env=key_env, max_retries=1, backoff=0.0, timeout=2)
    with pytest.raises(JudgeError, match="cannot reach"):
        judge.judge("q", "a", "b")


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("8 6\nbecause", (8.0, 6.0)),
        ("\n  7.5 7.5  \nx", (7.5, 7.5)),
        ("**9, 4**\n", (9.0, 4.0)),
        ("10 1", (10.0, 1.0)),
        ("8\n6", None),
        ("8 6 5", None),
        ("Assistant 1: 8 Assistant 2: 6", None),
        ("0 5", None),
        ("11 3", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_scores(reply, expected):
    assert parse_scores(reply) == expected


def test_gold_judge_and_validation():
    judge = GoldJudge(lambda p, a, b: (len(a) > len(b)) - (len(a) < len(b)))
    res = win_tie(judge, ["p"] * 3, ["long answer", "x", "same"], ["short", "longer", "same"])
    assert (res.win, res.tie, res.loss, res.unparseable) == (1, 1, 1, 0)
    assert res.rate == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="expected -1, 0 or \\+1"):
        GoldJudge(lambda p, a, b: 0.5).judge("p", "a", "b")
    with pytest.raises(ValueError, match="equally long"):
        win_tie(judge, ["p"], ["a", "b"], ["c"])
