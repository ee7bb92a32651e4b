#!/usr/bin/env python3
"""How data preparation scales: time and peak memory to prepare a large corpus, to restart on it, and to
read one epoch of it; the same restart on a small reference corpus for comparison.

usage: python scripts/bench_scale.py CORPUS_DIR [--reference MULTI30K_DIR] [--config CONFIG] [--torchrun]

CORPUS_DIR holds `train.{en,de}`, `valid.{en,de}` plain text (e.g. made by a synthetic-corpus tool);
MULTI30K_DIR is Multi30k in the hub's layout. Every phase runs in a fresh process under a fresh NMT_CACHE
(so the first preparation is really the first), and prints one Markdown table at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


FIRST_STEPS = {}  # label -> seconds from launch to the first logged training step


def max_rss_mib(args: list[str], env: dict, label: str = "") -> tuple[float, float, str]:
    """Wall seconds, the peak RSS (MiB) of the process and of the processes it waited for, and its output;
    the moment its first training step is logged goes to FIRST_STEPS."""
    started = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    output_chunks = []
    for line in process.stdout:
        if label not in FIRST_STEPS and re.search(r"\bstep 1 \|", line):
            FIRST_STEPS[label] = time.perf_counter() - started
        output_chunks.append(line)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = "".join(output_chunks)
    if status != 0:
        sys.exit(f"{' '.join(args[:5])} failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output


def settings(corpus: str, valid: str) -> list[str]:
    return ["--set", f"data.dataset={corpus}", "--set", f"data.valid_split={valid}", "--set", "data.test_split=null",
            "--set", "train.precision=fp32", "--set", "train.log_every=1"]


def first_step(label: str) -> str:
    return f"first step logged {FIRST_STEPS[label]:.1f} s after launch" if label in FIRST_STEPS else ""


EPOCH_READ = """
import resource, sys, time
from nmt.batching import collate, plan_batches
from nmt.config import load_config
from nmt.data.prepare import prepare

def rss():
    fields = dict(line.split(':', 1) for line in open('/proc/self/status'))
    return "/".join(f"{int(fields[k].split()[0]) / 1024:.0f}" for k in ("VmRSS", "RssAnon", "RssFile"))
cfg = load_config(sys.argv[1], sys.argv[2:])
data = prepare(cfg)
before = rss()
started = time.perf_counter()
plan = plan_batches(data.train.src_lengths, data.train.tgt_lengths, batch_tokens=cfg.train.batch_tokens,
                    batch_sentences=cfg.train.batch_sentences, seed=1, epoch=1)
planned = time.perf_counter() - started
for indices in plan:
    collate(data.train, indices)
print(f"EPOCH pairs={len(data.train)} batches={len(plan)} plan_s={planned:.1f} "
      f"read_s={time.perf_counter() - started - planned:.1f} rss_before={before} rss_after={rss()} "
      f"peak={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--reference", help="a small corpus (Multi30k, hub layout) to compare memory with")
    parser.add_argument("--config", default=str(ROOT / "configs" / "multi30k_en_de_cpu.yaml"))
    parser.add_argument("--torchrun", action="store_true", help="also two gloo ranks under torchrun")
    parser.add_argument("--skip-epoch", action="store_true", help="skip reading one whole epoch")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="nmt-scale-cache-"))
    runs = Path(tempfile.mkdtemp(prefix="nmt-scale-runs-"))
    env = {**os.environ, "NMT_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    nmt = [sys.executable, "-m", "nmt"]
    big = settings(args.corpus, "valid")
    rows = []
    try:
        seconds, peak, output = max_rss_mib([*nmt, "prepare", "--config", args.config, *big], env)
        size = re.search(r"([\d,.]+) MiB", output.split("prepared:")[-1])
        rows.append(("first preparation (`nmt prepare`, cold cache)", seconds, peak, f"store {size.group(1)} MiB"))
        for attempt in ("first start after prepare", "second start"):
            label = f"`nmt train`, max_steps=1: {attempt}"
            seconds, peak, output = max_rss_mib(
                [*nmt, "train", "--config", args.config, *big, "--set", "train.max_steps=1",
                 "--run-dir", str(runs / attempt.replace(" ", "_"))], env, label)
            rows.append((label, seconds, peak, first_step(label)))
        if not args.skip_epoch:
            seconds, peak, output = max_rss_mib(
                [sys.executable, "-c", EPOCH_READ, args.config, "data.dataset=" + args.corpus,
                 "data.valid_split=valid", "data.test_split=null"], env)
            epoch = dict(item.split("=") for item in output.split("EPOCH ")[-1].split())
            rows.append((f"read one epoch ({int(epoch['batches']):,} batches of {int(epoch['pairs']):,} pairs)",
                         seconds, peak, f"plan {epoch['plan_s']} s, read {epoch['read_s']} s; "
                         f"RSS (total/anonymous/file) {epoch['rss_before']} MiB before, "
                         f"{epoch['rss_after']} MiB after"))
        if args.torchrun:
            shutil.rmtree(cache / "prepared", ignore_errors=True)
            seconds, peak, output = max_rss_mib(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nmt",
                 "train", "--config", args.config, *big, "--set", "train.max_steps=1", "--set", "train.threads=1",
                 "--run-dir", str(runs / "torchrun")], env)
            builds = output.count("prepared data: tokenizing")
            per_rank = re.findall(r"peak memory of this process ([\d,]+) MiB", output)
            rows.append(("torchrun, 2 gloo ranks, store not yet built", seconds, peak,
                         f"{builds} preparation(s); per rank peak {', '.join(per_rank) or '?'} MiB"))
        if args.reference:
            small = settings(args.reference, "validation")
            for attempt in ("first start", "second start"):
                label = f"reference corpus, `nmt train`, max_steps=1: {attempt}"
                seconds, peak, output = max_rss_mib(
                    [*nmt, "train", "--config", args.config, *small, "--set", "train.max_steps=1",
                     "--run-dir", str(runs / f"reference_{attempt.replace(' ', '_')}")], env, label)
                rows.append((label, seconds, peak, first_step(label)))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
    print("| phase | wall | peak RSS (process and its workers) | notes |\n| --- | ---: | ---: | --- |")
    for label, seconds, peak, notes in rows:
        print(f"| {label} | {seconds:.1f} s | {peak:,.0f} MiB | {notes} |")


if __name__ == "__main__":
    main()
