/*
 * engine.c - what a storage engine needs from a transaction beyond
 * allocation: roots, data pages committed with the allocation state, and
 * flushing chosen pages.
 *
 * Owns: p->roots, the dirty-page set of the open transaction (p->dirty,
 * mp_txn_mark_dirty, mp_txn_write, mp_txn_write_pages), the commit record (p->rec: the runs of
 * data pages the committed metadata copy vouches for, with their CRCs), the
 * "none"-mode snapshot a transaction rolls back to (p->snap), and
 * mp_pager_sync_run.
 *
 * Invariants:
 *   - roots are part of the allocation state: they are written into every
 *     metadata copy (format.c, the tail) and reloaded with it, so they commit,
 *     roll back and survive a crash exactly as allocations do;
 *   - a commit whose dirty pages fit the record writes their runs and CRCs
 *     into the new metadata copy and makes data and copy durable with one
 *     fdatasync; open believes the newest copy only if every run matches its
 *     CRC, and otherwise takes the older copy (whose commit was durable before
 *     this one began). Dirty pages that do not fit are flushed before the
 *     commit point instead;
 *   - while the committed copy carries a record, no page of it is written
 *     again through a transaction before another copy replaces it: marking
 *     such a page dirty first commits the same state with an empty record
 *     (retire_record), so a crash can never make open doubt a durable commit.
 */
#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>

#define WRITEBACK_MIN_PAGES 16u /* a write of this many pages starts its writeback */

static void dirty_add(mp_pager *p, uint64_t first, uint64_t count)
{
    for (uint64_t id = first; id < first + count; id++) {
        if (bitmap_get(p->dirty, id))
            continue;
        bitmap_set(p->dirty, id);
        if (p->dirty_count == 0 || id < p->dirty_lo)
            p->dirty_lo = id;
        if (p->dirty_count == 0 || id > p->dirty_hi)
            p->dirty_hi = id;
        p->dirty_count++;
    }
}

void txn_forget_dirty(mp_pager *p)
{
    if (p->dirty_count == 0)
        return;
    uint64_t lo = p->dirty_lo >> 6, hi = p->dirty_hi >> 6;
    memset(p->dirty + lo, 0, (size_t)(hi - lo + 1) * sizeof(uint64_t));
    p->dirty_count = 0;
}

int txn_flush_dirty(mp_pager *p)
{
    if (p->dirty_count == 0)
        return MP_OK;
    /* One fdatasync: it writes every dirty run at once, where an msync per
     * run would cost a flush each. */
    int rc = os_sync_file(&p->map);
    if (rc != MP_OK) {
        p->poisoned = 1;
        return rc;
    }
    txn_forget_dirty(p);
    return MP_OK;
}

/* A dirty page the commit vouches for: one the transaction freed again is
 * not part of the committed state, and may be reused once it is durable. */
static int recorded(const mp_pager *p, uint64_t id)
{
    return bitmap_get(p->dirty, id) && bitmap_get(p->bits, id);
}

/* The next run of recorded pages at or after `from`: [*first, *first + *count). */
static int next_run(const mp_pager *p, uint64_t from, uint64_t *first, uint64_t *count)
{
    uint64_t end = p->dirty_hi + 1;
    uint64_t a = from;
    while (a < end && !recorded(p, a))
        a++;
    if (a >= end)
        return 0;
    uint64_t b = a;
    while (b < end && recorded(p, b) && b - a < UINT32_MAX)
        b++;
    *first = a;
    *count = b - a;
    return 1;
}

/* The check a record keeps for a run: its record sum (format_tail.c), which,
 * unlike a CRC-32, also tells apart pages that end with their own CRC (every
 * directory copy, and many user formats). */
static uint32_t run_crc(const mp_pager *p, uint64_t first, uint64_t count)
{
    return fmt_record_sum(pager_page_ptr(p, first), (size_t)(count * p->page_size), first);
}

int txn_build_record(mp_pager *p)
{
    if (p->dirty_count == 0)
        return 0;
    uint64_t room = fmt_meta_record_room(p->page_size, p->total_pages);
    uint64_t first, count, n = 0;
    for (uint64_t at = p->dirty_lo; next_run(p, at, &first, &count); at = first + count) {
        if (n >= room)
            return 0;
        n++;
    }
    n = 0;
    for (uint64_t at = p->dirty_lo; next_run(p, at, &first, &count); at = first + count) {
        p->rec[n].first = first;
        p->rec[n].count = (uint32_t)count;
        p->rec[n].crc = run_crc(p, first, count);
        n++;
    }
    p->rec_n = (uint32_t)n;
    p->rec_new = 1;
    txn_forget_dirty(p);
    return 1;
}

int txn_record_holds(const mp_pager *p, const mp_rec *recs, uint32_t n)
{
    uint64_t mapped_pages = p->map.mapped / p->page_size;
    for (uint32_t i = 0; i < n; i++) {
        const mp_rec *r = &recs[i];
        if (r->count == 0 || r->first < MP_RESERVED_PAGES || r->first > mapped_pages ||
            r->count > mapped_pages - r->first)
            return 0;
        if (run_crc(p, r->first, r->count) != r->crc)
            return 0;
    }
    return 1;
}

/* ---------------------------------------- the extended layout's record */

void roots_pages_claim(mp_pager *p, uint64_t at)
{
    /* The pages held data (or an earlier crash's copies): zeroed, so no old
     * content can pass for a copy. Copy A is written by the commit that names
     * the pair, and the zeroes reach the disk under its flush; a crash before
     * that leaves copies newer than the committed state, which open zeroes. */
    for (uint64_t i = 0; i < MP_ROOT_PAGES; i++) {
        memset(pager_page_ptr(p, at + i), 0, p->page_size);
        pager_bit_take(p, at + i);
        bitmap_set(p->system, at + i);
    }
    p->free_count -= MP_ROOT_PAGES;
    p->system_count += MP_ROOT_PAGES;
    p->roots_page = at;
    p->roots_active = 1; /* the first write goes to copy A */
    p->roots_dirty = 1;
}

/* A file that reached the extended layout without root pages: the lowest
 * free pair at a multiple of 4 (the metadata copy names it by a u32). */
int roots_pages_ensure(mp_pager *p)
{
    if (p->roots_page != 0)
        return MP_OK;
    for (uint64_t at = p->chunk_pages; at + 1 < p->total_pages; at += 4) {
        int busy = 0;
        for (uint64_t i = 0; i < MP_ROOT_PAGES; i++)
            busy |= pager_is_layout_page(p, at + i) || bitmap_get(p->bits, at + i) ||
                    bitmap_get(p->pending, at + i);
        if (busy)
            continue;
        int rc = space_before_take(p, at);
        if (rc == MP_OK)
            rc = space_before_take(p, at + 1);
        if (rc != MP_OK)
            return rc;
        roots_pages_claim(p, at);
        return MP_OK;
    }
    return MP_EFILE_FULL;
}

static uint64_t dirty_runs(const mp_pager *p, uint64_t limit)
{
    uint64_t first, count, n = 0;
    for (uint64_t at = p->dirty_lo; p->dirty_count > 0 && n <= limit &&
                                    next_run(p, at, &first, &count);
         at = first + count)
        n++;
    return n;
}

/* A page of a dirty directory block that its commit leaves inactive: written
 * earlier in the same commit (a new block's page_a), it is not listed (the
 * next change to the block rewrites it; see unstage in protected.c). */
static int dir_page_left_inactive(const mp_pager *p, uint64_t id)
{
    for (uint32_t b = 0; b < p->dir_count; b++) {
        if (p->dirs[b].dirty && id == (p->refs[b].active ? p->refs[b].page_b : p->refs[b].page_a))
            return 1;
    }
    return 0;
}

static void rec_page(mp_pager *p, uint32_t *n, uint64_t id)
{
    p->rec[*n].first = id;
    p->rec[*n].count = 1;
    p->rec[*n].crc = run_crc(p, id, 1);
    (*n)++;
}

/* One commit point and one flush for everything the commit wrote: the root
 * page's record holds the CRC of each dirty data run, each staged protected
 * copy and each new directory copy, so open can tell a commit whose pages did
 * not all reach the disk (and takes the older state, which none of them
 * overwrote: they are new pages, or inactive copies). */
int txn_build_ext_record(mp_pager *p, int *built)
{
    *built = 0;
    uint64_t room = fmt_roots_page_room(p->page_size);
    uint64_t n = dirty_runs(p, room) + p->staged_n;
    for (uint32_t b = 0; b < p->dir_count; b++)
        n += p->dirs[b].dirty != 0;
    if (n == 0 || n > room || roots_pages_ensure(p) != MP_OK)
        return MP_OK;
    int rc = dir_write_dirty(p, 0);
    if (rc != MP_OK)
        return rc;
    uint32_t k = 0;
    uint64_t first, count;
    for (uint64_t at = p->dirty_lo; p->dirty_count > 0 && next_run(p, at, &first, &count);
         at = first + count) {
        p->rec[k].first = first;
        p->rec[k].count = (uint32_t)count;
        p->rec[k].crc = run_crc(p, first, count);
        k++;
    }
    for (uint32_t i = 0; i < p->staged_n; i++)
        if (!dir_page_left_inactive(p, p->staged_ids[i]))
            rec_page(p, &k, p->staged_ids[i]);
    for (uint32_t b = 0; b < p->dir_count; b++)
        if (p->dirs[b].dirty)
            rec_page(p, &k, dir_inactive_page(p, b));
    p->rec_n = k;
    p->rec_new = 1;
    txn_forget_dirty(p);
    pager_staged_forget(p);
    *built = 1;
    return MP_OK;
}

static int overlaps_record(const mp_pager *p, uint64_t first, uint64_t count)
{
    for (uint32_t i = 0; i < p->rec_n; i++)
        if (first < p->rec[i].first + p->rec[i].count && p->rec[i].first < first + count)
            return 1;
    return 0;
}

/* The v0.2 copy rebuilt: the same bitmap and counts, generation + 1, no
 * record (p->rec holds this same record already). */
static int rebuild_without_record(mp_pager *p, uint8_t *page, uint64_t total)
{
    uint64_t roots[MP_ROOTS];
    uint32_t n;
    fmt_meta_tail_read(page, p->page_size, total, roots, p->rec, &n);
    uint64_t *bits = calloc((size_t)bitmap_words(total) + 1, sizeof(uint64_t));
    if (!bits)
        return MP_ENO_MEMORY;
    fmt_meta_load_bits(page, total, bits);
    mp_meta_tail tail = {roots, NULL, 0};
    fmt_meta_write(page, p->page_size, total, p->generation + 1, mp_load_u64(page + 16), bits,
                   &tail);
    free(bits);
    return MP_OK;
}

/* The committed copy vouches for pages about to be written again: commit the
 * same state, without a record, into the other copy first. Built from the
 * committed copy's bytes, since the in-memory state holds the open
 * transaction's changes. */
static int retire_record(mp_pager *p)
{
    uint32_t target = p->active ^ 1u;
    uint8_t *page = commit_page_from(p, 1 + (uint64_t)p->active);
    uint64_t total = mp_load_u64(page);
    /* Extended: the record counts only for its own generation, so the same
     * copy one generation on, sealing nothing, retires it. */
    int extended = p->ext_always || total > p->chunk_pages;
    int rc = MP_OK;
    if (extended)
        fmt_meta_restamp(page, p->page_size, p->ext_always, p->generation + 1);
    else
        rc = rebuild_without_record(p, page, total);
    if (rc == MP_OK && (rc = commit_page_write(p, 1 + (uint64_t)target)) == MP_OK)
        rc = pager_flush_page(p, 1 + (uint64_t)target);
    if (rc != MP_OK)
        return rc;
    p->active = target;
    p->generation++;
    p->rec_n = 0;
    if (!extended)
        p->page0_stale = 1;
    return MP_OK;
}

/* Whether pages first .. first + count - 1 may join the dirty set: in the
 * file, and neither the layout's nor the directory's. */
static int check_dirtyable(const mp_pager *p, uint64_t first, uint64_t count)
{
    if (first >= p->total_pages || count > p->total_pages - first)
        return MP_EOUT_OF_BOUNDS;
    for (uint64_t id = first; id < first + count; id++) {
        int rc = pager_check_page_id(p, id);
        if (rc != MP_OK)
            return rc;
    }
    return MP_OK;
}

int mp_txn_mark_dirty_locked(mp_pager *p, uint64_t first, uint64_t count)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (p->txn_depth == 0 || count == 0)
        return MP_EINVALID_ARGUMENT;
    if ((rc = check_dirtyable(p, first, count)) != MP_OK)
        return rc;
    if (p->rec_n > 0 && overlaps_record(p, first, count) && (rc = retire_record(p)) != MP_OK)
        return rc;
    dirty_add(p, first, count);
    return MP_OK;
}

/* Writes through the page cache (pwrite), not the mapping: a store through a
 * shared mapping dirties its whole folio, which the commit's fdatasync then
 * writes whole (up to 2 MiB for one changed page, when the file was read
 * sequentially); pwrite dirties only the blocks it writes. The mapping sees
 * the bytes at once (one page cache). */
int mp_txn_write_locked(mp_pager *p, uint64_t first, uint64_t offset, const uint8_t *buf,
                 uint64_t len)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (p->txn_depth == 0 || !buf || len == 0 || offset >= p->page_size)
        return MP_EINVALID_ARGUMENT;
    uint64_t count = (offset + len + p->page_size - 1) / p->page_size;
    if ((rc = mp_txn_mark_dirty(p, first, count)) != MP_OK)
        return rc;
    rc = os_write_all(p->map.io, p->fd, buf, (size_t)len, first * p->page_size + offset);
    if (rc != MP_OK)
        p->poisoned = 1; /* a write cut short leaves a page we cannot vouch for */
    return rc;
}

/* Whether the record's runs are in ascending order, apart: as commits write
 * them (next_run). A record read from a file is not trusted to be. */
static int record_ascending(const mp_pager *p)
{
    for (uint32_t i = 1; i < p->rec_n; i++)
        if (p->rec[i].first < p->rec[i - 1].first + p->rec[i - 1].count)
            return 0;
    return 1;
}

/* overlaps_record for one page of an ascending record: a binary search for
 * the last run that starts at or before id, where a batch of pages would
 * scan the whole record for each. */
static int record_holds_page(const mp_pager *p, uint64_t id)
{
    uint32_t lo = 0, hi = p->rec_n; /* runs [0, lo) start at or before id */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (p->rec[mid].first <= id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && id < p->rec[lo - 1].first + p->rec[lo - 1].count;
}

/* Every id checked (from the core's copy: the caller's array may change
 * under us) and the record retired before any page is marked or written. */
static int mark_pages(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    int rc, overlap = 0, ascending = record_ascending(p);
    for (uint64_t i = 0; i < n; i++) {
        if ((rc = check_dirtyable(p, ids[i], 1)) != MP_OK)
            return rc;
        if (!overlap && p->rec_n > 0)
            overlap = ascending ? record_holds_page(p, ids[i]) : overlaps_record(p, ids[i], 1);
    }
    if (overlap && (rc = retire_record(p)) != MP_OK)
        return rc;
    for (uint64_t i = 0; i < n; i++)
        dirty_add(p, ids[i], 1);
    return MP_OK;
}

/* Whole pages, page i of buf to ids[i]: one pwrite per run of consecutive
 * ids (an engine's new nodes are mostly pages allocated together), and one
 * call where a page at a time would cost a crossing into the core each. */
int mp_txn_write_pages_locked(mp_pager *p, const uint64_t *ids, uint64_t n, const uint8_t *buf,
                       uint64_t len)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (p->txn_depth == 0 || !ids || !buf || n == 0 || len / p->page_size != n ||
        len % p->page_size != 0)
        return MP_EINVALID_ARGUMENT;
    uint64_t *own = pager_ids_copy(ids, n);
    if (!own)
        return MP_ENO_MEMORY;
    rc = mark_pages(p, own, n);
    uint64_t ps = p->page_size;
    /* Many pages' writeback is started as each run is written: their I/O then
     * overlaps the rest of the transaction, which grows with them (the record
     * sums). A few pages are left to the flush, which submits them with the
     * metadata in one go: a request of their own costs a virtual machine's
     * disk a notification more than the overlap saves. */
    int early = p->durability != MP_DURABILITY_NONE && n >= WRITEBACK_MIN_PAGES;
    for (uint64_t i = 0, run; rc == MP_OK && i < n; i += run) {
        for (run = 1; i + run < n && own[i + run] == own[i] + run; run++)
            ;
        rc = os_write_all(p->map.io, p->fd, buf + i * ps, (size_t)(run * ps), own[i] * ps);
        if (rc != MP_OK)
            p->poisoned = 1; /* as in mp_txn_write */
        else if (early)
            os_start_writeback(&p->map, own[i] * ps, run * ps); /* flushed at the commit */
    }
    free(own);
    return rc;
}

int mp_txn_dirty_count_locked(const mp_pager *p, uint64_t *out)
{
    if (!p || !out)
        return MP_EINVALID_ARGUMENT;
    *out = p->dirty_count;
    return MP_OK;
}

int mp_pager_roots_locked(const mp_pager *p, uint64_t *out)
{
    if (!p || !out)
        return MP_EINVALID_ARGUMENT;
    int rc = pager_usable(p, 0); /* (a fork child's copy: its parent's state) */
    if (rc != MP_OK)
        return rc;
    memcpy(out, p->roots, sizeof p->roots);
    return MP_OK;
}

int mp_pager_root_pages_locked(const mp_pager *p, uint64_t *out_page_a)
{
    if (!p || !out_page_a)
        return MP_EINVALID_ARGUMENT;
    *out_page_a = p->roots_page;
    return MP_OK;
}

int mp_pager_set_root_locked(mp_pager *p, uint32_t slot, uint64_t value)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (slot >= MP_ROOTS)
        return MP_EINVALID_ARGUMENT;
    if (p->roots[slot] == value)
        return MP_OK;
    /* Roots live beside the v0.2 bitmap while it leaves them room; past that
     * the state moves to the extended layout (growth past chunk 0 claims its
     * root pages), as growth past the v0.2 cap does. */
    if (value != 0 && !pager_extended(p) && !fmt_meta_has_tail(p->page_size, p->total_pages))
        rc = pager_grow_at_least(p, p->chunk_pages + 1);
    if (rc == MP_OK && value != 0 && pager_extended(p))
        rc = roots_pages_ensure(p);
    if (rc != MP_OK)
        return rc;
    p->roots[slot] = value;
    p->roots_dirty = 1;
    p->changed = 1;
    return pager_commit(p, MP_ORDER_DIR_FIRST);
}

int mp_pager_sync_run_locked(mp_pager *p, uint64_t first, uint64_t count)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (first >= p->total_pages || count > p->total_pages - first)
        return MP_EOUT_OF_BOUNDS;
    if (count == 0)
        return MP_OK;
    rc = os_flush_range(&p->map, first * (uint64_t)p->page_size, count * (uint64_t)p->page_size);
    if (rc != MP_OK)
        p->poisoned = 1;
    return rc;
}

/* ------------------------------------------------ "none" mode snapshots */

int txn_snapshot_take(mp_pager *p)
{
    uint64_t words = p->words_used;
    p->snap = malloc((size_t)(2 * words + 1) * sizeof(uint64_t));
    if (!p->snap)
        return MP_ENO_MEMORY;
    memcpy(p->snap, p->bits, (size_t)words * sizeof(uint64_t));
    memcpy(p->snap + words, p->pending, (size_t)words * sizeof(uint64_t));
    p->snap_words = words;
    p->snap_total = p->total_pages;
    p->snap_free = p->free_count;
    p->snap_pending_count = p->pending_count;
    p->snap_pending_lo = p->pending_lo;
    p->snap_pending_hi = p->pending_hi;
    memcpy(p->snap_roots, p->roots, sizeof p->roots);
    p->snap_roots_page = p->roots_page;
    return MP_OK;
}

void txn_snapshot_drop(mp_pager *p)
{
    free(p->snap);
    p->snap = NULL;
}

/* Every free-map page is rewritten at the next commit: the reload cleared
 * the marks of the chunks the unwritten state changed. */
static void mark_all_chunks(mp_pager *p)
{
    if (!pager_extended(p))
        return;
    uint64_t last = (p->total_pages - 1) / p->chunk_pages;
    for (uint64_t c = 1; c <= last; c++)
        bitmap_set(p->chunk_dirty, c);
}

/* After the reload of the committed (older) state: the state the
 * transaction started from, still unwritten. */
int txn_snapshot_restore(mp_pager *p)
{
    uint64_t words = p->snap_words > p->words_used ? p->snap_words : p->words_used;
    memset(p->bits, 0, (size_t)words * sizeof(uint64_t));
    memset(p->pending, 0, (size_t)words * sizeof(uint64_t));
    memcpy(p->bits, p->snap, (size_t)p->snap_words * sizeof(uint64_t));
    memcpy(p->pending, p->snap + p->snap_words, (size_t)p->snap_words * sizeof(uint64_t));
    if (p->snap_words > p->words_used)
        p->words_used = p->snap_words;
    p->total_pages = p->snap_total;
    p->free_count = p->snap_free;
    p->pending_count = p->snap_pending_count;
    p->pending_lo = p->snap_pending_lo;
    p->pending_hi = p->snap_pending_hi;
    memcpy(p->roots, p->snap_roots, sizeof p->roots);
    /* The unwritten state may have claimed the root pages, which the reload
     * does not know of: claimed again (their bits are in the snapshot). */
    if (p->roots_page == 0 && p->snap_roots_page != 0) {
        for (uint64_t i = 0; i < MP_ROOT_PAGES; i++)
            bitmap_set(p->system, p->snap_roots_page + i);
        p->system_count += MP_ROOT_PAGES;
        p->roots_page = p->snap_roots_page;
        p->roots_active = 1; /* the first write goes to copy A */
    }
    /* The reload read the roots of the committed state; the unwritten state's
     * may differ, and the extended layout writes its root page only when
     * told to. */
    p->roots_dirty = 1;
    p->meta_unwritten = 1;
    p->hint = MP_RESERVED_PAGES;
    summary_rebuild(&p->sum, p->bits, p->pending, p->words_used);
    mark_all_chunks(p);
    return MP_OK;
}

/* Writes the snapshot's state (not the transaction's) and flushes it: the
 * in-memory maps are swapped for the snapshot's for the write. Pages pending
 * stay pending (the transaction's frees among them). */
int txn_snapshot_settle(mp_pager *p)
{
    uint64_t *bits = p->bits;
    uint64_t total = p->total_pages, free_count = p->free_count;
    uint64_t roots[MP_ROOTS];
    memcpy(roots, p->roots, sizeof roots);
    /* The writes read bits below the snapshot's page count only. */
    uint64_t words = bitmap_words(p->snap_total) + 1;
    if (words < p->snap_words)
        words = p->snap_words;
    uint64_t *view = calloc((size_t)words, sizeof(uint64_t));
    if (!view)
        return MP_ENO_MEMORY;
    memcpy(view, p->snap, (size_t)p->snap_words * sizeof(uint64_t));
    mark_all_chunks(p);
    p->bits = view;
    p->total_pages = p->snap_total;
    p->free_count = p->snap_free;
    memcpy(p->roots, p->snap_roots, sizeof p->roots);
    p->roots_dirty = 1; /* the root page holds the state written, then the txn's */
    int rc = pager_write_state(p);
    p->bits = bits;
    p->total_pages = total;
    p->free_count = free_count;
    memcpy(p->roots, roots, sizeof roots);
    p->roots_dirty = 1;
    free(view);
    mark_all_chunks(p);
    p->changed = 1;
    txn_snapshot_drop(p);
    return rc;
}
