"""Stateful test: the pager against a plain Python model of its allocation."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from support.format_v02 import check_valid_v02, max_pages
from support.pagers import force_close

import mappedpages
from mappedpages import Pager

PS = 1024
CAP = max_pages(PS)


class PagerModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mp-model-")
        self.path = Path(self.dir) / "model.mpp"
        self.pager = Pager.create(self.path, page_size=PS)
        self.live: set[int] = set()
        self.page_count = 4
        # first 8 bytes of every page, as the model knows them (growth gives zeros)
        self.content: dict[int, bytes] = {}
        self.tag = 0

    def teardown(self):
        try:
            force_close(self.pager)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------- model

    def _model_alloc(self, n: int) -> tuple[list[int], int]:
        live = set(self.live)
        count = self.page_count
        out = []
        for _ in range(n):
            free = [i for i in range(3, count) if i not in live]
            if free:
                pid = free[0]
            else:
                assert count < CAP
                pid = count
                count = min(count * 2, CAP)
            live.add(pid)
            out.append(pid)
        return out, count

    def _snapshot(self):
        return (
            self.pager.page_count,
            self.pager.free_page_count,
            list(self.pager.allocated_pages()),
        )

    def _free_ids(self):
        return [i for i in range(3, self.page_count) if i not in self.live]

    # ------------------------------------------------------------- rules

    @rule(zero=st.booleans())
    def alloc(self, zero):
        expected, count = self._model_alloc(1)
        got = self.pager.alloc(zero=zero)
        assert got == expected[0]
        self.live.add(got)
        self.page_count = count
        if zero:
            self.content[got] = bytes(8)

    @rule(n=st.integers(min_value=0, max_value=40), zero=st.booleans())
    def alloc_bulk(self, n, zero):
        expected, count = self._model_alloc(n)
        got = self.pager.alloc_bulk(n, zero=zero)
        assert got == expected
        self.live.update(got)
        self.page_count = count
        if zero:
            for pid in got:
                self.content[pid] = bytes(8)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        pid = data.draw(st.sampled_from(sorted(self.live)))
        self.pager.free(pid)
        self.live.discard(pid)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), kind=st.sampled_from(["list", "tuple", "set", "generator"]))
    def free_bulk(self, data, kind):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.live)), unique=True, max_size=20))
        arg = {"list": list, "tuple": tuple, "set": set, "generator": lambda x: (i for i in x)}[
            kind
        ](ids)
        self.pager.free_bulk(arg)
        self.live.difference_update(ids)

    @rule(data=st.data())
    def free_invalid(self, data):
        choices = [
            ("reserved", st.integers(0, 2)),
            ("oob", st.integers(self.page_count, 2**70)),
            ("negative", st.integers(-(2**70), -1)),
        ]
        if self._free_ids():
            choices.append(("free", st.sampled_from(self._free_ids())))
        kind, strat = data.draw(st.sampled_from(choices))
        pid = data.draw(strat)
        exc = {
            "reserved": mappedpages.ReservedPage,
            "oob": mappedpages.OutOfBounds,
            "negative": mappedpages.OutOfBounds,
            "free": mappedpages.DoubleFree,
        }[kind]
        before = self._snapshot()
        try:
            self.pager.free(pid)
        except exc:
            pass
        else:
            raise AssertionError(f"free({pid}) ({kind}) did not raise {exc.__name__}")
        assert self._snapshot() == before

    @rule(data=st.data())
    def free_bulk_invalid(self, data):
        good = (
            data.draw(st.lists(st.sampled_from(sorted(self.live)), unique=True, max_size=8))
            if self.live
            else []
        )
        kinds = ["reserved", "oob", "negative", "wrong_type"]
        if self._free_ids():
            kinds.append("free")
        if good:
            kinds.append("duplicate")
        kind = data.draw(st.sampled_from(kinds))
        if kind == "reserved":
            bad = data.draw(st.integers(0, 2))
            exc = mappedpages.ReservedPage
        elif kind == "oob":
            bad = data.draw(st.integers(self.page_count, 2**70))
            exc = mappedpages.OutOfBounds
        elif kind == "negative":
            bad = data.draw(st.integers(-(2**70), -1))
            exc = mappedpages.OutOfBounds
        elif kind == "wrong_type":
            bad = data.draw(st.sampled_from(["3", 3.0, None]))
            exc = TypeError
        elif kind == "free":
            bad = data.draw(st.sampled_from(self._free_ids()))
            exc = mappedpages.DoubleFree
        else:
            bad = data.draw(st.sampled_from(good))
            exc = mappedpages.DoubleFree
        pos = data.draw(st.integers(0, len(good)))
        ids = good[:pos] + [bad] + good[pos:]
        before = self._snapshot()
        try:
            self.pager.free_bulk(ids)
        except exc:
            pass
        else:
            raise AssertionError(f"free_bulk({ids}) ({kind}) did not raise {exc.__name__}")
        assert self._snapshot() == before

    @rule(data=st.data())
    def write(self, data):
        pid = data.draw(st.integers(3, self.page_count - 1))
        self.tag += 1
        payload = self.tag.to_bytes(8, "little")
        v = self.pager.page(pid)
        v[:8] = payload
        v.release()
        self.content[pid] = payload

    @rule()
    def check_contents(self):
        for pid in range(3, self.page_count):
            v = self.pager.page(pid)
            got = bytes(v[:8])
            v.release()
            assert got == self.content.get(pid, bytes(8)), pid

    @rule(sync=st.booleans())
    def reopen(self, sync):
        if sync:
            self.pager.sync()
        self.pager.close()
        check_valid_v02(self.path, allocated=sorted(self.live))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            self.pager = Pager.open(self.path, page_size=PS)
        self.check_contents()

    # ------------------------------------------------------------- invariants

    @invariant()
    def counts_match(self):
        assert self.pager.page_count == self.page_count
        assert self.pager.free_page_count == self.page_count - 3 - len(self.live)
        assert list(self.pager.allocated_pages()) == sorted(self.live)


PagerModel.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPagerModel = PagerModel.TestCase
