"""benchmarks/bench_engine.py runs (with tiny settings), counts the flushes the
README's table gives, and judges the targets; py-lmdb is optional."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location(
        "bench_engine", ROOT / "benchmarks" / "bench_engine.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_engine_runs_and_counts_flushes(tmp_path, monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench, "PRELOAD", 1000)
    rows, floors = bench.run(tmp_path, bench.Settings(single=4, batched=8, reads=50))
    by = {r.name: r for r in rows}
    expect = {
        "B+tree, layout 0.3, 'fast'": 1.0,
        "B+tree, layout 0.3, 'compat'": 1.0,
        "B+tree, layout 0.3, 'none'": 0.0,
        "B+tree, layout 0.2, 'fast'": 1.0,
        "B+tree, layout 0.2, 'compat'": 2.0,
        "B+tree, layout 0.2, 'none'": 0.0,
    }
    for name, flushes in expect.items():
        assert by[name].flushes_single == flushes, name
        # (Growths of the file, one flush each, are not counted.)
        assert by[name].flushes_batched == flushes, name
        assert by[name].single > 0 and by[name].batched > 0 and by[name].reads > 0
    assert not by["B+tree, layout 0.2, 'none'"].durable
    assert not by["sqlite3 WAL, synchronous=NORMAL"].durable
    assert set(floors) == {"one fdatasync", "two fdatasyncs"}
    text = bench.render(rows, floors, tmp_path)
    assert "(not durable)" in text and "floor: one fdatasync per txn" in text
    assert "within 1.3x of one fdatasync" in text


def test_lmdb_is_a_bench_extra_only():
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    assert 'bench = ["lmdb"]' in lines
    test = next(line for line in lines if line.startswith("test = "))
    assert "lmdb" not in test
