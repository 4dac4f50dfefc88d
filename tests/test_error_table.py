"""The one error table lives in C (csrc/errors.c); Python takes its messages from it."""

from __future__ import annotations

import pytest

import mappedpages
from mappedpages._core import ffi, lib
from mappedpages._errors import ERRORS, error_for, message_for, recovery_flag_names


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
