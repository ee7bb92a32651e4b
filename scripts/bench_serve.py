#!/usr/bin/env python3
"""Load test of `nmt serve`: concurrent clients, one sentence per request, against offline translation of
the same sentences with the same checkpoint, beam and machine.

usage: python scripts/bench_serve.py --checkpoint CKPT --input SOURCES.txt [--clients 32] [--seconds 60]
       [--beam-size 5]

Prints offline sentences/s: `nmt translate` of the whole file (a process of its own, start-up included; run
before and after the load, as a shared machine's speed drifts), the same in this process (decoding only), and
the server's search without HTTP (as many sentences in flight as there are clients); then for the server with
continuous batching and with batching off (`--batch-tokens 1`: one request at a time): requests, errors,
sentences/s, that against `nmt translate` (the mean of its two runs), p50 and p99 latency, the groups of
requests that started together (batches) and the search steps, as a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def in_process_rates(checkpoint: str, lines: list[str], beam: int, in_flight: int) -> tuple[float, float]:
    """Sentences/s of offline translation (sorted batches of `decode.batch_tokens`), and of the server's
    search without HTTP: `in_flight` sentences decoding, a new one joining whenever one is done."""
    import torch

    from nmt.checkpoint import load_for_inference
    from nmt.translator import Translator

    loaded = load_for_inference(Path(checkpoint), torch.device("cpu"))
    decode = loaded.config.decode
    translator = Translator(loaded.model, loaded.tokenizer, dataclasses.replace(decode, beam_size=beam),
                            device=torch.device("cpu"))
    translator.translate(lines[:20])  # warm up, as the server does
    started = time.perf_counter()
    translator.translate(lines)
    offline = len(lines) / (time.perf_counter() - started)
    sources = [s for s in translator.encode(lines) if s]
    search, queued, done = translator.running_search(beam_size=beam, nbest=1, keep_attention=False), 0, 0
    started = time.perf_counter()
    while done < len(sources):
        joining = list(range(queued, min(len(sources), queued + in_flight - len(search))))
        if joining:
            search.add(*translator.source_batch([sources[i] for i in joining]), joining)
            queued += len(joining)
        done += len(search.step())
    return offline, len(sources) / (time.perf_counter() - started)


def translate_rate(checkpoint: str, source: str, beam: int) -> float:
    """Sentences/s of `nmt translate` on the file: a process of its own, from start to exit."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nmt", "translate", "--checkpoint", checkpoint, "--input", source,
                        "--output", str(Path(out) / "hyp.txt"), "--beam-size", str(beam)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        return len((Path(out) / "hyp.txt").read_text(encoding="utf-8").splitlines()) / elapsed


def load(checkpoint: str, lines: list[str], beam: int, clients: int, seconds: float, *options: str) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "nmt", "serve", "--checkpoint", checkpoint, "--port", str(port),
                               "--beam-size", str(beam), *options], cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(f"{url}/health")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    sentences = itertools.cycle(lines)
    lock, latencies, errors = threading.Lock(), [], 0
    deadline = time.perf_counter() + seconds

    def client() -> None:
        """One keep-alive connection, requests one after another. The standard library's client: it takes
        less of the CPU the server shares than httpx does, so the figures are more the server's."""
        nonlocal errors
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < deadline:
            with lock:
                text = next(sentences)
            started = time.perf_counter()
            try:
                connection.request("POST", "/translate", json.dumps({"text": text}),
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                ok = response.status == 200 and "translations" in json.loads(response.read())
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                connection.close()  # reconnects at the next request
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    health = httpx.get(f"{url}/health").json()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
    latencies.sort()
    return {"requests": len(latencies) + errors, "errors": errors, "rate": len(latencies) / elapsed,
            "p50": 1000 * statistics.median(latencies), "p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "batches": health["batches"], "steps": health["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--input", required=True, help="source sentences, one a line")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's --max-wait-ms")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    lines = Path(args.input).read_text(encoding="utf-8").splitlines()
    before = translate_rate(args.checkpoint, args.input, args.beam_size)
    offline, continuous = in_process_rates(args.checkpoint, lines, args.beam_size, args.clients)
    batching = (f"continuous batching ({args.max_wait_ms:g} ms)", ("--max-wait-ms", str(args.max_wait_ms)))
    results = {label: load(args.checkpoint, lines, args.beam_size, args.clients, args.seconds, *options)
               for label, options in (batching, ("one request at a time", ("--batch-tokens", "1")))}
    after = translate_rate(args.checkpoint, args.input, args.beam_size)
    translate = (before + after) / 2
    print(f"offline ({len(lines)} sentences, beam {args.beam_size}): `nmt translate` {before:.1f} sentences/s before "
          f"the load and {after:.1f} after; in this process {offline:.1f}; the server's search without HTTP, "
          f"{args.clients} sentences in flight, {continuous:.1f} ({continuous / offline:.0%} of in-process)")
    print("| server | requests | errors | sentences/s | vs `nmt translate` | p50 | p99 | batches | steps |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, r in results.items():
        print(f"| {label} | {r['requests']:,} | {r['errors']} | {r['rate']:.1f} | {r['rate'] / translate:.0%} | "
              f"{r['p50']:.0f} ms | {r['p99']:.0f} ms | {r['batches']:,} | {r['steps']:,} |", flush=True)


if __name__ == "__main__":
    main()
