"""The Rust crate's fixture files (tests/fixtures/rust-v0.2) and their manifests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------
# Fixture location
# --------------------------------------------------------------------------

# The files the Rust crate wrote, with their manifests, live inside the repository
# so that a clone and the sdist carry everything the tests need.
DEFAULT_FIXTURES_DIR = TESTS_DIR / "fixtures" / "rust-v0.2"


def fixtures_dir() -> Path:
    """The folder of the Rust v0.2 fixtures (MAPPEDPAGES_FIXTURES overrides)."""
    env = os.environ.get("MAPPEDPAGES_FIXTURES")
    return Path(env) if env else DEFAULT_FIXTURES_DIR


def require_fixtures_dir() -> Path:
    d = fixtures_dir()
    assert d.is_dir(), (
        f"fixture folder {d} is missing: expected tests/fixtures/rust-v0.2, "
        "or MAPPEDPAGES_FIXTURES pointing at another copy"
    )
    return d


def load_manifest(name: str) -> dict:
    d = require_fixtures_dir()
    path = d / f"{name}.json"
    assert path.is_file(), f"fixture manifest {path} is missing"
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def copy_fixture(name: str, dest_dir: Path) -> Path:
    """Copy fixture NAME.mpp into dest_dir (writable) and return the copy's path."""
    d = require_fixtures_dir()
    src = d / f"{name}.mpp"
    assert src.is_file(), f"fixture file {src} is missing"
    dst = Path(dest_dir) / f"{name}.mpp"
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    return dst
