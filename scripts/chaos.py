"""SIGKILL a tiny training run at random moments, resuming after each, and check that nothing was lost.

    python scripts/chaos.py [--kills 20] [--seed 0] [--out DIR]

Trains `configs/tiny.yaml` for a fixed number of epochs with frequent time-based checkpoints and a
validation every few steps, kills it with SIGKILL, resumes with `--resume`, and repeats. The kills are
placed by steps, not seconds, so that all of them land inside the run on a fast CPU as on a slow one: each
comes a random moment after a random step of the uninterrupted run's count (so kills land in steps,
validations and checkpoint writes), every fifth during start-up instead. Then it checks: every resume
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
SAVE_EVERY_SECONDS = 1.2
SETTINGS = ["train.max_epochs=40", "train.valid_every=50", f"train.save_every_minutes={SAVE_EVERY_SECONDS / 60:g}",
            "train.log_every=1", "data.test_split=null", "train.patience=null"]


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


def kill_moments(rng: random.Random, kills: int, total_steps: int) -> list[int | None]:
    """When each kill comes: past a step (increasing, all inside the run whatever the machine's speed), or,
    for every fifth, during start-up (None)."""
    targets = sorted(rng.sample(range(total_steps // 20, total_steps * 19 // 20), kills))
    return [None if i % 5 == 4 else step for i, step in enumerate(targets)]


def wait_until(process: subprocess.Popen, segment, target: int | None, seconds: float) -> int | None:
    """Wait until the run logged step `target` (None: only time ends the wait) or `seconds` pass; the exit
    code if the process ended first, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step = segment.step()
        if target is not None and step >= target:
            break
        if process.poll() is not None:
            return process.returncode
        time.sleep(0.02)
    return process.poll()


class Segment:
    """One start of the killed run, watched: when its first new step appeared, so that the steps it ran per
    second (its own speed, whatever else the machine is doing) say how much work a checkpoint interval holds."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.start_step = run_dir, max(logged_steps(run_dir), default=0)
        self.first: tuple[float, int] | None = None  # (time, step) of the first new step seen

    def step(self) -> int:
        now, step = time.monotonic(), max(logged_steps(self.run_dir), default=0)
        if self.first is None and step > self.start_step:
            self.first = (now, step)
        return step

    def steps_per_second(self, step: int) -> float:
        if self.first is None or time.monotonic() - self.first[0] < 0.5:
            return 0.0
        return (step - self.first[1]) / (time.monotonic() - self.first[0])


def kill_and_resume(chaotic: Path, log: Path, rng: random.Random, kills: int, expected_steps: int):
    """SIGKILL the run at each planned moment and resume it; (failures, steps lost per kill, fastest steps per
    second seen, kills, resumes)."""
    failures, lost_steps, fastest, done, resumes = [], [], 0.0, 0, 0
    for kill, target in enumerate(kill_moments(rng, kills, expected_steps)):
        resume = (chaotic / "checkpoints").exists() or (chaotic / "config.yaml").exists()
        segment, process = Segment(chaotic), train(chaotic, resume=resume)
        resumes += resume
        if target is None:  # in start-up: loading the data, the model, a checkpoint
            code = wait_until(process, segment, None, rng.uniform(0.3, 3.0))
        else:  # past a step, then a moment more: in a step, a validation or a checkpoint's write
            code = wait_until(process, segment, target, 600)
            if code is None:
                code = wait_until(process, segment, None, rng.uniform(0.0, 0.3))
        if code is not None:
            failures.append(f"kill {kill + 1}: the run ended (exit {code}) before the kill: {last_line(log)}")
            break
        fastest = max(fastest, segment.steps_per_second(segment.step()))
        process.send_signal(signal.SIGKILL)
        process.wait()
        done += 1
        steps = logged_steps(chaotic)
        saved = max([checkpoint_step(p) for p in (chaotic / "checkpoints").glob("*.pt")], default=0)
        if steps:
            lost_steps.append(steps[-1] - saved)
        print(f"kill {kill + 1:2d} {'in start-up' if target is None else f'past step {target}'}: "
              f"step {steps[-1] if steps else 0}, checkpoint at step {saved}")
    return failures, lost_steps, fastest, done, resumes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for the two runs (default: a temporary folder)")
    args = parser.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="nmt-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    reference, chaotic = folder / "uninterrupted", folder / "killed"

    started = time.monotonic()
    if train(reference, resume=False).wait() != 0:
        print(last_line(folder / "uninterrupted.log"), file=sys.stderr)
        return 1
    expected_steps = logged_steps(reference)[-1]
    print(f"uninterrupted: {expected_steps} steps in {time.monotonic() - started:.0f} s")

    failures, lost_steps, fastest, kills, resumes = kill_and_resume(
        chaotic, folder / "killed.log", random.Random(args.seed), args.kills, expected_steps)
    if train(chaotic, resume=True).wait() != 0:
        failures.append(f"the final resume failed: {last_line(folder / 'killed.log')}")
    elif logged_steps(chaotic) != list(range(1, expected_steps + 1)):
        failures.append(f"metrics.jsonl does not hold steps 1..{expected_steps} once each")
    elif not same_weights(reference / "checkpoints" / "last.pt", chaotic / "checkpoints" / "last.pt"):
        failures.append("the final weights differ from the uninterrupted run's")
    partial = list(chaotic.rglob("*.partial*"))
    if partial:
        failures.append(f"left behind: {', '.join(map(str, partial))}")
    steps_per_interval = fastest * SAVE_EVERY_SECONDS  # at the fastest speed a killed start ran
    if lost_steps and max(lost_steps) > 1.5 * steps_per_interval + 2:
        failures.append(f"a kill lost {max(lost_steps)} steps, more than a checkpoint interval")
    print(f"{kills} kills, {resumes} resumes; work lost per kill: at most {max(lost_steps, default=0)} steps, "
          f"median {sorted(lost_steps)[len(lost_steps) // 2] if lost_steps else 0} "
          f"(a checkpoint interval is at most ~{steps_per_interval:.0f} steps plus the step in flight)")
    for failure in failures:
        print("FAILED:", failure)
    print("chaos: " + ("ok, final weights identical" if not failures else f"{len(failures)} failure(s)")
          + f"; runs in {folder}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
