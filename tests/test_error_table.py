"""The one error table lives in C (csrc/errors.c); Python takes its messages from it."""

from __future__ import annotations

from pathlib import Path

import pytest

import mappedpages
from mappedpages._core import ffi, lib
from mappedpages._errors import (
    ERRORS,
    ReservedSubPageId,
    error_for,
    message_for,
    recovery_flag_names,
)


def c_text(fn: object, value: int) -> str | None:
    out = ffi.new("char **")
    if fn(value, out) != lib.MP_OK:  # type: ignore[operator]
        return None
    return ffi.string(out[0]).decode()


def test_every_code_has_a_message_and_a_class() -> None:
    for code in range(1, lib.MP_ERROR_CODES):
        text = c_text(lib.mp_strerror, code)
        assert text, code
        assert code in ERRORS, code
        exc = error_for(code, "ctx")
        assert isinstance(exc, ERRORS[code])
        assert str(exc).endswith(text) or text in str(exc)


def test_strerror_refuses_what_is_not_a_code() -> None:
    out = ffi.new("char **")
    for bad in (-1, -22, lib.MP_ERROR_CODES, 1000):
        assert lib.mp_strerror(bad, out) == lib.MP_EINVALID_ARGUMENT
    assert message_for(-2) == __import__("os").strerror(2)
    assert message_for(999) == "unknown error code 999"


def test_recovery_flag_names_come_from_c() -> None:
    names = {}
    for bit in range(13):
        name = c_text(lib.mp_recovery_flag_name, 1 << bit)
        assert name
        names[1 << bit] = name
    assert names[lib.MP_REC_META_A_DAMAGED] == "meta_a_damaged"
    assert names[lib.MP_REC_META_CHECKSUM] == "meta_checksum_mismatch"
    assert names[lib.MP_REC_SALVAGE_DROPPED] == "salvage_dropped"
    assert len(set(names.values())) == 13
    assert c_text(lib.mp_recovery_flag_name, 0) is None
    assert c_text(lib.mp_recovery_flag_name, 3) is None
    assert c_text(lib.mp_recovery_flag_name, 1 << 20) is None
    flags = lib.MP_REC_SELECTOR_STALE | lib.MP_REC_PAGE0_REWRITTEN
    assert recovery_flag_names(flags) == ["page0_rewritten", "selector_stale"]


def test_meta_problem_texts() -> None:
    assert c_text(lib.mp_meta_problem_text, lib.MP_META_BAD_CRC) == "its CRC does not match"
    assert c_text(lib.mp_meta_problem_text, 99) is None


def test_internal_error_is_exported() -> None:
    assert issubclass(mappedpages.InternalError, mappedpages.MappedPageError)
    with pytest.raises(mappedpages.InternalError, match="invariant"):
        raise error_for(lib.MP_EINTERNAL)


def test_one_raise_helper_words_c_codes_with_the_values_involved(tmp_path: Path) -> None:
    """Raises of a C code's class carry the core's message and the values involved."""
    path = str(tmp_path / "f.mpp")
    with mappedpages.Pager.create(path, page_size=4096) as p:
        with pytest.raises(mappedpages.OutOfBounds) as oob:
            p.free(2**64)
        assert str(oob.value) == f"free page {2**64}: " + message_for(lib.MP_EOUT_OF_BOUNDS)
        with pytest.raises(mappedpages.FileFull) as full:
            p.alloc_bulk(2**62)
        text = str(full.value)
        assert message_for(lib.MP_EFILE_FULL) in text and f"alloc_bulk({2**62})" in text
        assert f"{p.max_pages} in all" in text
        with pytest.raises(mappedpages.OutOfBounds) as view:
            p.page(p.page_count + 5)
        assert message_for(lib.MP_EOUT_OF_BOUNDS) in str(view.value)
        assert f"page_count {p.page_count}" in str(view.value)
    with pytest.raises(mappedpages.InvalidPageSize) as size:
        mappedpages.Pager.open(path, page_size=8192)
    assert message_for(lib.MP_EINVALID_PAGE_SIZE) in str(size.value)
    assert "page size is 4096, not page_size=8192" in str(size.value)


def test_error_for_detail_and_subclass() -> None:
    exc = error_for(lib.MP_ERESERVED_PAGE, "page 1", detail="why", cls=ReservedSubPageId)
    assert type(exc) is ReservedSubPageId
    assert str(exc) == "page 1: " + message_for(lib.MP_ERESERVED_PAGE) + " (why)"
    # A class that is no subclass of the code's class is not taken.
    assert (
        type(error_for(lib.MP_EOUT_OF_BOUNDS, cls=mappedpages.FileFull)) is mappedpages.OutOfBounds
    )


def test_no_module_words_its_own_message_for_a_c_error_class() -> None:
    """Library errors that stand for a C code are raised through _errors.raise_for/error_for."""
    import re

    pkg = Path(mappedpages.__file__).parent
    classes = "|".join(
        sorted(
            c.__name__ for c in set(ERRORS.values()) if issubclass(c, mappedpages.MappedPageError)
        )
    )
    pattern = re.compile(rf"\b(?:raise|return)\s+(?:{classes}|ReservedSubPageId)\(")
    offenders = [
        f"{f.name}:{n}"
        for f in sorted(pkg.glob("*.py"))
        if f.name != "_errors.py"
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    # The fork child's refusal is Python's own state, not a C code (see _base._usable).
    assert offenders == ["_base.py:" + str(_usable_line(pkg / "_base.py"))], offenders


def _usable_line(path: Path) -> int:
    lines = path.read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if "raise Unavailable(" in line)
