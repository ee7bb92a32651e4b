"""The GPU check's one table, from what scripts/gpu_check.sh left in its folder: a stage that failed shows
as "-", the others still count."""

import json
import re
import statistics
import sys
from pathlib import Path


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def tokens_per_sec(run: Path) -> float | None:
    """Median target tokens/s over the logged windows, the first (start-up, compilation) left out."""
    records = [json.loads(line) for line in read(run / "metrics.jsonl").splitlines() if line.strip()]
    speeds = [r["tokens_per_sec"] for r in records if r.get("tokens_per_sec")]
    return statistics.median(speeds[1:] or speeds) if speeds else None


def fmt(value, spec=",.0f") -> str:
    return "-" if value is None else format(value, spec)


def rows(out: Path):
    machine = read(out / "machine.txt").strip().splitlines()
    yield "machine", "<br>".join(machine) if machine else "-"
    yield "GPU-marked tests", (read(out / "gpu_tests.txt").strip().splitlines() or ["-"])[-1]
    compiled, eager = tokens_per_sec(out / "compiled"), tokens_per_sec(out / "eager")
    results = json.loads(read(out / "compiled" / "results.json") or "{}")
    yield "default config, compiled recurrence: target tokens/s", fmt(compiled)
    yield "default config as shipped: target tokens/s", fmt(eager)
    yield "compiled / shipped", fmt(compiled / eager if compiled and eager else None, ".2f")
    yield "compiled run: steps, peak GPU memory (MiB)", f"{results.get('steps', '-')}, " \
                                                       f"{results.get('peak_gpu_memory_mib', '-')}"
    for beam in (1, 5):
        scores = json.loads(read(out / f"decode_beam{beam}.json") or "{}")
        seconds = float(read(out / f"decode_beam{beam}.seconds") or "nan")
        yield f"test BLEU, beam {beam} (seconds, loading included)", f"{fmt(scores.get('bleu'), '.2f')} ({seconds:.1f})"
    found = re.findall(r"opennmt target_tokens_per_s=([\d.]+)", read(out / "opennmt.log"))
    peer, ours = (float(found[-1]) if found else None), tokens_per_sec(out / "matched")
    yield "matched model, OpenNMT-py 3.5.1: target tokens/s", fmt(peer)
    yield "matched model, nmt: target tokens/s", fmt(ours)
    yield "nmt / OpenNMT-py", fmt(ours / peer if ours and peer else None, ".2f")
    stages = [line.rsplit(",", 1) for line in read(out / "stages.csv").splitlines()]
    for (name, start), (_, end) in zip(stages, stages[1:]):
        yield f"seconds: {name}", str(int(end) - int(start))


def main() -> None:
    out = Path(sys.argv[1])
    table = ["| GPU check | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows(out))]
    print("\n".join(table))
    (out / "table.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
