"""A model of regular and protected pages together, checked by hypothesis.

The model is the set of allocated regular page ids and, for each protected
id in use, the bytes its page must hold. Rules allocate and free both kinds
(one at a time and in bulk), commit or discard protected writes, and reopen
the file. After every step the pager must agree with the model, and no
physical page may be both a regular page and one behind a protected page.
Regular pages carry a tag (their id and a counter) so that any aliasing with a
protected page's backing copies would show as changed bytes.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support.format_v02 import read_image
from support.pagers import force_close

from mappedpages import DoubleFree, OutOfBounds, Pager, ReservedPage, WriterOpen

PS = 1024  # 33 entries per directory block, so a few dozen ids span blocks


def tag(page_id: int, n: int) -> bytes:
    return page_id.to_bytes(8, "little") + n.to_bytes(8, "little")


class PagerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="protected-model-"))
        self.path = self.dir / "model.mpp"
        self.pager: Pager | None = None
        self.regular: dict[int, bytes] = {}  # page id -> its tag
        self.protected: dict[int, bytes] = {}  # protected id -> expected content
        self.counter = 0

    @initialize()
    def create(self) -> None:
        self.pager = Pager.create(self.path, page_size=PS)

    def teardown(self) -> None:
        if self.pager is not None:
            force_close(self.pager)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ helpers

    def _tag_new(self, page_id: int) -> None:
        self.counter += 1
        t = tag(page_id, self.counter)
        v = self.pager.page(page_id)
        v[: len(t)] = t
        v.release()
        self.regular[page_id] = t

    def _lowest_free_pid(self) -> int:
        pid = 0
        while pid in self.protected:
            pid += 1
        return pid

    # ------------------------------------------------------------ regular pages

    @rule()
    def alloc(self) -> None:
        page_id = self.pager.alloc()
        assert page_id not in self.regular
        self._tag_new(page_id)

    @rule(n=st.integers(0, 6))
    def alloc_bulk(self, n: int) -> None:
        ids = self.pager.alloc_bulk(n)
        assert len(ids) == n and len(set(ids)) == n
        for page_id in ids:
            assert page_id not in self.regular
            self._tag_new(page_id)

    @precondition(lambda self: self.regular)
    @rule(data=st.data())
    def free(self, data) -> None:
        page_id = data.draw(st.sampled_from(sorted(self.regular)))
        self.pager.free(page_id)
        del self.regular[page_id]
        with pytest.raises(DoubleFree):
            self.pager.free(page_id)

    @precondition(lambda self: self.regular)
    @rule(data=st.data())
    def free_bulk(self, data) -> None:
        ids = data.draw(st.sets(st.sampled_from(sorted(self.regular)), min_size=1, max_size=5))
        self.pager.free_bulk(sorted(ids))
        for page_id in ids:
            del self.regular[page_id]

    # ------------------------------------------------------------ protected pages

    @rule()
    def alloc_protected(self) -> None:
        expect = self._lowest_free_pid()
        pid = self.pager.alloc_protected()
        assert pid == expect
        self.protected[pid] = bytes(PS)

    @rule(n=st.integers(0, 40))
    def alloc_protected_bulk(self, n: int) -> None:
        ids = self.pager.alloc_protected_bulk(n)
        assert len(ids) == n and len(set(ids)) == n
        for pid in ids:
            assert pid not in self.protected
            self.protected[pid] = bytes(PS)

    @precondition(lambda self: self.protected)
    @rule(data=st.data())
    def free_protected(self, data) -> None:
        pid = data.draw(st.sampled_from(sorted(self.protected)))
        self.pager.free_protected(pid)
        del self.protected[pid]
        with pytest.raises((DoubleFree, OutOfBounds)):
            self.pager.free_protected(pid)
        with pytest.raises(OutOfBounds):
            self.pager.protected_page(pid)

    @precondition(lambda self: self.protected)
    @rule(data=st.data())
    def free_protected_bulk(self, data) -> None:
        ids = data.draw(st.sets(st.sampled_from(sorted(self.protected)), min_size=1, max_size=8))
        self.pager.free_protected_bulk(sorted(ids))
        for pid in ids:
            del self.protected[pid]

    @precondition(lambda self: self.protected)
    @rule(data=st.data())
    def free_protected_bulk_refused(self, data) -> None:
        """A bulk free with a repeated id changes nothing."""
        pid = data.draw(st.sampled_from(sorted(self.protected)))
        with pytest.raises(DoubleFree):
            self.pager.free_protected_bulk([pid, pid])

    @precondition(lambda self: self.protected)
    @rule(
        data=st.data(),
        offset=st.integers(0, PS - 1),
        payload=st.binary(min_size=1, max_size=64),
        use_with=st.booleans(),
    )
    def write_commit(self, data, offset: int, payload: bytes, use_with: bool) -> None:
        pid = data.draw(st.sampled_from(sorted(self.protected)))
        payload = payload[: PS - offset]
        w = self.pager.write_protected(pid)
        assert bytes(w.page) == self.protected[pid], "the staged copy is the active content"
        with pytest.raises(WriterOpen):
            self.pager.write_protected(pid)
        if use_with:
            with w:
                w.page[offset : offset + len(payload)] = payload
        else:
            w.page[offset : offset + len(payload)] = payload
            w.commit()
        old = self.protected[pid]
        self.protected[pid] = old[:offset] + payload + old[offset + len(payload) :]

    @precondition(lambda self: self.protected)
    @rule(
        data=st.data(),
        offset=st.integers(0, PS - 1),
        payload=st.binary(min_size=1, max_size=64),
        raise_in_with=st.booleans(),
    )
    def write_discard(self, data, offset: int, payload: bytes, raise_in_with: bool) -> None:
        pid = data.draw(st.sampled_from(sorted(self.protected)))
        payload = payload[: PS - offset]
        w = self.pager.write_protected(pid)
        if raise_in_with:
            with pytest.raises(RuntimeError), w:
                w.page[offset : offset + len(payload)] = payload
                raise RuntimeError("abandon")
        else:
            w.page[offset : offset + len(payload)] = payload
            w.discard()
        assert w.spent

    @precondition(lambda self: self.protected)
    @rule(data=st.data())
    def free_with_writer_open(self, data) -> None:
        pid = data.draw(st.sampled_from(sorted(self.protected)))
        w = self.pager.write_protected(pid)
        try:
            with pytest.raises(WriterOpen):
                self.pager.free_protected(pid)
        finally:
            w.discard()

    @precondition(lambda self: self.protected)
    @rule(data=st.data())
    def backing_pages_refused(self, data) -> None:
        pid = data.draw(st.sampled_from(sorted(self.protected)))
        for page_id in self.pager._backing(pid):
            with pytest.raises(ReservedPage):
                self.pager.free(page_id)
            with pytest.raises(ReservedPage):
                self.pager.page(page_id)

    # ------------------------------------------------------------ reopen

    @rule()
    def reopen(self) -> None:
        self.pager.close()
        self.pager = None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a clean file opens without repairs
            self.pager = Pager.open(self.path)

    # ------------------------------------------------------------ invariants

    @invariant()
    def regular_pages_match(self) -> None:
        if self.pager is None:
            return
        assert list(self.pager.allocated_pages()) == sorted(self.regular)
        for page_id, t in self.regular.items():
            v = self.pager.page(page_id)
            got = bytes(v[: len(t)])
            v.release()
            assert got == t, f"regular page {page_id} was overwritten"

    @invariant()
    def protected_pages_match(self) -> None:
        if self.pager is None:
            return
        assert list(self.pager.allocated_protected_pages()) == sorted(self.protected)
        for pid, content in self.protected.items():
            v = self.pager.protected_page(pid)
            got = bytes(v)
            v.release()
            assert got == content, f"protected page {pid} differs from the model"
            assert self.pager.verify_protected(pid)

    @invariant()
    def iterators_disjoint(self) -> None:
        if self.pager is None:
            return
        p = self.pager
        regular = set(p.allocated_pages())
        backing = set()
        for pid in p.allocated_protected_pages():
            a, b = p._backing(pid)
            assert a != b
            backing.update((a, b))
        assert len(backing) == 2 * len(self.protected)
        assert not regular & backing, "a page is regular and behind a protected page"
        img = read_image(self.path)  # the on-disk directory, read independently
        blocks = img.dir_count
        assert backing <= img.system_pages
        assert not regular & img.system_pages
        assert p.page_count - 3 - p.free_page_count == (
            len(regular) + 2 * len(self.protected) + 2 * blocks
        )


PagerModel.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPagerModel = PagerModel.TestCase
