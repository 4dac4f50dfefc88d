"""Build the C core of mappedpages as a cffi extension (out-of-line API mode).

The cdef is read from the one public header, csrc/mappedpages.h, between its
CDEF-BEGIN and CDEF-END markers, so the declarations Python sees are exactly
the ones the C files are compiled against.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
HEADER = CSRC / "mappedpages.h"


def read_cdef() -> str:
    """Return the cffi-parsable part of the public header."""
    text = HEADER.read_text(encoding="utf-8")
    match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S)
    if match is None:
        raise RuntimeError(f"{HEADER} has no CDEF-BEGIN/CDEF-END section")
    return match.group(1)


def compile_args() -> list[str]:
    """Warnings for the core; errors on warnings and sanitizers only when asked.

    A user's ``pip install`` must not fail because a newer compiler has a new
    warning, so ``-Werror`` is added only when MAPPEDPAGES_WERROR is set (CI's
    builds); MAPPEDPAGES_SANITIZE adds AddressSanitizer and UBSan, and with
    MAPPEDPAGES_CHECK the pager's invariants are checked after every commit
    (csrc/check.c; a violation raises InternalError).
    """
    args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"]
    if os.environ.get("MAPPEDPAGES_WERROR"):
        args.append("-Werror")
    if os.environ.get("MAPPEDPAGES_SANITIZE") or os.environ.get("MAPPEDPAGES_CHECK"):
        args.append("-DMAPPEDPAGES_CHECK")
    if os.environ.get("MAPPEDPAGES_SANITIZE"):
        args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    return args


def link_args() -> list[str]:
    """Link the sanitizer runtimes when the core is built with them."""
    if os.environ.get("MAPPEDPAGES_SANITIZE"):
        return ["-fsanitize=address,undefined"]
    return []


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "mappedpages._core",
    '#include "mappedpages.h"',
    sources=sorted(str(p.relative_to(HERE)) for p in CSRC.glob("*.c")),
    include_dirs=[str(CSRC.relative_to(HERE))],
    extra_compile_args=compile_args(),
    extra_link_args=link_args(),
    py_limited_api=True,
)


def _setuptools_too_old() -> str | None:
    """Why an in-place build would fail here, or None.

    cffi's compile reads pyproject.toml through the setuptools installed here
    (pip's builds bring their own), and before 77 setuptools refuses its
    ``license`` field with a schema error that does not say so.
    """
    import setuptools

    major = int(setuptools.__version__.split(".", 1)[0])
    if major >= 77:
        return None
    return (
        f"an in-place build needs setuptools>=77 (found {setuptools.__version__}): "
        "pip install -U 'setuptools>=77', or build with pip install -e ."
    )


if __name__ == "__main__":
    # Build in place, for development: python build_ffi.py
    problem = _setuptools_too_old()
    if problem:
        sys.exit(problem)
    os.chdir(HERE)
    ffibuilder.compile(tmpdir=str(HERE), verbose=True)
    sys.exit(0)
