"""`nmt serve`: an HTTP API and a page over a loaded model (or ensemble), with concurrent requests gathered
into shared decoding batches.

Requests put their sentences on a bounded queue. One task takes what arrives within `max_wait_ms` of the
first sentence (at most `batch_tokens` source pieces), decodes each group of equal settings (beam size,
n-best, attention) as one batch in a worker thread, and hands every request its own rows. A batch that
fails is decoded again request by request, so one request's failure never fails another's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from nmt.search import Hypothesis
from nmt.translate import Translator

log = logging.getLogger(__name__)

MAX_BEAM = 20


@dataclass
class Limits:
    max_texts: int = 64  # texts in one request
    max_chars: int = 5000  # characters in one request, all texts together
    max_queue: int = 512  # sentences waiting to be decoded; beyond it requests get 503
    timeout_s: float = 60.0  # a request waiting longer gets 504
    max_wait_ms: float = 5.0  # how long the first sentence waits for others to share its batch
    batch_tokens: int = 4000  # source pieces in one gathered batch


@dataclass
class _Job:
    sources: list[list[int]]
    key: tuple[int, int, bool]  # beam size, n-best, attention
    future: asyncio.Future


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, description="one text; each of its lines is translated")
    texts: list[str] | None = Field(None, description="several texts, answered in the same order")
    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM, description="default: the checkpoint's")
    nbest: int = Field(1, ge=1, le=MAX_BEAM, description="hypotheses per line, best first (at most beam_size)")
    attention: bool = Field(False, description="include each line's attention weights and pieces")


class QueueFull(Exception):
    pass


class Batcher:
    def __init__(self, translator: Translator, limits: Limits):
        self.translator, self.limits = translator, limits
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.waiting = 0  # sentences queued or being decoded
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self.batches = 0

    async def translate(self, sources: list[list[int]], beam_size: int, nbest: int, attention: bool):
        if self.waiting + len(sources) > self.limits.max_queue:
            raise QueueFull
        self.waiting += len(sources)
        job = _Job(sources, (beam_size, nbest, attention), asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.limits.timeout_s)
        finally:
            if not job.future.done():
                job.future.cancel()  # timed out: the decoder skips it if it has not started it

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            tokens = sum(map(len, jobs[0].sources))
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while tokens < self.limits.batch_tokens:
                try:
                    job = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                tokens += sum(map(len, job.sources))
            groups = defaultdict(list)
            for job in jobs:
                if not job.future.done():
                    groups[job.key].append(job)
            for key, group in groups.items():
                await self._decode(loop, key, group)
            self.waiting -= sum(len(job.sources) for job in jobs)

    async def _decode(self, loop, key, group: list[_Job]) -> None:
        beam, nbest, attention = key
        sources = [s for job in group for s in job.sources]
        try:
            results = await loop.run_in_executor(self.executor, self._search, sources, beam, nbest, attention)
        except Exception:  # noqa: BLE001 - decoded again one request at a time: only the culprit fails
            if len(group) > 1:
                for job in group:
                    await self._decode(loop, key, [job])
                return
            if not group[0].future.done():
                group[0].future.set_exception(RuntimeError("decoding failed"))
            log.exception("decoding a request failed")
            return
        self.batches += 1
        start = 0
        for job in group:
            if not job.future.done():
                job.future.set_result(results[start: start + len(job.sources)])
            start += len(job.sources)

    def _search(self, sources, beam, nbest, attention) -> list[list[Hypothesis]]:
        return self.translator.translate_ids(sources, nbest=nbest, keep_attention=attention, beam_size=beam)


def create_app(translator: Translator, info: dict, limits: Limits):
    """The FastAPI app: POST /translate, GET /health, GET /info, the page at /, OpenAPI docs at /docs."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    from nmt.serve_page import PAGE

    batcher = Batcher(translator, limits)
    tokenizer = translator.tokenizer

    @asynccontextmanager
    async def lifespan(app):
        translator.translate(["warm up"])  # the first search builds and touches everything once
        task = asyncio.create_task(batcher.run())
        log.info("serving %s; limits: %s", ", ".join(info["checkpoints"]), limits)
        yield
        task.cancel()
        batcher.executor.shutdown(wait=True)

    app = FastAPI(title="nmt", summary=f"{info['source_language']}→{info['target_language']} translation",
                  lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        status = 400 if first.get("type") == "json_invalid" else 422
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=status)

    def refuse(status: int, reason: str, **headers):
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    @app.post("/translate")
    async def translate(request: TranslateRequest):
        if (request.text is None) == (request.texts is None):
            return refuse(422, "give exactly one of 'text' and 'texts'")
        texts = [request.text] if request.text is not None else request.texts
        beam = request.beam_size or translator.beam_size
        if len(texts) > limits.max_texts:
            return refuse(413, f"{len(texts)} texts; at most {limits.max_texts} per request")
        chars = sum(map(len, texts))
        if chars > limits.max_chars:
            return refuse(413, f"{chars} characters; at most {limits.max_chars} per request")
        if request.nbest > beam:
            return refuse(422, f"nbest {request.nbest} is more than beam_size {beam}")
        lines = [text.splitlines() or [""] for text in texts]  # a line break separates sentences
        flat = [line for text in lines for line in text]
        try:
            started = time.perf_counter()
            sources = translator.encode(flat)
            hypotheses = await batcher.translate(sources, beam, request.nbest, request.attention)
        except QueueFull:
            return refuse(503, "too many sentences waiting; retry shortly", **{"Retry-After": "1"})
        except asyncio.TimeoutError:
            return refuse(504, f"not translated within {limits.timeout_s:g} s; retry, or send fewer texts")
        except RuntimeError:  # this request's decoding failed (the others' did not)
            return refuse(500, "decoding failed; the server's log has the reason")
        answers, position = [], 0
        for text_lines in lines:
            rows = [_line(tokenizer, sources[i], hypotheses[i], request.nbest, request.attention)
                    for i in range(position, position + len(text_lines))]
            position += len(text_lines)
            answers.append({"text": "\n".join(row["text"] for row in rows), "lines": rows})
        return {"translations": answers, "milliseconds": round(1000 * (time.perf_counter() - started), 1)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches, "waiting": batcher.waiting}

    @app.get("/info")
    async def about():
        return info

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    return app


def _line(tokenizer, source: list[int], hyps: list[Hypothesis], nbest: int, attention: bool) -> dict:
    best = hyps[0]
    row = {"text": " ".join(tokenizer.tgt.decode(best.tokens).splitlines())}
    if nbest > 1:
        row["nbest"] = [{"text": tokenizer.tgt.decode(h.tokens),
                         "score": h.score if math.isfinite(h.score) else None} for h in hyps]
    if attention:
        weights = best.attention.tolist() if best.attention is not None else []
        source = tokenizer.src.pieces(source) + ["</s>"] if source else []
        target = tokenizer.tgt.pieces(best.tokens) + ["</s>"] if weights else []
        row["attention"] = {"source": source, "target": target,
                            "weights": [w[: len(source)] for w in weights[: len(target)]]}
    return row
