"""`nmt serve`: the API against a real server process (order, n-best, attention, line breaks, Unicode,
concurrent clients batched together and answered as offline translation answers), limits and bad input
through the app in-process, and the page in a real browser."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from nmt.config import DecodeConfig
from tests.conftest import ROOT, TINY_DATA, run_nmt
from tests.test_errors import check_error

LINES = (TINY_DATA / "test.en").read_text(encoding="utf-8").splitlines()[:40]
DECODE = DecodeConfig(max_src_len=100, beam_size=2, length_penalty=0.6, max_len_ratio=2.0, batch_tokens=4000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint, *options) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # a file, not a pipe: a full pipe would block it
    process = subprocess.Popen(
        [sys.executable, "-m", "nmt", "serve", "--checkpoint", str(checkpoint), "--port", str(port), *options],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
        assert process.poll() is None, Path(log.name).read_text()
    raise AssertionError("the server did not start")


def stop(process) -> str:
    """SIGTERM; uvicorn shuts down gracefully and then exits by the same signal."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    log = Path(process.log.name).read_text()
    assert "Finished server process" in log, log
    return log


@pytest.fixture(scope="module")
def server(tiny_run):
    process, url = start_server(tiny_run / "checkpoints" / "best.pt", "--max-wait-ms", "50", "--beam-size", "3")
    yield url
    stop(process)


def test_sigterm_lets_the_request_in_flight_finish(tiny_run):
    process, url = start_server(tiny_run / "checkpoints" / "best.pt")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(post, url, {"texts": LINES, "beam_size": 20})  # some seconds of decoding
        for _ in range(500):
            if httpx.get(f"{url}/health").json()["waiting"] > 0 or pending.done():
                break
            time.sleep(0.01)
        assert not pending.done(), "decoded before the signal: make the request longer"
        log = stop(process)
        response = pending.result()
    assert response.status_code == 200 and len(response.json()["translations"]) == len(LINES), log


def test_a_port_in_use_is_a_one_line_error(tiny_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_nmt("serve", "--checkpoint", str(tiny_run / "checkpoints" / "best.pt"), "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address "
                                          "already in use); another server may hold the port: stop it or choose "
                                          "another --port"]  # said before the model loads: nothing else logged


def test_a_decoder_that_fails_stops_the_server_instead_of_hanging(tiny_run, monkeypatch):
    from nmt import checkpoint
    from nmt.serve import Batcher, Limits
    from nmt.serve_app import create_app, serve_until_stopped
    from nmt.translator import Translator

    loaded = checkpoint.load_for_inference(tiny_run / "checkpoints" / "best.pt", torch.device("cpu"))
    translator = Translator(loaded.model, loaded.tokenizer, DECODE, device=torch.device("cpu"))
    info = {"source_language": "en", "target_language": "de", "checkpoints": ["best.pt"]}
    app = create_app(translator, info, Limits(), decode_thread=False)

    def failing(self):
        time.sleep(1.0)  # the HTTP server is up by now
        raise RuntimeError("the decoder failed")

    monkeypatch.setattr(Batcher, "run", failing)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="the decoder failed"):
            serve_until_stopped(app, "127.0.0.1", port, Limits())
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert time.monotonic() - started < 10  # not the 30 s graceful wait
    # and nothing left serving: a live HTTP thread would keep the process up, answering /health "ok"
    assert not [thread for thread in threading.enumerate() if thread.name == "http"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.fixture(scope="module")
def offline(tiny_run, tmp_path_factory):
    """`nmt translate` of LINES with beam 3: what the server must answer."""
    source = tmp_path_factory.mktemp("offline") / "in.en"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    result = run_nmt("translate", "--checkpoint", str(tiny_run / "checkpoints" / "best.pt"), "--input", str(source),
                     "--beam-size", "3")
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def post(url, body, **kwargs):
    return httpx.post(f"{url}/translate", json=body, timeout=60, **kwargs)


def test_texts_come_back_in_order_as_offline_translation_gives_them(server, offline):
    answer = post(server, {"texts": LINES}).json()
    assert [t["text"] for t in answer["translations"]] == offline
    info = httpx.get(f"{server}/info").json()
    assert (info["source_language"], info["target_language"], info["ensemble"]) == ("en", "de", 1)
    assert info["parameters"] > 0 and info["decode"]["beam_size"] == 3
    assert httpx.get(f"{server}/docs").status_code == 200 and "/translate" in httpx.get(
        f"{server}/openapi.json").json()["paths"]


def test_concurrent_clients_share_batches_and_get_the_offline_answers(server, offline):
    before = httpx.get(f"{server}/health").json()["batches"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda line: post(server, {"text": line}).json(), LINES))
    assert [a["translations"][0]["text"] for a in answers] == offline
    batches = httpx.get(f"{server}/health").json()["batches"] - before
    assert batches < len(LINES)  # requests were gathered into shared batches


def test_nbest_and_attention(server):
    answer = post(server, {"text": LINES[3], "beam_size": 4, "nbest": 3, "attention": True}).json()
    (line,) = answer["translations"][0]["lines"]
    scores = [h["score"] for h in line["nbest"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert line["nbest"][0]["text"] == line["text"]
    attention = line["attention"]
    weights = torch.tensor(attention["weights"])
    assert weights.shape == (len(attention["target"]), len(attention["source"]))
    assert attention["source"][-1] == "</s>" and attention["target"][-1] == "</s>"
    assert torch.allclose(weights.sum(1), torch.ones(len(weights)), atol=1e-4)


def test_line_breaks_empty_texts_and_any_unicode(server, offline):
    unicode_text = "Ünïcödé 🙂 漢字 עברית a\u0301 \u200b"
    answer = post(server, {"texts": [f"{LINES[0]}\n{LINES[1]}", "", "   ", unicode_text]}).json()
    first, empty, blank, unicode = answer["translations"]
    assert first["text"] == f"{offline[0]}\n{offline[1]}" and len(first["lines"]) == 2
    assert empty["text"] == "" and blank["text"] == ""
    assert "\n" not in unicode["text"]
    # only "\n" separates sentences, as in `nmt translate`: a U+2028 or a form feed stays inside its line
    inside = post(server, {"text": f"{LINES[0]}\u2028{LINES[1]}\x0c\r\n{LINES[2]}"}).json()["translations"][0]
    assert len(inside["lines"]) == 2


@pytest.mark.parametrize("flag, value, allowed", [
    ("--port", "70000", "between 1 and 65535"), ("--max-wait-ms", "inf", "at most 10000"),
    ("--max-wait-ms", "nan", "at least 0"), ("--timeout", "inf", "at most 86400"), ("--max-queue", "0", "at least 1")])
def test_serve_flags_out_of_range_are_one_line_before_loading(tiny_run, flag, value, allowed):
    check_error(run_nmt("serve", "--checkpoint", str(tiny_run / "checkpoints" / "best.pt"), flag, value),
                f"{flag} {value}: must be", allowed)


@pytest.fixture
def app_client(tiny_run):
    """The app in this process, with small limits."""
    from fastapi.testclient import TestClient

    from nmt import checkpoint
    from nmt.serve import Limits
    from nmt.serve_app import create_app
    from nmt.translator import Translator

    loaded = checkpoint.load_for_inference(tiny_run / "checkpoints" / "best.pt", torch.device("cpu"))
    info = {"source_language": "en", "target_language": "de", "checkpoints": ["best.pt"]}

    def client(wrap_decoder=None, **limits):
        translator = Translator(loaded.model, loaded.tokenizer, DECODE, device=torch.device("cpu"))
        client = TestClient(create_app(translator, info, Limits(**limits)))
        client.translator = translator
        if wrap_decoder:
            translator.decoder = wrap_decoder(translator.decoder)
        return client

    return client


def test_limits_and_bad_input_are_one_line_4xx(app_client):
    with app_client(max_texts=2, max_chars=50) as client:
        def status(body, **kwargs):
            response = client.post("/translate", **({"content": body} if isinstance(body, str) else {"json": body}),
                                   headers={"Content-Type": "application/json"}, **kwargs)
            error = response.json().get("error", "")
            assert "\n" not in error
            return response.status_code, error

        assert status({"texts": ["a", "b", "c"]}) == (413, "3 texts; at most 2 per request")
        assert status({"text": "x" * 51})[0] == 413
        assert status('{"text": "unclosed')[0] == 400
        assert status({"text": 5}) == (422, "text: Input should be a valid string")
        assert status({"text": "a", "texts": ["b"]})[0] == 422
        assert status({"text": "a", "colour": "red"})[0] == 422
        assert status({"text": "a", "beam_size": 0})[0] == 422
        assert status({"text": "a", "beam_size": 2, "nbest": 3}) == (422, "nbest 3 is more than beam_size 2")
        assert status({"text": "a house"})[0] == 200
        # curl's -d without a header sends a form: the error says which header the body needs
        response = client.post("/translate", content='{"text": "a house"}',
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 422 and "Content-Type: application/json" in response.json()["error"]


def test_a_full_queue_answers_503_and_a_slow_request_504(app_client):
    with app_client(max_queue=1) as client:
        response = client.post("/translate", json={"texts": ["one", "two"]})
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert client.post("/translate", json={"text": "one"}).status_code == 200
    with app_client(timeout_s=1e-6) as client:
        assert client.post("/translate", json={"texts": LINES}).status_code == 504


class Failing:
    """A decoding step that fails wherever a poisoned sentence is encoded, and once at a step of at least
    `fail_rows` rows (several requests' sentences: not the server's warm-up)."""

    def __init__(self, decoder, poison: list[int], fail_rows: int | None = None):
        self.decoder, self.poison, self.fail_rows = decoder, torch.tensor(poison), fail_rows

    def encode(self, src, src_lengths):
        if src.size(1) >= len(self.poison) and (src[:, : len(self.poison)] == self.poison).all(1).any():
            raise ValueError("poisoned sentence")
        return self.decoder.encode(src, src_lengths)

    def step(self, tokens, memory, state):
        if self.fail_rows and tokens.size(0) >= self.fail_rows:
            self.fail_rows = None
            raise ValueError("a step that fails once")
        return self.decoder.step(tokens, memory, state)


def test_a_failing_request_fails_alone_and_a_failed_step_is_retried(app_client):
    """Requests that started or ran together with a failing one get their answers (decoded again alone)."""
    lines = LINES[:12]
    with app_client(max_wait_ms=500) as plain:
        wanted = [plain.post("/translate", json={"text": line}).json()["translations"][0]["text"] for line in lines]
        poison = plain.translator.encode(["zebra zebra zebra"])[0]
    for fail_rows, bad in ((None, "zebra zebra zebra"), (8, None)):
        with app_client(lambda d, rows=fail_rows: Failing(d, poison, rows), max_wait_ms=500) as client:
            texts = lines + ([bad] if bad else [])
            with ThreadPoolExecutor(max_workers=len(texts)) as pool:
                answers = list(pool.map(lambda text: client.post("/translate", json={"text": text}), texts))
            assert [a.json()["translations"][0]["text"] for a in answers[: len(lines)]] == wanted
            if bad:
                assert answers[-1].status_code == 500 and "decoding failed" in answers[-1].json()["error"]
            assert client.get("/health").json()["batches"] < len(texts)  # they did share a search


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("NMT_REQUIRE_BROWSER"),
                    reason="no chromium here (.ci/run installs it and sets NMT_REQUIRE_BROWSER)")
def test_the_page_translates_and_draws_the_attention_in_a_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server)
        page.wait_for_function("document.getElementById('languages').textContent.length > 0")  # /info loaded
        page.fill("#source", LINES[5])
        page.click("#translate")
        page.wait_for_selector("#heatmap tbody tr")
        translation = page.inner_text("#lines li")
        rows = page.locator("#heatmap tbody tr").count()
        columns = page.locator("#heatmap thead th").count() - 1  # the corner cell
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        (ROOT / "tests" / "screenshots").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "tests" / "screenshots" / "serve_page.png"), full_page=True)
        browser.close()
    expected = post(server, {"text": LINES[5], "beam_size": 3, "attention": True}).json()["translations"][0]
    attention = expected["lines"][0]["attention"]
    assert translation.strip() == expected["text"]
    assert (rows, columns) == (len(attention["target"]), len(attention["source"]))
    assert json.dumps(attention)  # the page drew the API's own answer
