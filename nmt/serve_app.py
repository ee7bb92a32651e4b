"""`nmt serve`'s HTTP side: the app (POST /translate, /health, /info, the page at /, /docs served from the
package, so it works offline), and the bounds that keep a hostile or broken client from costing the server
memory, sockets or its shutdown: a server published with `--host 0.0.0.0` (as in Docker) meets clients that
send bodies of any size, send half a request and stall, or open sockets and say nothing. Bodies are bounded
in size and time (`bounded_bodies`), request heads and connections too (`bounded_protocol`), and so is the
shutdown (`SHUTDOWN_GRACE_S`). Every answer that is not 2xx is one line of JSON, `{"error": "..."}`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import resource
import signal
import socket
import threading
import time
from dataclasses import asdict

import h11
import uvicorn
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException  # routing's 404 and 405 too
from uvicorn.protocols.http.h11_impl import H11Protocol

from nmt.data.text import split_lines
from nmt.errors import NMTError
from nmt.serve import Batcher, Limits, TranslateRequest, answer_lines
from nmt.serve_page import PAGE

log = logging.getLogger(__name__)

# what requests in flight get to finish after SIGTERM: `docker stop` kills after 10 s
SHUTDOWN_GRACE_S = 5.0
# on an answer given before the body was read to its end: the rest is not read, the connection ends
CLOSE = {"Connection": "close"}


def check_port(host: str, port: int) -> None:
    """Fail before the model loads (seconds) when the address cannot be listened on: bound as uvicorn binds it
    (IPv6 where the host has a colon, IPv4 otherwise)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as error:
        raise NMTError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error}); another "
                       "server may hold the port: stop it or choose another --port") from None


async def _refuse(send, status: int, reason: str) -> None:
    """A whole answer from below the app: one line of JSON, and the connection closed after it."""
    body = json.dumps({"error": reason}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def bounded_bodies(app, max_bytes: int, timeout_s: float, stopping):
    """ASGI middleware: a request body over `max_bytes` is refused (413) from its Content-Length before any of
    it is read, or, sent in chunks, as soon as its total passes the limit; a body not complete within
    `timeout_s` of the request's start is answered 408; once `stopping()` is true a body still arriving is
    answered 503. The app reads the body through this; the rest stays in the socket's buffers."""

    async def bounded(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit():
            return await _refuse(send, 400, "Content-Length is not a number")
        if int(declared) > max_bytes:
            return await _refuse(send, 413, f"a body of {int(declared)} bytes; at most {max_bytes}")
        deadline, received, complete = time.monotonic() + timeout_s, 0, False
        pending: asyncio.Future | None = None

        async def bounded_receive():
            nonlocal received, complete, pending
            if complete:
                return await receive()
            pending = pending or asyncio.ensure_future(receive())
            while not pending.done():  # waits in slices, to see a shutdown
                if stopping():
                    raise HTTPException(503, "the server is shutting down", CLOSE)
                if time.monotonic() > deadline:
                    raise HTTPException(408, f"the request body did not arrive within {timeout_s:g} s", CLOSE)
                await asyncio.wait({pending}, timeout=min(0.25, max(0.0, deadline - time.monotonic())))
            message, pending = pending.result(), None
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise HTTPException(413, f"a body of more than {max_bytes} bytes", CLOSE)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await app(scope, bounded_receive, send)
        finally:
            if pending is not None:
                pending.cancel()

    return bounded


def create_app(translator, info: dict, limits: Limits, decode_thread: bool = True):
    """The app; its `state.batcher` decodes in a thread it starts, or, with `decode_thread=False`, wherever the
    caller runs `app.state.batcher.run()`; `state.stopping` is set when the server shuts down."""
    batcher = Batcher(translator, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if decode_thread:
            decoder = threading.Thread(target=batcher.run, name="decode", daemon=True)
            decoder.start()
        log.info("serving %s; limits: %s", ", ".join(info["checkpoints"]),
                 ", ".join(f"{name} {value}" for name, value in asdict(limits).items()))
        yield
        batcher.stop()
        if decode_thread:
            decoder.join()

    app = FastAPIOffline(title="nmt", summary=f"{info['source_language']}→{info['target_language']} translation",
                         lifespan=lifespan, redoc_url=None)
    app.state.batcher, app.state.stopping = batcher, False
    # JSON may spend 12 bytes on one character (an escaped surrogate pair); the rest of a request is small
    app.add_middleware(bounded_bodies, max_bytes=12 * limits.max_chars + 64 * 1024, timeout_s=limits.client_timeout_s,
                       stopping=lambda: app.state.stopping)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.post("/translate")
    async def translate(request: TranslateRequest, raw: Request):
        try:
            return await _translate(request, raw, translator, batcher, limits)
        except Exception as error:  # noqa: BLE001 - one line for the client and the log, not a traceback
            log.error("POST /translate failed: %s: %s", type(error).__name__, error, exc_info=limits.debug)
            return _error(500, f"internal error ({type(error).__name__}); the server's log has the reason")

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches, "steps": batcher.steps, "waiting": batcher.waiting,
                "decoding": batcher.decoding}

    @app.get("/info")
    async def about():
        return info

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    return app


def _error(status: int, reason: str, **headers):
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _invalid(request: Request, error):
    """A body that is not the request's shape: which field, and what is wrong with it."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = f"{where}: {first.get('msg', 'invalid')}"
    if where == "body" and "json" not in request.headers.get("content-type", ""):  # curl -d sends a form
        message += "; send the body as JSON, with the header Content-Type: application/json"
    return _error(400 if first.get("type") == "json_invalid" else 422, message)


async def _http_error(request: Request, error):
    """404, 405, and the bounds of `bounded_bodies`."""
    return _error(error.status_code, str(error.detail), **(error.headers or {}))


async def _translate(request: TranslateRequest, raw: Request, translator, batcher: Batcher, limits: Limits):
    if (request.text is None) == (request.texts is None):
        return _error(422, "give exactly one of 'text' and 'texts'")
    texts = [request.text] if request.text is not None else request.texts
    beam = request.beam_size or translator.decode.beam_size
    if len(texts) > limits.max_texts:
        return _error(413, f"{len(texts)} texts; at most {limits.max_texts} per request")
    chars = sum(map(len, texts))
    if chars > limits.max_chars:
        return _error(413, f"{chars} characters; at most {limits.max_chars} per request")
    if request.nbest > beam:
        return _error(422, f"nbest {request.nbest} is more than beam_size {beam}")
    lines = [split_lines(text) or [""] for text in texts]  # as `nmt translate` splits; an empty text: one line
    started = time.perf_counter()
    try:
        sources = translator.encode([line for text in lines for line in text])
    except Exception as error:  # noqa: BLE001 - the client's text: a 4xx, one line
        return _error(422, f"the text could not be tokenized ({type(error).__name__}: {error})")
    try:
        hypotheses = await _unless_gone(raw, batcher.translate(sources, beam, request.nbest, request.attention))
    except queue.Full:
        return _error(503, "too many sentences waiting; retry shortly", **{"Retry-After": "1"})
    except asyncio.TimeoutError:
        return _error(504, f"not translated within {limits.timeout_s:g} s; retry, or send fewer texts")
    except RuntimeError:  # this request's decoding failed (the others' did not)
        return _error(500, "decoding failed; the server's log has the reason")
    if hypotheses is None:
        return _error(499, "the client went away")  # nobody reads it
    answers = answer_lines(translator.tokenizer, lines, sources, hypotheses, request.nbest, request.attention)
    return {"translations": answers, "milliseconds": round(1000 * (time.perf_counter() - started), 1)}


async def _unless_gone(raw, translation):
    """The translation's result, or None when the client disconnects first (its sentences then leave the
    search at its next step, as a timed-out request's do)."""
    async def disconnected() -> None:
        while (await raw.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(translation)
    gone = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when cancelled: the server is stopping
        gone.cancel()
        work.cancel()  # nothing once it is done
    return work.result() if work in done else None


def bounded_protocol(limits: Limits):
    """uvicorn's HTTP/1.1 protocol with two more bounds: a connection beyond `max_connections` is closed as it
    opens, and one whose request line and headers have not arrived `client_timeout_s` after it opened, or
    after its last answer, is closed (uvicorn times out only a silent connection after an answer; a socket
    that never sends, or sends a byte at a time, it keeps for good)."""
    refused = 0

    class BoundedH11(H11Protocol):
        def connection_made(self, transport):
            nonlocal refused
            super().connection_made(transport)
            self._wait_for_request()  # also on a refused connection: `connection_lost` cancels it
            if len(self.connections) > limits.max_connections:
                refused += 1
                if refused in (1, 10) or refused % 1000 == 0:  # a flood is a few lines, not one per socket
                    log.warning("%d connection(s) beyond --max-connections %d closed so far", refused,
                                limits.max_connections)
                transport.close()

        def on_response_complete(self):
            super().on_response_complete()
            self._request_timer.cancel()
            self._wait_for_request()

        def connection_lost(self, exc):
            self._request_timer.cancel()
            super().connection_lost(exc)

        def _wait_for_request(self):
            self._request_timer = self.loop.call_later(limits.client_timeout_s, self._close_unless_asked, self.cycle)

        def _close_unless_asked(self, cycle_then):
            if self.cycle is cycle_then and not self.transport.is_closing():  # no request began since
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()

    return BoundedH11


def raise_file_limit(max_connections: int) -> None:
    """Each connection is an open file: the soft limit (often 1024) raised to the hard one, and a warning if
    that is still below the connections allowed (beyond it `accept` fails instead of the cap closing them)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and max_connections + 64 > soft:
        log.warning("--max-connections %d is above what the open-file limit (%d) allows; connections beyond "
                    "about %d will fail as they open", max_connections, soft, soft - 64)


def serve_until_stopped(app, host: str, port: int, limits: Limits) -> bool:
    """Serve `app` (made with `decode_thread=False`) until SIGINT or SIGTERM; False if it could not start. Decoding
    takes the main thread and HTTP a second one: the encoder's LSTM ran about three times slower in a thread other than
    the main one. Signals reach the main thread: they ask the server to stop taking requests; it finishes those in
    flight within SHUTDOWN_GRACE_S, then stops the decoder (a second Ctrl-C: at once)."""
    raise_file_limit(limits.max_connections)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", http=bounded_protocol(limits),
                                           timeout_keep_alive=limits.keep_alive_s,
                                           timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
    batcher = app.state.batcher

    def http() -> None:
        try:
            server.run()
        finally:
            batcher.stop()  # also when the server could not start

    def stop(signum, frame) -> None:
        server.force_exit = server.should_exit and signum == signal.SIGINT
        server.should_exit = app.state.stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    thread = threading.Thread(target=http, name="http")
    thread.start()
    try:
        batcher.run()
    except BaseException:  # the decoder died: stop at once rather than answer /health "ok" and time out
        server.should_exit = server.force_exit = True
        raise
    finally:
        thread.join()
    return server.started
