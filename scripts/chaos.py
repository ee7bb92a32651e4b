"""SIGKILL a tiny training run at random moments, resuming after each, and check that nothing was lost.

    python scripts/chaos.py [--kills 20] [--seed 0] [--out DIR]

Trains `configs/tiny.yaml` for a fixed number of epochs with frequent time-based checkpoints and a
validation every few steps, kills it with SIGKILL after a random delay (so kills land in steps,
validations and checkpoint writes), resumes with `--resume`, and repeats. Then it checks: every resume
started, the run ended with as many steps as an uninterrupted run of the same config, its final weights
equal the uninterrupted run's (resume is exact on the CPU), metrics.jsonl parses line by line with each
step once, no `.partial` file is left, and no kill lost more work than the checkpoint interval. It prints
the figures and exits non-zero on any failure. Bounded: a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ["train.max_epochs=40", "train.valid_every=50", "train.save_every_minutes=0.02", "train.log_every=1",
            "data.test_split=null", "train.patience=null"]


def nmt(log: Path, *args: str) -> subprocess.Popen:
    """`nmt ARGS`, its messages appended to `log` (a pipe nobody reads would fill and stall it)."""
    with open(log, "a", encoding="utf-8") as handle:
        return subprocess.Popen([sys.executable, "-m", "nmt", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=handle)


def last_line(log: Path) -> str:
    lines = log.read_text(encoding="utf-8").strip().splitlines()
    return lines[-1] if lines else ""


def train(run_dir: Path, resume: bool) -> subprocess.Popen:
    args = ["train", "--run-dir", str(run_dir)] + (["--resume"] if resume else ["--config", "configs/tiny.yaml"])
    for setting in SETTINGS:
        args += ["--set", setting]
    return nmt(run_dir.parent / f"{run_dir.name}.log", *args)


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r and "event" not in r]


def checkpoint_step(path: Path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["progress"]["step"]


def same_weights(a: Path, b: Path) -> bool:
    import torch

    first, second = (torch.load(p, map_location="cpu", weights_only=True)["model"] for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for the two runs (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(args.out or tempfile.mkdtemp(prefix="nmt-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    reference, chaotic = folder / "uninterrupted", folder / "killed"

    started = time.monotonic()
    process = train(reference, resume=False)
    if process.wait() != 0:
        print(last_line(folder / "uninterrupted.log"), file=sys.stderr)
        return 1
    reference_seconds = time.monotonic() - started
    expected_steps = logged_steps(reference)[-1]
    print(f"uninterrupted: {expected_steps} steps in {reference_seconds:.0f} s")

    failures, lost_steps, resumes, kills = [], [], 0, 0
    for kill in range(args.kills):
        resume = (chaotic / "checkpoints").exists() or (chaotic / "config.yaml").exists()
        process = train(chaotic, resume=resume)
        resumes += resume
        delay = rng.uniform(2.0, 9.0)  # start-up takes a few seconds: kills land in loading, steps, saves
        try:
            code = process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
        else:  # it finished before the kill
            failures.append(f"kill {kill + 1}: the run ended (exit {code}) before the kill: "
                            f"{last_line(folder / 'killed.log')}")
            break
        steps = logged_steps(chaotic)
        saved = [checkpoint_step(p) for p in (chaotic / "checkpoints").glob("*.pt")]
        if steps:
            lost_steps.append(steps[-1] - max(saved, default=0))
        print(f"kill {kill + 1:2d} after {delay:.1f} s: step {steps[-1] if steps else 0}, "
              f"checkpoint at step {max(saved, default=0)}")
    process = train(chaotic, resume=True)
    if process.wait() != 0:
        failures.append(f"the final resume failed: {last_line(folder / 'killed.log')}")
    steps = logged_steps(chaotic)
    if steps != list(range(1, expected_steps + 1)):
        failures.append(f"metrics.jsonl does not hold steps 1..{expected_steps} once each")
    if not failures and not same_weights(reference / "checkpoints" / "last.pt", chaotic / "checkpoints" / "last.pt"):
        failures.append("the final weights differ from the uninterrupted run's")
    partial = list(chaotic.rglob("*.partial*"))
    if partial:
        failures.append(f"left behind: {', '.join(map(str, partial))}")
    train_seconds = json.loads((reference / "results.json").read_text())["train_minutes"] * 60
    steps_per_interval = expected_steps / max(train_seconds, 1e-3) * 0.02 * 60
    if lost_steps and max(lost_steps) > 1.5 * steps_per_interval + 2:
        failures.append(f"a kill lost {max(lost_steps)} steps, more than a checkpoint interval")
    print(f"{kills} kills, {resumes} resumes; work lost per kill: at most {max(lost_steps, default=0)} steps, "
          f"median {sorted(lost_steps)[len(lost_steps) // 2] if lost_steps else 0} "
          f"(a checkpoint interval is ~{steps_per_interval:.0f} steps plus the step in flight)")
    for failure in failures:
        print("FAILED:", failure)
    print("chaos: " + ("ok" if not failures else f"{len(failures)} failure(s)") + f"; runs in {folder}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
