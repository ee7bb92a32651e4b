#!/usr/bin/env python3
"""Build the Docker image from the Dockerfile as shipped and use it on this machine's CPU as the docs say a
user does: train, `docker stop` and resume, translate, evaluate, serve, torchrun with two processes.

    sudo python3 scripts/docker_check.py [--image nmt:docker-check] [--keep]

Run as root on a Debian machine (CI runs it after the tests). It installs Debian's docker.io and debootstrap
where missing, and starts dockerd if none answers (stopping that one, by its pid, at the end). No image
registry need be reachable: where `python:3.11-slim` is not on the machine, a stand-in is made from Debian's
packages (Debian 12 with Python 3.11, as that image is) and tagged with its name, so the Dockerfile builds
unchanged. The stand-in carries this machine's certificate bundle and pip index settings, read here at run
time, so the build's pip reaches the registry this machine reaches; a label holds its content key, and it is
remade only when that changes. A `python:3.11-slim` without the label (the real one) is used as it is. The
stand-in and the build's layers stay for the next run; the containers, volumes and folders the check made
are removed. Prints a table of the steps with their times; on a failure, one line saying what and exit 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "python:3.11-slim"
LABEL = "nmt.standin"
# what the stand-in is made of; a change here remakes it
STANDIN = {"suite": "bookworm", "variant": "minbase", "include": "python3,python3-pip,ca-certificates", "v": 1}
UID = 1000  # the image's user
TINY = ["--config", "/app/configs/tiny.yaml", "--set", "data.dataset=/work/tiny"]


class CheckFailed(Exception):
    """One line: which step failed and why."""


def run(args: list[str], *, timeout: float = 1800, log: Path | None = None, check: bool = True,
        stdin=None) -> subprocess.CompletedProcess:
    """A command; its output kept in `log` (appended) when given, and returned."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=stdin)
    except FileNotFoundError:
        raise CheckFailed(f"{args[0]} not found") from None
    if log is not None:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CheckFailed(f"`{' '.join(args[:4])} ...` exited {result.returncode}: {tail[0]}")
    return result


def preflight() -> None:
    """Everything this check needs that it cannot install, said in one line each."""
    if os.geteuid() != 0:
        raise CheckFailed("must run as root (it installs Debian packages and starts dockerd): run it with sudo")
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        raise CheckFailed("needs a Debian machine (docker.io and debootstrap come from Debian's packages)")
    docker_root = Path("/var/lib/docker")
    free = shutil.disk_usage(docker_root if docker_root.exists() else docker_root.parent).free / 2**30
    if free < 12:
        raise CheckFailed(f"{free:.1f} GiB free under /var/lib: the image needs about 12 GiB to build")


def install_packages() -> None:
    missing = [pkg for pkg, tool in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
               if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        print(f"docker_check: installing {' '.join(missing)} from Debian's packages", flush=True)
        run(["apt-get", "update", "-qq"], timeout=600)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        result = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, text=True,
                                env=env, timeout=1200)
        if result.returncode != 0:
            raise CheckFailed(f"apt-get install {' '.join(missing)} failed: {result.stderr.strip()[-200:]}")


def engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def start_dockerd(work: Path) -> subprocess.Popen | None:
    """The running engine if one answers, else one started here (returned, to be stopped at the end)."""
    if engine_answers():
        return None
    log = open(work / "dockerd.log", "w", encoding="utf-8")  # noqa: SIM115 - open while dockerd runs
    dockerd = subprocess.Popen([shutil.which("dockerd") or "/usr/sbin/dockerd"], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(120):
        if dockerd.poll() is not None:
            lines = (work / "dockerd.log").read_text().strip().splitlines() or ["no output"]
            raise CheckFailed(f"dockerd exited {dockerd.returncode}: {lines[-1][:300]}")
        if engine_answers():
            return dockerd
        time.sleep(0.5)
    stop_dockerd(dockerd)
    raise CheckFailed(f"dockerd did not answer within 60 s (its log: {work / 'dockerd.log'})")


def stop_dockerd(dockerd: subprocess.Popen) -> None:
    dockerd.terminate()
    try:
        dockerd.wait(timeout=30)
    except subprocess.TimeoutExpired:
        dockerd.kill()
        dockerd.wait()


def prepare_host(work: Path, engine: list) -> str:
    """Checks, installs and starts what the check needs; the dockerd started here (or None) into `engine`."""
    preflight()
    install_packages()
    engine.append(start_dockerd(work))
    return "dockerd started for the check" if engine[0] else "the running dockerd"


def host_pip_settings() -> tuple[str, Path]:
    """This machine's pip index settings as a pip.conf, and the certificate bundle pip trusts here. Local
    paths (file: indexes, find-links, constraints) mean nothing inside the build and are left out."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            timeout=120).stdout
    settings, cert = {}, Path("/etc/ssl/certs/ca-certificates.crt")
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name, value = key.split(".")[-1], value.strip().strip("'\"")
        if name == "cert":
            cert = Path(value)
        elif name in ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout"):
            kept = " ".join(v for v in value.split() if not v.startswith("file:"))
            if kept:
                settings["timeout" if name == "default-timeout" else name] = kept
    settings["cert"] = "/etc/ssl/certs/ca-certificates.crt"  # where the stand-in keeps the host's bundle
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())), cert


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the stand-in's apt, in the build, uses it too)."""
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = source.read_text(errors="replace") if source.is_file() else ""
        for url in re.findall(r"^(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(\S+)", text, flags=re.M):
            if url.rstrip("/").endswith("/debian"):
                return url
    return "http://deb.debian.org/debian"


def ensure_standin(work: Path, log: Path) -> str:
    """The base image: the real one if present, the stand-in if its key matches, else a new stand-in."""
    found = run(["docker", "image", "inspect", BASE, "--format", "{{json .Config.Labels}}"], check=False)
    labels = json.loads(found.stdout or "null") or {} if found.returncode == 0 else None
    if labels is not None and LABEL not in labels:
        return f"{BASE} found on this machine (not a stand-in): used as it is"
    pip_conf, cert = host_pip_settings()
    mirror = debian_mirror()
    key = hashlib.sha256(json.dumps([STANDIN, mirror, pip_conf, hashlib.sha256(cert.read_bytes()).hexdigest()])
                         .encode()).hexdigest()[:16]
    if labels is not None and labels.get(LABEL) == key:
        return f"stand-in {key} reused"
    previous = image_id(BASE) if labels is not None else ""
    root = work / "standin"
    run(["debootstrap", f"--variant={STANDIN['variant']}", f"--include={STANDIN['include']}", STANDIN["suite"],
         str(root), mirror], timeout=1200, log=log)
    shutil.copyfile(cert, root / "etc/ssl/certs/ca-certificates.crt")
    (root / "etc/pip.conf").write_text(pip_conf)
    (root / "usr/bin/python").symlink_to("python3")  # as in python:3.11-slim
    for marker in (root / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()  # the slim image's pip installs into its Python, as the Dockerfile does
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
        run(["docker", "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
             "--change", f"LABEL {LABEL}={key}", "-", BASE], stdin=tar.stdout, log=log)
    shutil.rmtree(root)
    if previous:  # an older stand-in, now untagged: gone unless an image still builds on it
        run(["docker", "rmi", previous], check=False, log=log)
    return f"stand-in {key} made with debootstrap from {mirror}"


def image_id(image: str) -> str:
    return run(["docker", "image", "inspect", image, "--format", "{{.Id}}"], check=False).stdout.strip()


def build(image: str, log: Path) -> str:
    before = image_id(image)
    result = run(["docker", "build", "--network", "host", "-t", image, str(ROOT)], timeout=3600, log=log)
    if before and before != image_id(image):  # the last check's image, now untagged: its own layers go
        run(["docker", "rmi", before], check=False, log=log)
    steps = len(re.findall(r"^Step \d+/\d+", result.stdout, flags=re.M))
    cached = result.stdout.count("Using cache")
    size = int(run(["docker", "image", "inspect", image, "--format", "{{.Size}}"]).stdout)
    return f"{cached} of {steps} steps from the layer cache; image {size / 1e9:.2f} GB"


class Containers:
    """The containers and volumes of one check, all named `nmt-check-PID-*`, and the host folders mounted
    in them: `runs/` at /runs and `files/` at /work (the user's own folder in the docs), both owned by the
    image's uid as the docs' `mkdir` and `chown` recipe makes them."""

    def __init__(self, image: str, work: Path):
        self.image, self.log = image, work / "containers.log"
        self.runs, self.files = work / "runs", work / "files"
        self.prefix = f"nmt-check-{os.getpid()}"
        self.names: list[str] = []
        self.volumes: list[str] = []
        shutil.copytree(ROOT / "tests" / "data" / "tiny", self.files / "tiny")
        for folder in (self.runs, self.files / "out"):
            folder.mkdir(parents=True, exist_ok=True)
        for path in (self.runs, self.files, *self.files.rglob("*")):
            os.chown(path, UID, UID)

    def volume(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        run(["docker", "volume", "create", full])
        self.volumes.append(full)
        return full

    def start(self, name: str, args: list[str], *, data: str | None, options: tuple[str, ...] = ()) -> str:
        full = f"{self.prefix}-{name}"
        mounts = (["-v", f"{data}:/data"] if data else []) + ["-v", f"{self.runs}:/runs", "-v", f"{self.files}:/work"]
        run(["docker", "run", "-d", "--name", full, *options, *mounts, self.image, *args], log=self.log)
        self.names.append(full)
        return full

    def wait(self, name: str, timeout: float) -> tuple[int, str, str]:
        """Exit status, standard output and error of a container that ends; checks where it wrote."""
        code = int(run(["docker", "wait", name], timeout=timeout).stdout.strip())
        logs = run(["docker", "logs", name], log=self.log)
        changed = [line.split(" ", 1)[1] for line in run(["docker", "diff", name]).stdout.splitlines()]
        outside = [p for p in changed if p not in ("/data", "/runs", "/work") and p.split("/")[1] != "tmp"]
        if outside:  # /tmp: torch's empty scratch folder, gone with the container
            raise CheckFailed(f"{name} wrote outside /runs and /data: {', '.join(outside[:5])}")
        return code, logs.stdout, logs.stderr

    def nmt(self, name: str, args: list[str], *, data: str | None, options: tuple[str, ...] = (),
            timeout: float = 900) -> tuple[str, str]:
        """Run the image to its end; its standard output and error, or CheckFailed with its last line."""
        code, out, err = self.wait(self.start(name, args, data=data, options=options), timeout)
        if code != 0:
            raise CheckFailed(f"{name}: exit {code}: {(err or out).strip().splitlines()[-1:]}")
        return out, err

    def running(self, name: str) -> bool:
        return run(["docker", "inspect", name, "--format", "{{.State.Running}}"]).stdout.strip() == "true"

    def stop(self, name: str) -> tuple[float, int, str]:
        """`docker stop` with its default 10 s grace: seconds it took, exit status, the log."""
        started = time.monotonic()
        run(["docker", "stop", "-t", "10", name], timeout=60)
        seconds = time.monotonic() - started
        code, out, err = self.wait(name, 60)
        return seconds, code, out + err

    def remove(self) -> None:
        if self.names:
            run(["docker", "rm", "-f", "-v", *self.names], check=False)
        if self.volumes:
            run(["docker", "volume", "rm", *self.volumes], check=False)


CHECKPOINT = "/runs/tiny/checkpoints/best.pt"
SAME_WEIGHTS = ("import sys, torch; a, b = (torch.load(p, map_location='cpu', weights_only=True)['model'] "
                "for p in sys.argv[1:]); print(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a))")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def step_version(c: Containers) -> str:
    out, _ = c.nmt("version", ["--version"], data=None)
    pinned = re.search(r"torch==([\w.]+)", (ROOT / "Dockerfile").read_text()).group(1)
    require(f"torch {pinned}" in out, f"nmt --version in the image names no torch {pinned}: {out.strip()}")
    return out.strip().replace("\n", "; ")


def step_train(c: Containers, data: str) -> str:
    _, log = c.nmt("train", ["train", *TINY, "--run-dir", "/runs/tiny"], data=data)
    run_dir = c.runs / "tiny"
    files = ["checkpoints/best.pt", "checkpoints/last.pt", "metrics.jsonl", "results.json", "config.yaml", "spm.model"]
    missing = [name for name in files if not (run_dir / name).is_file()]
    require(not missing, f"the run folder lacks {', '.join(missing)}")
    foreign = [str(p.relative_to(c.runs)) for p in run_dir.rglob("*") if p.stat().st_uid != UID]
    require(not foreign, f"not owned by uid {UID}: {', '.join(foreign[:3])}")
    for phrase in ("sentencepiece: training", "prepared data: tokenizing"):
        require(phrase in log, f"a first start on an empty /data did not log '{phrase}'")
    results = json.loads((run_dir / "results.json").read_text())
    return f"{results['steps']} steps, test BLEU {results['test_bleu']}, files owned by uid {UID}"


def last_step(metrics: Path) -> int:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return max([json.loads(line).get("step", 0) for line in lines if line.endswith("}")], default=0)


def step_stop(c: Containers, data: str) -> str:
    name = c.start("stopped", ["train", *TINY, "--run-dir", "/runs/stopped"], data=data)
    metrics, deadline = c.runs / "stopped" / "metrics.jsonl", time.monotonic() + 600
    while last_step(metrics) < 50:  # past the first validation, early in the run on any machine
        require(c.running(name), "the run to be stopped ended before step 50")
        require(time.monotonic() < deadline, "the run to be stopped logged no step 50 within 10 minutes")
        time.sleep(0.1)
    step = last_step(metrics)
    seconds, code, log = c.stop(name)
    require(seconds < 10 and code == 143, f"docker stop took {seconds:.1f} s, exit {code} (expected 143 within 10 s)")
    require((c.runs / "stopped" / "checkpoints" / "last.pt").is_file(), "no last.pt after docker stop")
    for phrase in ("prepared data: reusing", "sentencepiece: reusing"):
        require(phrase in log, f"a second start on the same /data did not log '{phrase}'")
    return f"stopped near step {step} in {seconds:.1f} s, exit {code}, last.pt saved; data and tokenizer reused"


def step_resume(c: Containers, data: str) -> str:
    c.nmt("resume", ["train", "--resume", "--run-dir", "/runs/stopped"], data=data)
    steps = [json.loads((c.runs / run / "results.json").read_text())["steps"] for run in ("tiny", "stopped")]
    require(steps[0] == steps[1], f"resumed to step {steps[1]}, the uninterrupted run to {steps[0]}")
    out, _ = c.nmt("compare", ["-c", SAME_WEIGHTS, "/runs/tiny/checkpoints/last.pt",
                               "/runs/stopped/checkpoints/last.pt"], data=None, options=("--entrypoint", "python"))
    require(out.strip() == "True", "the resumed run's final weights differ from the uninterrupted run's")
    return f"resumed to step {steps[1]}, as the uninterrupted run; final weights identical"


def step_translate(c: Containers, data: str) -> str:
    args = ["translate", "--checkpoint", CHECKPOINT, "--input", "/work/tiny/test.en", "--output", "/work/out/test.de"]
    c.nmt("translate", args, data=data)
    c.nmt("translate-again", args, data=data)  # the same command again replaces its own output
    lines = [len((c.files / path).read_text().splitlines()) for path in ("tiny/test.en", "out/test.de")]
    require(lines[0] == lines[1], f"{lines[0]} input lines, {lines[1]} output lines")
    return f"{lines[1]} lines for {lines[0]}; the same command again replaced its own output"


def step_evaluate(c: Containers, data: str) -> str:
    out, _ = c.nmt("evaluate", ["evaluate", "--checkpoint", CHECKPOINT, "--dataset", "/work/tiny", "--split", "test",
                                "--out", "/work/out/eval", "--json"], data=data)
    by_checkpoint = json.loads(out.strip().splitlines()[-1])
    out, _ = c.nmt("evaluate-file", ["evaluate", "--hyp", "/work/out/test.de", "--ref", "/work/tiny/test.de",
                                     "--json"], data=data)
    by_file = json.loads(out.strip().splitlines()[-1])
    require(by_checkpoint["bleu"] == by_file["bleu"],
            f"BLEU {by_checkpoint['bleu']} decoding the split, {by_file['bleu']} scoring translate's output")
    return f"BLEU {by_file['bleu']:.2f}, the same from the checkpoint and from translate's output"


def http(port: int, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def step_serve(c: Containers, data: str) -> str:
    port = free_port()
    name = c.start("serve", ["serve", "--checkpoint", CHECKPOINT, "--host", "0.0.0.0"], data=data,
                   options=("-p", f"127.0.0.1:{port}:8080"))
    deadline = time.monotonic() + 300
    while True:
        require(c.running(name), "the server's container exited before /health answered")
        require(time.monotonic() < deadline, "/health did not answer within 5 minutes")
        try:
            require(http(port, "/health")["status"] == "ok", "/health did not say ok")
            break
        except OSError:  # not listening yet
            time.sleep(0.5)
    sources = (c.files / "tiny" / "test.en").read_text().splitlines()
    served = [t["text"] for t in http(port, "/translate", {"texts": sources})["translations"]]
    translated = (c.files / "out" / "test.de").read_text().splitlines()
    differ = sum(a != b for a, b in zip(served, translated))
    require(len(served) == len(translated) and not differ, f"{differ} of {len(served)} served translations differ "
            "from nmt translate's")
    seconds, code, _ = c.stop(name)
    require(seconds < 10 and code == 0, f"docker stop took {seconds:.1f} s, exit {code} (expected 0 within 10 s)")
    return f"/health ok; {len(served)} texts as nmt translate gave them; stopped in {seconds:.1f} s, exit 0"


def step_torchrun(c: Containers) -> str:
    data, before = c.volume("ddp"), set(os.listdir(c.runs))
    args = ["--nproc_per_node", "2", "-m", "nmt", "train", *TINY, "--set", "train.max_epochs=5", "--run-dir",
            "/runs/ddp"]
    _, log = c.nmt("torchrun", args, data=data, options=("--ipc=host", "--entrypoint", "torchrun"))
    new = set(os.listdir(c.runs)) - before
    require(new == {"ddp"}, f"two processes made the run folders {sorted(new)}, not one")
    out, _ = c.nmt("prepared", ["-A", "/data/nmt-cache/prepared"], data=data, options=("--entrypoint", "ls"))
    stores = [name for name in out.split() if not name.endswith(".lock")]  # a store's lock lies beside it
    require(len(stores) == 1 and log.count("prepared data: tokenizing") == 1,
            f"two processes prepared the data more than once: {stores}")
    results = json.loads((c.runs / "ddp" / "results.json").read_text())
    return f"world size 2 (gloo): {results['steps']} steps, one preparation, one run folder"


def timed(table: list, name: str, step, *args) -> str:
    started = time.monotonic()
    try:
        note = step(*args)
    except CheckFailed as failure:
        table.append((name, time.monotonic() - started, f"FAILED: {failure}"))
        raise CheckFailed(f"{name}: {failure}") from None
    except subprocess.TimeoutExpired as expired:
        table.append((name, time.monotonic() - started, "FAILED: timed out"))
        raise CheckFailed(f"{name}: `{' '.join(expired.cmd[:3])} ...` did not end within {expired.timeout:.0f} s"
                          ) from None
    except Exception as error:  # noqa: BLE001 - a file not as expected, say: still one line, and the table
        table.append((name, time.monotonic() - started, f"FAILED: {type(error).__name__}"))
        raise CheckFailed(f"{name}: {type(error).__name__}: {error}") from None
    table.append((name, time.monotonic() - started, note))
    return note


def exercise(table: list, image: str, work: Path) -> None:
    c = Containers(image, work)
    try:
        data = c.volume("data")
        timed(table, "nmt --version", step_version, c)
        timed(table, "train (first start, empty /data)", step_train, c, data)
        timed(table, "docker stop during training", step_stop, c, data)
        timed(table, "train --resume", step_resume, c, data)
        timed(table, "translate", step_translate, c, data)
        timed(table, "evaluate", step_evaluate, c, data)
        timed(table, "serve", step_serve, c, data)
        timed(table, "torchrun --nproc_per_node 2", step_torchrun, c)
    finally:
        c.remove()


def machine() -> str:
    first = Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
    cpu = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first)}
    flags = sorted(set(cpu.get("flags", "").split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx_vnni"})
    try:
        server = run(["docker", "version", "--format", "{{.Server.Version}}"], check=False).stdout.strip()
    except CheckFailed:
        server = ""
    return (f"{cpu.get('model name', '?')} (family {cpu.get('cpu family', '?')}, model {cpu.get('model', '?')}; "
            f"{' '.join(flags)}), {os.cpu_count()} cores; Docker engine {server or '?'}; {time.strftime('%Y-%m-%d')}")


def print_table(table: list, total: float, where: str) -> None:
    print("\n| step | seconds | result |\n| --- | ---: | --- |")
    for name, seconds, note in table:
        print(f"| {name} | {seconds:.0f} | {note} |")
    print(f"| all | {total:.0f} | {where} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="nmt:docker-check", help="tag for the image built")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, runs) afterwards")
    args = parser.parse_args()
    # a CI job's timeout sends SIGTERM: end through the `finally` below, which stops the dockerd started here
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    table, started, dockerd, failure = [], time.monotonic(), None, None
    work = Path(tempfile.mkdtemp(prefix="nmt-docker-check-"))
    try:
        engine: list[subprocess.Popen | None] = []
        timed(table, "packages and engine", prepare_host, work, engine)
        dockerd = engine[0]
        timed(table, "base image", ensure_standin, work, work / "build.log")
        timed(table, "docker build", build, args.image, work / "build.log")
        exercise(table, args.image, work)
    except CheckFailed as failed:
        failure = failed
    finally:
        where = machine()  # while the engine still answers
        if dockerd is not None:
            stop_dockerd(dockerd)
    kept = args.keep or (failure is not None and any(work.iterdir()))
    if not kept:
        shutil.rmtree(work, ignore_errors=True)
    print_table(table, time.monotonic() - started, where)
    if failure is not None:
        print(f"docker_check: {failure}" + (f" (logs: {work})" if kept else ""), file=sys.stderr)
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
