"""Helpers over live pagers and child processes: closing, state, page bytes, kills."""

from __future__ import annotations

import gc
import signal
import subprocess
import time

import pytest

# --------------------------------------------------------------------------
# Pager helpers
# --------------------------------------------------------------------------


def force_close(p) -> None:
    """Close P, dropping any view a failed test may have left behind."""
    for _ in range(3):
        try:
            p.close()
            return
        except BufferError:
            gc.collect()
    p.close()


def pager_state(p) -> tuple:
    return (p.page_size, p.page_count, p.free_page_count, list(p.allocated_pages()))


def kill_when_ready(argv: list, delay: float) -> bytes:
    """Start a child that prints "ready", SIGKILL it `delay` seconds later.

    Fails the test if the child does not start or ends on its own; returns its stderr.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child did not start: {line!r} {err.decode(errors='replace')}")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, (
        f"child ended on its own (rc {proc.returncode}) before the kill:\n"
        + err.decode(errors="replace")
    )
    return err


# --------------------------------------------------------------------------
# Small page helpers shared by the test modules
# --------------------------------------------------------------------------


def read_page(p, page_id: int) -> bytes:
    """The bytes of one page, through a view released at once."""
    v = p.page(page_id)
    try:
        return bytes(v)
    finally:
        v.release()


def read_protected(p, pid: int) -> bytes:
    """The committed bytes of a protected page."""
    v = p.protected_page(pid)
    try:
        return bytes(v)
    finally:
        v.release()


def commit_bytes(p, pid: int, data: bytes, offset: int = 0) -> None:
    """Write data into a protected page at offset and commit."""
    with p.write_protected(pid) as w:
        w.page[offset : offset + len(data)] = data
