"""`nmt serve`'s decoding: the event loop checks requests and encodes their text; one decoding thread
(`Batcher`) runs a beam search per decoding setting (beam size, n-best, attention) that new sentences join at
its next step (continuous batching). Whatever fails in a shared search is decoded again request by request,
so one request's failure never fails another's."""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from nmt.search import BeamSearch, Hypothesis
from nmt.translator import Translator, empty_hypotheses

log = logging.getLogger(__name__)

MAX_BEAM = 20


@dataclass
class Limits:
    max_texts: int = 64  # texts in one request
    max_chars: int = 5000  # characters in one request, all texts together
    max_queue: int = 512  # sentences waiting to be decoded; beyond it requests get 503
    timeout_s: float = 60.0  # a request waiting longer gets 504
    max_wait_ms: float = 5.0  # on an idle server, how long the first sentence waits for others to start with
    batch_tokens: int = 4000  # source pieces being decoded at once; more sentences wait their turn
    client_timeout_s: float = 10.0  # for a request's line and headers (else closed), then its body (else 408)
    keep_alive_s: float = 5.0  # an idle connection is closed after this
    max_connections: int = 1000  # open sockets; a new one beyond it is closed at once
    debug: bool = False  # tracebacks in the log for failures (else one line each)


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, description="one text; each of its lines is translated")
    texts: list[str] | None = Field(None, description="several texts, answered in the same order")
    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM, description="default: the checkpoint's")
    nbest: int = Field(1, ge=1, le=MAX_BEAM, description="hypotheses per line, best first (at most beam_size)")
    attention: bool = Field(False, description="include each line's attention weights and pieces")


@dataclass(eq=False)
class _Job:
    """One request's sentences; the decoding thread fills `results` and settles `future` on the event loop."""

    sources: list[list[int]]
    key: tuple[int, int, bool]  # beam size, n-best, attention
    future: asyncio.Future
    results: list = field(default_factory=list)
    left: int = 0  # sentences still decoding
    abandoned: bool = False  # answered, timed out, or its client left: not started, or dropped at the next step

    @property
    def tokens(self) -> int:
        """Source pieces the search will hold for it (EOS included; empty lines are not decoded)."""
        return sum(len(s) + 1 for s in self.sources if s)


class Batcher:
    """Continuous batching (see `BeamSearch`): each request is answered as soon as its last sentence is done.
    The searches hold at most `batch_tokens` source pieces; more sentences wait in arrival order."""

    def __init__(self, translator: Translator, limits: Limits):
        self.translator, self.limits = translator, limits
        self.incoming: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.waiting = 0  # sentences of requests not yet answered; beyond max_queue new ones get 503
        self.batches = 0  # groups of requests that joined a search together
        self.steps = 0
        self.decoding = 0  # sentences in the searches
        self.abandons = 0  # requests left unanswered (timed out, client gone): their sentences leave the search

    async def translate(self, sources: list[list[int]], beam_size: int, nbest: int, attention: bool):
        if self.waiting + len(sources) > self.limits.max_queue:
            raise queue.Full  # more than `max_queue` sentences would wait
        job = _Job(sources, (beam_size, nbest, attention), asyncio.get_running_loop().create_future())
        self.waiting += len(sources)
        self.incoming.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.limits.timeout_s)
        finally:
            self.waiting -= len(sources)
            job.abandoned = True
            if not job.future.done():  # timed out or cancelled (the client went away): the decoder drops it
                self.abandons += 1
                job.future.cancel()  # nobody reads it: a failure settled on it later would be logged as unread

    def stop(self) -> None:
        self.incoming.put(None)

    def run(self) -> None:
        """Decode until `stop`."""
        self.translator.translate(["warm up"])  # the first search builds and touches everything once
        backlog: deque[_Job] = deque()  # arrived, not yet admitted
        searches: dict[tuple, BeamSearch] = {}  # one per decoding setting
        abandons = 0
        while self._take(backlog, block=not searches and not backlog):
            if abandons != self.abandons:  # read without a lock: a late count only delays a drop by a step
                abandons = self.abandons
                for key, search in list(searches.items()):  # sentences nobody waits for leave, freeing rows
                    search.drop(lambda sentence: sentence[0].abandoned)
                    if not search:
                        del searches[key]
            self._admit(backlog, searches)
            for key in list(searches):
                self._advance(key, searches)
            self.decoding = sum(len(search) for search in searches.values())

    def _take(self, backlog: deque, block: bool) -> bool:
        """Move arrived jobs to the backlog; False once `stop` was called. On an idle server (`block`: the
        backlog is empty), wait for the first job and `max_wait_ms` more, or until `batch_tokens` pieces."""
        deadline, tokens = None, 0
        while True:
            try:  # without `block`, the timeout is ignored
                job = self.incoming.get(block, None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return True
            if job is None:
                return False
            if deadline is None:
                deadline = time.monotonic() + self.limits.max_wait_ms / 1000
            backlog.append(job)
            tokens += job.tokens
            if block and tokens >= self.limits.batch_tokens:
                return True

    def _admit(self, backlog: deque, searches: dict) -> None:
        """Start jobs in arrival order while the searches hold fewer than `batch_tokens` source pieces (a job
        always starts on an idle server); the jobs of one setting start together, as one batch."""
        in_use = sum(len(job.sources[i]) + 1 for search in searches.values() for job, i in search.all_keys())
        starting: dict[tuple, list[_Job]] = defaultdict(list)
        while backlog:
            job = backlog[0]
            if not job.abandoned and in_use and in_use + job.tokens > self.limits.batch_tokens:
                break
            backlog.popleft()
            if not job.abandoned:
                in_use += job.tokens
                starting[job.key].append(job)
        for key, jobs in starting.items():
            beam, nbest, attention = key
            sentences = []  # (job, line): the search's key of each sentence
            for job in jobs:
                job.results = empty_hypotheses(len(job.sources), nbest)  # empty lines stay so
                job.left = sum(1 for source in job.sources if source)
                sentences += [(job, i) for i, source in enumerate(job.sources) if source]
            if sentences:
                search = searches.get(key) or self.translator.running_search(beam_size=beam, nbest=nbest,
                                                                             keep_attention=attention)
                try:
                    with self.translator.autocast():
                        search.add(*self.translator.source_batch([job.sources[i] for job, i in sentences]), sentences)
                except Exception as error:  # noqa: BLE001 - decoded again one request at a time: only the culprit fails
                    self._log_failure("starting a batch", error, "decoding its requests one at a time")
                    for job in jobs:
                        self._alone(job)
                    continue
                searches[key] = search
                self.batches += 1
            for job in jobs:
                if job.left == 0:
                    self._settle(job)

    def _advance(self, key: tuple, searches: dict) -> None:
        search = searches[key]
        try:
            with self.translator.autocast():
                done = search.step()
        except Exception as error:  # noqa: BLE001 - its requests are decoded again alone: only a culprit fails
            self._log_failure("a decoding step", error, "decoding its requests one at a time")
            del searches[key]
            for job in dict.fromkeys(job for job, _ in search.all_keys()):
                self._alone(job)
            return
        self.steps += 1
        for (job, i), hypotheses in done:
            job.results[i] = hypotheses
            job.left -= 1
            if job.left == 0:
                self._settle(job)
        if not search:
            del searches[key]

    def _alone(self, job: _Job) -> None:
        if job.abandoned:
            return  # nobody waits for it
        beam, nbest, attention = job.key
        try:
            job.results = self.translator.translate_ids(job.sources, nbest=nbest, keep_attention=attention,
                                                        beam_size=beam)
        except Exception as error:  # noqa: BLE001 - this request fails, and only this one
            self._log_failure("decoding a request", error, "it is answered 500")
            return self._settle(job, failed=True)
        self._settle(job)

    def _log_failure(self, what: str, error: Exception, then: str) -> None:
        log.error("%s failed (%s: %s); %s", what, type(error).__name__, error, then, exc_info=self.limits.debug)

    def _settle(self, job: _Job, failed: bool = False) -> None:
        def settle() -> None:  # on the event loop
            if job.future.done():  # the request timed out meanwhile
                return
            if failed:
                job.future.set_exception(RuntimeError("decoding failed"))
            else:
                job.future.set_result(job.results)

        job.future.get_loop().call_soon_threadsafe(settle)


def answer_lines(tokenizer, lines: list[list[str]], sources: list[list[int]], hypotheses, nbest: int,
                 attention: bool) -> list[dict]:
    """The answer for each text: its lines' translations joined by line breaks, and each line's details."""
    rows = iter([_line(tokenizer, source, hyps, nbest, attention) for source, hyps in zip(sources, hypotheses)])
    texts = [[next(rows) for _ in text_lines] for text_lines in lines]
    return [{"text": "\n".join(row["text"] for row in text), "lines": text} for text in texts]


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
