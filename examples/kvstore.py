"""A small persistent key-value store built on mappedpages, using every part of it.

    python examples/kvstore.py demo [FILE]

Layout, all in one pager file:

* A **header**, the file's first protected page: a tag, the number of
  buckets, the two sub-page sizes, and the protected page id of each bucket.
* **Buckets**, one protected page each (overflowing into a chain of further
  protected pages): a hash table from key to a value reference. A bucket is
  rewritten whole and committed atomically, so after a crash it holds either
  its old entries or its new ones.
* **Values**: empty values take no room; values up to ``page_size // 64``
  bytes live in a small sub-page, up to ``page_size // 8`` bytes in a medium
  sub-page (two :class:`SubPageAllocator` instances); larger ones in a chain
  of regular pages, each holding the next page's id.

A put writes the new value into free storage, makes it durable
(``Pager.sync``), then commits the bucket that refers to it, then frees the
old value's storage. A crash at any point leaves every committed key with its
value; what a crash can leave behind is storage that no bucket refers to,
which ``KVStore.open`` gives back (the sub-page allocators' maps are not
stored, as in the library: open rebuilds them from the buckets with
:meth:`SubPageAllocator.restore`). ``batch()`` groups many puts and deletes
into one pager transaction: all of them, or none, survive a crash.

Keys are at most 1024 bytes (less with 1 KiB pages); values at most 4 GiB - 1
and what the file can hold. One store per file; one writer at a time (the
pager's lock), any number of threads in that writer.
"""

from __future__ import annotations

import contextlib
import struct
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mappedpages import (
    MappedPageError,
    PageId,
    Pager,
    ProtectedPageId,
    SubPageAllocator,
    SubPageId,
)

MAGIC = b"MPKVS001"
_HEADER = struct.Struct("<8sIII4x")  # tag, buckets, small sub-page size, medium size
_BUCKET = struct.Struct("<QHH4x")  # next bucket page (or NONE), entries, bytes of entries
_ENTRY = struct.Struct("<HBIQ")  # key length, kind, value length, location
_CHAIN = struct.Struct("<QI4x")  # next value page (or NONE), bytes used in this page
NONE = (1 << 64) - 1

EMPTY, SMALL, MEDIUM, PAGES = range(4)
MAX_VALUE = (1 << 32) - 1

_Ref = tuple[int, int, int]  # (kind, length, location)


class KVStoreError(Exception):
    """The file is not a key-value store, or its contents do not hold together."""


def _key(key: object) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"keys are bytes, not {type(key).__name__}")


def _value(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"values are bytes, not {type(value).__name__}")


@dataclass
class _BucketPage:
    """One protected page of a bucket's chain, as held in memory."""

    pid: int  # -1 until allocated
    entries: dict[bytes, _Ref] = field(default_factory=dict)
    next: int = NONE
    used: int = 0  # bytes of entries

    def copy(self) -> _BucketPage:
        return _BucketPage(self.pid, dict(self.entries), self.next, self.used)

    def encode(self, page_size: int) -> bytes:
        out = bytearray(page_size)
        _BUCKET.pack_into(out, 0, self.next, len(self.entries), self.used)
        off = _BUCKET.size
        for key, (kind, length, loc) in self.entries.items():
            _ENTRY.pack_into(out, off, len(key), kind, length, loc)
            off += _ENTRY.size
            out[off : off + len(key)] = key
            off += len(key)
        return bytes(out)

    @classmethod
    def decode(cls, pid: int, data: bytes) -> _BucketPage:
        nxt, count, used = _BUCKET.unpack_from(data, 0)
        page = cls(pid, {}, nxt, used)
        off = _BUCKET.size
        end = len(data)
        for _ in range(count):
            if off + _ENTRY.size > end:
                raise KVStoreError(f"bucket page {pid}: entries run past the page")
            klen, kind, length, loc = _ENTRY.unpack_from(data, off)
            off += _ENTRY.size
            if off + klen > end or kind > PAGES:
                raise KVStoreError(f"bucket page {pid}: a damaged entry")
            page.entries[data[off : off + klen]] = (kind, length, loc)
            off += klen
        if off - _BUCKET.size != used:
            raise KVStoreError(f"bucket page {pid}: its byte count disagrees with its entries")
        return page


class KVStore(MutableMapping[bytes, bytes]):
    """A persistent mapping of bytes to bytes in one mappedpages file.

    Use :meth:`create` or :meth:`open`; a store is a context manager. Every
    put and delete is durable when it returns; ``with store.batch():`` makes
    a group of them one atomic commit.
    """

    def __init__(
        self,
        pager: Pager,
        header: int,
        buckets: list[int],
        small: SubPageAllocator,
        medium: SubPageAllocator,
        chains: list[list[_BucketPage]],
    ) -> None:
        self._pager = pager
        self._header = header
        self._bucket_pids = buckets
        self._small = small
        self._medium = medium
        self._chains = chains
        self._page_size = pager.page_size
        self._capacity = pager.page_size - _BUCKET.size
        self._max_key = min(1024, self._capacity - _ENTRY.size)
        self._pending: dict[bytes, bytes | None] | None = None
        self._count = sum(len(p.entries) for chain in chains for p in chain)

    # ------------------------------------------------------------ opening

    @classmethod
    def create(
        cls, path: Any, *, buckets: int = 128, page_size: int = 4096, durability: str = "compat"
    ) -> KVStore:
        """Create a store in a new file (``FileExistsError`` if it exists)."""
        if buckets < 1 or buckets > (page_size - _HEADER.size) // 8:
            raise ValueError(f"buckets must be 1 to {(page_size - _HEADER.size) // 8}")
        pager = Pager.create(path, page_size=page_size, durability=durability)
        try:
            small_size, medium_size = page_size // 64, page_size // 8
            with pager.transaction():
                header = pager.alloc_protected()
                pids = pager.alloc_protected_bulk(buckets)
                head = bytearray(page_size)
                _HEADER.pack_into(head, 0, MAGIC, buckets, small_size, medium_size)
                struct.pack_into(f"<{buckets}Q", head, _HEADER.size, *pids)
                with pager.write_protected(header) as w:
                    w.page[:] = head
                empty = _BucketPage(-1).encode(page_size)
                for pid in pids:
                    with pager.write_protected(pid) as w:
                        w.page[:] = empty
            chains = [[_BucketPage(int(pid))] for pid in pids]
            small = SubPageAllocator(pager, small_size)
            medium = SubPageAllocator(pager, medium_size)
        except BaseException:
            pager.close()
            raise
        return cls(pager, int(header), [int(p) for p in pids], small, medium, chains)

    @classmethod
    def open(cls, path: Any, *, durability: str = "compat") -> KVStore:
        """Open a store, rebuild the sub-page maps and give back unreferenced storage."""
        pager = Pager.open(path, durability=durability)
        try:
            return cls._load(pager)
        except BaseException:
            pager.close()
            raise

    @classmethod
    def _load(cls, pager: Pager) -> KVStore:
        ps = pager.page_size
        protected = sorted(int(p) for p in pager.allocated_protected_pages())
        if not protected:
            raise KVStoreError(f"{pager.path}: not a key-value store (no header page)")
        header = protected[0]
        head = bytes(pager.protected_page(ProtectedPageId(header)))
        tag, nbuckets, small_size, medium_size = _HEADER.unpack_from(head, 0)
        if tag != MAGIC or not 1 <= nbuckets <= (ps - _HEADER.size) // 8:
            raise KVStoreError(f"{pager.path}: not a key-value store (bad header)")
        buckets = list(struct.unpack_from(f"<{nbuckets}Q", head, _HEADER.size))
        live = set(protected)
        reachable = {header}
        chains: list[list[_BucketPage]] = []
        for pid in buckets:
            chain = []
            while pid != NONE:
                if pid not in live or pid in reachable:
                    raise KVStoreError(f"{pager.path}: bucket chain names page {pid} wrongly")
                if not pager.verify_protected(ProtectedPageId(pid)):
                    raise KVStoreError(f"{pager.path}: bucket page {pid} fails its CRC")
                reachable.add(pid)
                page = _BucketPage.decode(pid, bytes(pager.protected_page(ProtectedPageId(pid))))
                chain.append(page)
                pid = page.next
            chains.append(chain)
        # Storage that no bucket refers to: left by a crash between a value's
        # write and its bucket's commit, or between a commit and the free.
        regular = {int(p) for p in pager.allocated_pages()}
        used: set[int] = set()
        small_ids: list[int] = []
        medium_ids: list[int] = []
        small_slots, medium_slots = ps // small_size, ps // medium_size
        for chain in chains:
            for page in chain:
                for kind, length, loc in page.entries.values():
                    if kind == SMALL:
                        small_ids.append(loc)
                        used.add(loc // small_slots)
                    elif kind == MEDIUM:
                        medium_ids.append(loc)
                        used.add(loc // medium_slots)
                    elif kind == PAGES:
                        used.update(cls._chain_pages(pager, loc, length, regular))
        if not used <= regular:
            raise KVStoreError(f"{pager.path}: a value refers to a page that is not allocated")
        orphans = sorted(regular - used)
        if orphans:
            pager.free_bulk([PageId(p) for p in orphans])
        lost = sorted(live - reachable)
        if lost:
            pager.free_protected_bulk([ProtectedPageId(p) for p in lost])
        small = SubPageAllocator.restore(pager, small_size, small_ids)
        medium = SubPageAllocator.restore(pager, medium_size, medium_ids)
        return cls(pager, header, buckets, small, medium, chains)

    @staticmethod
    def _chain_pages(pager: Pager, first: int, length: int, regular: set[int]) -> list[int]:
        cap = pager.page_size - _CHAIN.size
        need = -(-length // cap)
        pages = []
        pid = first
        for _ in range(need):
            if pid not in regular or pid in pages:
                raise KVStoreError(f"{pager.path}: a value's page chain is broken at {pid}")
            pages.append(pid)
            pid = _CHAIN.unpack_from(bytes(pager.page(PageId(pid))[: _CHAIN.size]))[0]
        return pages

    # ------------------------------------------------------------ values

    def _store(self, value: bytes) -> _Ref:
        n = len(value)
        if n == 0:
            return (EMPTY, 0, 0)
        if n > MAX_VALUE:
            raise ValueError(f"a value is at most {MAX_VALUE} bytes")
        for kind, alloc in ((SMALL, self._small), (MEDIUM, self._medium)):
            if n <= alloc.sub_size:
                sid = int(alloc.alloc())
                alloc.page(SubPageId(sid))[:n] = value
                return (kind, n, sid)
        cap = self._page_size - _CHAIN.size
        ids = [int(p) for p in self._pager.alloc_bulk(-(-n // cap))]
        for i, pid in enumerate(ids):
            chunk = value[i * cap : (i + 1) * cap]
            view = self._pager.page(PageId(pid))
            _CHAIN.pack_into(view, 0, ids[i + 1] if i + 1 < len(ids) else NONE, len(chunk))
            view[_CHAIN.size : _CHAIN.size + len(chunk)] = chunk
            view.release()
        return (PAGES, n, ids[0])

    def _read(self, ref: _Ref) -> bytes:
        kind, n, loc = ref
        if kind == EMPTY:
            return b""
        if kind in (SMALL, MEDIUM):
            alloc = self._small if kind == SMALL else self._medium
            return bytes(alloc.page(SubPageId(loc))[:n])
        parts = []
        pid = loc
        while n > 0:
            view = self._pager.page(PageId(pid))
            nxt, used = _CHAIN.unpack_from(view, 0)
            parts.append(bytes(view[_CHAIN.size : _CHAIN.size + used]))
            view.release()
            n -= used
            pid = nxt
        return b"".join(parts)

    def _release(self, refs: Iterable[_Ref]) -> None:
        """Give back the storage of values no committed bucket refers to any more."""
        small: list[int] = []
        medium: list[int] = []
        pages: list[PageId] = []
        for kind, n, loc in refs:
            if kind == SMALL:
                small.append(loc)
            elif kind == MEDIUM:
                medium.append(loc)
            elif kind == PAGES:
                cap = self._page_size - _CHAIN.size
                pid = loc
                for _ in range(-(-n // cap)):
                    pages.append(PageId(pid))
                    pid = _CHAIN.unpack_from(self._pager.page(PageId(pid)), 0)[0]
        if small:
            self._small.free_bulk(small)
        if medium:
            self._medium.free_bulk(medium)
        if pages:
            self._pager.free_bulk(pages)

    # ------------------------------------------------------------ commits

    def _bucket(self, key: bytes) -> int:
        return zlib.crc32(key) % len(self._chains)

    def _apply(self, ops: dict[bytes, bytes | None]) -> None:
        """Apply puts (bytes) and deletes (None) as one atomic, durable commit."""
        stored: list[_Ref] = []
        try:
            new_refs = {}
            for key, value in ops.items():
                if value is not None:
                    ref = self._store(value)
                    stored.append(ref)
                    new_refs[key] = ref
            if any(ref[0] != EMPTY for ref in stored):
                self._pager.sync()  # the values, before any bucket names them
            plan: dict[int, list[_BucketPage]] = {}
            dirty: dict[int, _BucketPage] = {}  # by id(): the pages this commit writes
            old: list[_Ref] = []
            delta = 0
            for key, value in ops.items():
                b = self._bucket(key)
                if b not in plan:
                    plan[b] = list(self._chains[b])
                chain = plan[b]
                at = next((i for i, p in enumerate(chain) if key in p.entries), None)
                if value is None and at is None:
                    continue
                if at is None:
                    size = _ENTRY.size + len(key)
                    at = next(
                        (i for i, p in enumerate(chain) if p.used + size <= self._capacity),
                        None,
                    )
                    if at is None:
                        chain.append(_BucketPage(-1))
                        at = len(chain) - 1
                        dirty[id(chain[at])] = chain[at]
                        if len(chain) > 1:
                            self._touch(chain, at - 1, dirty)
                    page = self._touch(chain, at, dirty)
                    page.entries[key] = new_refs[key]
                    page.used += size
                    delta += 1
                    continue
                page = self._touch(chain, at, dirty)
                old.append(page.entries[key])
                if value is None:
                    del page.entries[key]
                    page.used -= _ENTRY.size + len(key)
                    delta -= 1
                else:
                    page.entries[key] = new_refs[key]
            self._commit(plan, dirty)
        except BaseException:
            with contextlib.suppress(Exception):
                self._release(stored)
            raise
        for b, chain in plan.items():
            self._chains[b] = chain
        self._count += delta
        self._release(old)

    @staticmethod
    def _touch(chain: list[_BucketPage], i: int, dirty: dict[int, _BucketPage]) -> _BucketPage:
        """The planned copy of chain[i], made once per commit."""
        page = chain[i]
        if id(page) not in dirty:
            page = page.copy()
            chain[i] = page
            dirty[id(page)] = page
        return page

    def _commit(self, plan: dict[int, list[_BucketPage]], dirty: dict[int, _BucketPage]) -> None:
        if not dirty:
            return
        pager = self._pager
        with pager.transaction():
            for chain in plan.values():
                for i, page in enumerate(chain):
                    if page.pid < 0:
                        page.pid = int(pager.alloc_protected())
                        chain[i - 1].next = page.pid
            for page in dirty.values():
                with pager.write_protected(ProtectedPageId(page.pid)) as w:
                    w.page[:] = page.encode(self._page_size)

    # ------------------------------------------------------------ mapping API

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        """The value of ``key``, or ``default``."""
        k = _key(key)
        with self._pager.lock():
            if self._pending is not None and k in self._pending:
                v = self._pending[k]
                return default if v is None else v
            for page in self._chains[self._bucket(k)]:
                ref = page.entries.get(k)
                if ref is not None:
                    return self._read(ref)
            return default

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``; durable when it returns (or at the end of a batch)."""
        k, v = _key(key), _value(value)
        if not k:
            raise ValueError("keys must not be empty")
        if len(k) > self._max_key:
            raise ValueError(f"a key is at most {self._max_key} bytes")
        if len(v) > MAX_VALUE:
            raise ValueError(f"a value is at most {MAX_VALUE} bytes")
        with self._pager.lock():
            if self._pending is not None:
                self._pending[k] = v
            else:
                self._apply({k: v})

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; return whether it was there."""
        k = _key(key)
        with self._pager.lock():
            if k not in self:
                return False
            if self._pending is not None:
                self._pending[k] = None
            else:
                self._apply({k: None})
            return True

    def __delitem__(self, key: bytes) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        try:
            k = _key(key)
        except TypeError:
            return False
        with self._pager.lock():
            if self._pending is not None and k in self._pending:
                return self._pending[k] is not None
            return any(k in p.entries for p in self._chains[self._bucket(k)])

    def __iter__(self) -> Iterator[bytes]:
        with self._pager.lock():
            keys = [k for chain in self._chains for p in chain for k in p.entries]
            if self._pending is not None:
                have = set(keys)
                keys = [k for k in keys if self._pending.get(k, b"") is not None]
                keys += [k for k, v in self._pending.items() if v is not None and k not in have]
        return iter(keys)

    def __len__(self) -> int:
        with self._pager.lock():
            if self._pending is None:
                return self._count
        return sum(1 for _ in self)

    @contextlib.contextmanager
    def batch(self) -> Iterator[KVStore]:
        """Group puts and deletes into one atomic commit at the end of the block.

        Reads inside the block see the batch's changes. An exception in the
        block drops them all. Nested blocks join the outermost one. The store
        is held (other threads wait) for the whole block.
        """
        with self._pager.lock():
            if self._pending is not None:
                yield self
                return
            self._pending = {}
            try:
                yield self
                ops = self._pending
            finally:
                self._pending = None
            if ops:
                self._apply(ops)

    # ------------------------------------------------------------ lifetime

    @property
    def pager(self) -> Pager:
        """The pager underneath (for inspection; writing through it can break the store)."""
        return self._pager

    def stats(self) -> dict[str, int]:
        """Keys, buckets, bucket pages, and the pages in use by kind."""
        with self._pager.lock():
            return {
                "keys": len(self),
                "buckets": len(self._chains),
                "bucket_pages": sum(len(c) for c in self._chains),
                "small_values": self._small.live_count,
                "medium_values": self._medium.live_count,
                "page_count": self._pager.page_count,
                "free_pages": self._pager.free_page_count,
            }

    def close(self) -> None:
        """Close the store and its file; idempotent."""
        if self._pager.closed:
            return
        for alloc in (self._small, self._medium):
            if not alloc.detached:
                alloc.detach()
        self._pager.close()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def demo(path: Path | None = None) -> int:
    """Create a store, fill it, reopen it and read everything back."""
    with tempfile.TemporaryDirectory(prefix="kvstore-demo-") as tmp:
        path = path or Path(tmp) / "demo.kv"
        values = {f"key-{i}".encode(): bytes([i % 251]) * (i * 37 % 9000) for i in range(300)}
        with KVStore.create(path, buckets=16) as store:
            with store.batch():
                for k, v in values.items():
                    store[k] = v
            store[b"single"] = b"one durable commit"
            del store[b"key-7"]
            print("after writing:", store.stats())
        del values[b"key-7"]
        values[b"single"] = b"one durable commit"
        with KVStore.open(path) as store:
            ok = dict(store.items()) == values
            print("reopened:", store.stats())
        print("verified: every key holds its value" if ok else "VERIFY FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "demo":
        try:
            sys.exit(demo(Path(sys.argv[2]) if len(sys.argv) > 2 else None))
        except (OSError, MappedPageError, KVStoreError) as exc:
            print(f"kvstore: {exc}", file=sys.stderr)
            sys.exit(1)
    print("usage: python examples/kvstore.py demo [FILE]", file=sys.stderr)
    sys.exit(2)
