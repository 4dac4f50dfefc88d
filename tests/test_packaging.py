"""The package builds one abi3 wheel that installs into a fresh venv and runs.

Builds from a copy of the checkout's files in a temporary folder (setuptools
writes build/ and *.egg-info beside the sources, which must not land in the
repository), the way a release is built: ``python -m build`` makes the sdist
and then the wheel from that sdist. The wheel must be tagged abi3 for CPython
3.9+, and ``python -m mappedpages demo`` and the ``mappedpages`` script must
work from a fresh venv, run from a folder outside the sources. When another
CPython 3.9+ is on the machine, the same wheel is installed there too.

Needs the package index (for build, setuptools, cffi); takes about a minute.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("MAPPEDPAGES_SANITIZED")),
    reason="packaging is checked by the plain run; the sanitizer run preloads ASan into pip",
)


def sh(*args, cwd, timeout=600, env=None):
    r = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
    out = f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{out}"
    return r


def source_files() -> list[str]:
    """The files a checkout holds: tracked ones, and new ones git does not ignore."""
    try:
        r = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        r = None
    if r is not None and r.returncode == 0 and r.stdout:
        return [f for f in r.stdout.decode().split("\0") if f and (REPO / f).is_file()]
    skip = {".git", "build", "dist", ".venv", ".venv-ci", ".venv-asan", "__pycache__"}
    out = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if path.is_file() and not any(p in skip or p.endswith(".egg-info") for p in rel.parts):
            if path.suffix not in {".o", ".so", ".pyc"}:
                out.append(str(rel))
    return out


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


def make_venv(base_python: str, where: Path) -> Path:
    sh(base_python, "-m", "venv", where, cwd=where.parent)
    return venv_python(where)


def other_interpreters() -> list[str]:
    """Other CPython 3.9+ interpreters on this machine, oldest first (may be none)."""
    found: dict[tuple[int, int], str] = {}
    candidates = [shutil.which(f"python3.{m}") for m in range(9, 15)]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3")))
    for exe in candidates:
        if not exe:
            continue
        try:
            r = subprocess.run(
                [exe, "-c", "import sys; print(sys.implementation.name, *sys.version_info[:2])"],
                capture_output=True, text=True, timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        parts = r.stdout.split()
        if r.returncode != 0 or len(parts) != 3 or parts[0] != "cpython":
            continue
        version = (int(parts[1]), int(parts[2]))
        if version >= (3, 9) and version != sys.version_info[:2]:
            found.setdefault(version, exe)
    return [found[v] for v in sorted(found)]


def check_installed(py: Path, wheel: Path, work: Path) -> None:
    sh(py, "-m", "pip", "install", "-q", wheel, cwd=work)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    r = sh(py, "-m", "mappedpages", "demo", cwd=elsewhere)
    assert "verified" in r.stdout, r.stdout
    r = sh(py, "-c", "import mappedpages, sys; print(mappedpages.__file__)", cwd=elsewhere)
    assert str(REPO) not in r.stdout and "site-packages" in r.stdout, r.stdout
    # The console script, on a file made by the installed package.
    f = elsewhere / "x.mpp"
    sh(py, "-c", f"import mappedpages; p = mappedpages.Pager.create({str(f)!r}); "
       "p.alloc_protected(); p.close()", cwd=elsewhere)
    script = py.parent / "mappedpages"
    r = sh(script, "check", f, cwd=elsewhere)
    assert "ok: no problems found" in r.stdout
    f.unlink()


def build_leftovers() -> set[str]:
    return {p.name for p in REPO.iterdir() if p.name in ("build", "dist") or p.name.endswith(
        ".egg-info")}


def test_abi3_wheel_builds_installs_and_runs(tmp_path):
    before = build_leftovers()
    src = tmp_path / "src"
    for rel in source_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    for leftover in ("build", "dist"):
        shutil.rmtree(src / leftover, ignore_errors=True)
    dist = tmp_path / "dist"
    builder = make_venv(sys.executable, tmp_path / "build-venv")
    has_build = subprocess.run(
        [str(builder), "-m", "pip", "install", "-q", "build"], capture_output=True, timeout=600
    ).returncode == 0
    if has_build:
        sh(builder, "-m", "build", "--outdir", dist, src, cwd=tmp_path)
        sdists = list(dist.glob("mappedpages-*.tar.gz"))
        assert len(sdists) == 1
    else:  # no `build` from the index: pip builds the wheel the same way, without the sdist
        sh(builder, "-m", "pip", "wheel", "--no-deps", "-w", dist, src, cwd=tmp_path)
    wheels = list(dist.glob("mappedpages-*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    assert "-cp39-abi3-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "mappedpages/_core.abi3.so" in names or any(
            n.startswith("mappedpages/_core") and n.endswith(".pyd") for n in names
        )
        for needed in ("mappedpages/__main__.py", "mappedpages/_cli.py", "mappedpages/py.typed"):
            assert needed in names
        assert not any(n.startswith(("csrc/", "tests/", "build_ffi")) for n in names)
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(f"{dist_info}/METADATA").decode()
        assert "Requires-Python: >=3.9" in meta
        assert "Requires-Dist: cffi" in meta
        assert "mappedpages = " in z.read(f"{dist_info}/entry_points.txt").decode()

    check_installed(make_venv(sys.executable, tmp_path / "venv"), wheel, tmp_path)
    others = other_interpreters()
    if others:  # the same wheel on another CPython: what abi3 promises
        check_installed(make_venv(others[0], tmp_path / "venv-other"), wheel, tmp_path)

    # Nothing was written into the checkout.
    assert build_leftovers() <= before
