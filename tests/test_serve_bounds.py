"""`nmt serve` against clients that misbehave: bodies too large (declared or streamed), requests that stall,
sockets that say nothing, more connections than allowed, clients that leave; every refusal one line of
JSON, and SIGTERM ending the process promptly whatever the clients do."""

import json
import logging
import select
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.test_serve import LINES, app_client, post, start_server  # noqa: F401 - app_client is a fixture


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def answer(sock: socket.socket, within: float) -> bytes:
    """What the server sends before it closes the socket, waiting at most `within` seconds."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def status_and_error(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_every_refusal_is_one_line_of_json_and_one_log_line(app_client, monkeypatch, caplog):  # noqa: F811
    from nmt import serve_app

    with app_client(max_chars=50) as client:
        def refused(response, status):
            assert response.status_code == status and list(response.json()) == ["error"], response.text
            assert "\n" not in response.json()["error"]
            return response.json()["error"]

        assert refused(client.get("/nowhere"), 404) == "Not Found"
        assert refused(client.get("/translate"), 405) == "Method Not Allowed"
        assert refused(client.post("/translate", content='{"text": ', headers={"Content-Type": "application/json"}),
                       400)
        # a lone surrogate (valid JSON) is text sentencepiece cannot take: the client's error
        said = refused(client.post("/translate", content='{"text": "a \\ud800 b"}',
                                   headers={"Content-Type": "application/json"}), 422)
        assert said.startswith("the text could not be tokenized")

        def broken(*args, **kwargs):
            raise ValueError("a bug")

        monkeypatch.setattr(serve_app, "answer_lines", broken)
        with caplog.at_level(logging.ERROR, logger="nmt"):
            said = refused(client.post("/translate", json={"text": "a house"}), 500)
        assert said == "internal error (ValueError); the server's log has the reason"
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(failures) == 1 and not failures[0].exc_info  # one line, no traceback
        assert failures[0].getMessage() == "POST /translate failed: ValueError: a bug"


def test_docs_are_served_from_the_package_not_a_cdn(app_client):  # noqa: F811
    with app_client() as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "cdn" not in page.text.lower()
        scripts = [part.split('"')[1] for part in page.text.split("<script src=")[1:]]
        assert scripts and all(src.startswith("/") for src in scripts)
        assert all(client.get(src).status_code == 200 and len(client.get(src).content) > 100_000 for src in scripts)
        assert client.get("/openapi.json").json()["paths"]["/translate"]


def test_a_request_nobody_waits_for_leaves_the_search(app_client):  # noqa: F811
    """After a 504 the decoder stops spending steps on the abandoned sentences (it kept decoding all of them):
    the step in flight and the next at most."""
    with app_client(timeout_s=2, max_chars=200_000, max_queue=5000) as client:
        assert client.post("/translate", json={"text": LINES[0]}).status_code == 200  # the decoder is up
        # 2,560 sentences, beam 20, in waves of batch_tokens: far more than 2 s of steps
        response = client.post("/translate", json={"texts": ["\n".join(LINES)] * 64, "beam_size": 20})
        health = client.get("/health").json()
        assert response.status_code == 504 and health["decoding"] > 0
        deadline = time.monotonic() + 60
        while client.get("/health").json()["decoding"] and time.monotonic() < deadline:
            time.sleep(0.05)
        after = client.get("/health").json()
        assert after["decoding"] == 0 and after["waiting"] == 0
        assert after["steps"] - health["steps"] <= 2, (health, after)


@pytest.fixture(scope="module")
def guarded_server(tiny_run):
    process, url = start_server(tiny_run / "checkpoints" / "best.pt", "--client-timeout", "1", "--max-chars", "100",
                                "--max-connections", "20")
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_oversized_bodies_are_refused_before_they_are_read(guarded_server):
    limit = 12 * 100 + 64 * 1024
    with connect(guarded_server) as sock:  # declared: answered from the headers alone
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000\r\n\r\n")
        assert status_and_error(answer(sock, 5)) == (413, f"a body of 100000000 bytes; at most {limit}")
    with connect(guarded_server) as sock:  # chunked: cut off once the total passes the limit
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent, chunk = 0, b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
        try:
            while not select.select([sock], [], [], 0)[0] and sent < 64 * 2**20:
                sock.sendall(chunk)
                sent += 16384
            said = answer(sock, 5)
        except (BrokenPipeError, ConnectionResetError):
            said = b""  # the server closed while we sent: its answer may be lost in the reset
        assert sent < 64 * 2**20  # refused while the client was still sending (kernel buffers took the rest)
        if said:
            assert status_and_error(said) == (413, f"a body of more than {limit} bytes")


def test_stalled_and_silent_clients_are_cut_off(guarded_server):
    started = time.monotonic()
    with connect(guarded_server) as silent, connect(guarded_server) as slow_headers, \
            connect(guarded_server) as slow_body:
        slow_headers.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n")
        slow_body.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"text\": ")
        assert answer(silent, 5) == b"" and answer(slow_headers, 5) == b""  # closed without a word
        assert status_and_error(answer(slow_body, 5)) == (408, "the request body did not arrive within 1 s")
    assert time.monotonic() - started < 4
    assert httpx.get(f"{guarded_server}/health").status_code == 200


def test_connections_beyond_the_cap_are_closed_at_once(guarded_server):
    held = [connect(guarded_server) for _ in range(20)]
    try:
        time.sleep(0.2)
        with connect(guarded_server) as extra:
            started = time.monotonic()
            assert answer(extra, 5) == b"" and time.monotonic() - started < 0.9  # before the client timeout
    finally:
        for sock in held:
            sock.close()
    time.sleep(1.2)
    assert httpx.get(f"{guarded_server}/health").status_code == 200


def test_sigterm_with_stalled_clients_finishes_the_request_in_flight_and_exits_promptly(tiny_run):
    process, url = start_server(tiny_run / "checkpoints" / "best.pt", "--client-timeout", "60")
    stalled = [connect(url) for _ in range(30)]
    for i, sock in enumerate(stalled):
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n" + (b"Content-Length: 50\r\n\r\n{" if i % 2 else b""))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(post, url, {"texts": LINES, "beam_size": 20})
        while httpx.get(f"{url}/health").json()["waiting"] == 0 and not pending.done():
            time.sleep(0.01)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        seconds = time.monotonic() - started
        response = pending.result()
    for sock in stalled:
        sock.close()
    log = Path(process.log.name).read_text()
    assert seconds < 8, log
    assert response.status_code == 200 and len(response.json()["translations"]) == len(LINES), log
    assert "Traceback" not in log


def test_a_request_whose_client_left_leaves_the_search(tiny_run):
    """A client that closes its connection mid-request: its sentences leave the search at the next step (they
    were decoded to the end for nobody)."""
    process, url = start_server(tiny_run / "checkpoints" / "best.pt", "--max-chars", "200000", "--max-queue", "5000")
    try:
        body = json.dumps({"texts": ["\n".join(LINES)] * 64, "beam_size": 20}).encode()
        with connect(url) as sock:
            sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            deadline = time.monotonic() + 60
            while not httpx.get(f"{url}/health").json()["decoding"] and time.monotonic() < deadline:
                time.sleep(0.05)
            health = httpx.get(f"{url}/health").json()
        assert health["decoding"] > 0  # the client leaves mid-search
        while httpx.get(f"{url}/health").json()["decoding"] and time.monotonic() < deadline:
            time.sleep(0.05)
        after = httpx.get(f"{url}/health").json()
        assert after["decoding"] == 0 and after["waiting"] == 0
        assert after["steps"] - health["steps"] <= 3, (health, after)  # 2,560 sentences would take far more
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
