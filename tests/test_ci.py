"""The CI configuration: the wheel stage of .ci/run and the release-wheel build settings.

Static checks only: running .ci/wheels builds a wheel and a venv per CPython,
which is CI's job (``bash .ci/wheels``), not the test suite's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cibuildwheel():
    tomllib = pytest.importorskip("tomllib")
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["tool"]["cibuildwheel"]


def test_cibuildwheel_builds_one_abi3_wheel_per_platform(cibuildwheel):
    assert cibuildwheel["build"] == "cp39-*"  # the abi3 wheel serves 3.9 and later
    assert "pp*" in cibuildwheel["skip"] and "*-musllinux_*" in cibuildwheel["skip"]
    assert sorted(cibuildwheel["linux"]["archs"]) == ["aarch64", "x86_64"]
    assert sorted(cibuildwheel["macos"]["archs"]) == ["arm64", "x86_64"]


def test_cibuildwheel_tests_the_wheel_with_existing_tests(cibuildwheel):
    assert any(r.startswith("pytest") for r in cibuildwheel["test-requires"])
    command = cibuildwheel["test-command"]
    assert command.startswith("pytest ")
    files = re.findall(r"\{project\}/(\S+\.py)", command)
    assert files, command
    for rel in files:
        assert (REPO / rel).is_file(), rel


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_ci_scripts_parse_and_run_the_wheel_stage():
    for script in (".ci/run", ".ci/wheels"):
        r = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    run = (REPO / ".ci/run").read_text()
    assert "bash .ci/wheels" in run
    wheels = (REPO / ".ci/wheels").read_text()
    assert "set -euo pipefail" in wheels
    assert "3.9 3.10 3.11 3.12 3.13" in wheels
    assert "mappedpages demo" in wheels and "-m pytest" in wheels
