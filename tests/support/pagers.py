"""Helpers over live pagers and child processes: closing, state, page bytes, kills."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import time
import traceback

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


# --------------------------------------------------------------------------
# A function run in a forked child
# --------------------------------------------------------------------------


def in_fork(fn, timeout: float = 30.0):
    """Run fn() in a forked child; return (its JSON result, the signal that killed it or 0).

    The child's exception is raised here as an AssertionError with its
    traceback; a child that hangs past timeout is killed and reported.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            try:
                out = {"ok": fn()}
            except BaseException:
                out = {"error": traceback.format_exc()}
                code = 1
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(w, data) :]
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"the forked child hung for {timeout} s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    out = json.loads(b"".join(chunks) or b"{}")
    if "error" in out:
        raise AssertionError("in the forked child:\n" + out["error"])
    return out, sig
