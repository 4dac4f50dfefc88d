/*
 * protected.c - protected pages: copy-on-write pairs with atomic commit, kept
 * in the crate's directory (block references in page 0, each block an A/B pair
 * of directory pages of 30-byte entries).
 *
 * Owns: the public protected-page calls and every change to the directory
 * (loading and writing it is directory.c's).
 *
 * Invariants, and the crash reasoning behind them:
 *   - A directory page is never written while the committed state names it: a
 *     change writes the block's other copy and flushes it (dir_write_dirty),
 *     and only the next commit flips the block to it (commit.c). A crash before
 *     that commit leaves the old copy named and intact.
 *   - In the v0.2 layout the directory (page 0) and the bitmap (a metadata
 *     copy) are two commit points: alloc_protected commits the directory
 *     first, free_protected the bitmap first. Either way a crash between the
 *     two leaves an entry whose pages are not both allocated, and an entry
 *     counts only if both its backing pages are allocated, so open drops it:
 *     no page is ever claimed by an entry and by the allocator at once.
 *   - In the extended layout the block references live in directory-index
 *     pages committed with the free map by the metadata copy's flush, so a
 *     protected alloc, free or write is one commit (commit.c); past page 0's
 *     capacity the directory grows there, growing the file if the index page
 *     it needs lies in a chunk the file does not reach yet.
 *   - Directory pages carry no generation, so a fallback to a block's other
 *     copy may be arbitrarily old: each of its entries must also match the CRC
 *     it recorded for its active page, or it is dropped as stale (fixture e12).
 *   - A staged copy is flushed before the directory names it, so a committed
 *     protected page is always whole.
 *   - Open discards nothing acknowledged on its own: after a fallback to the
 *     older metadata copy, page 0's directory (newer than that bitmap) keeps
 *     what it proves (dir_adopt_current); a block with no copy inside the file
 *     is damage no crash leaves (an append grows the file first), refused
 *     unless the caller asked to salvage.
 */
#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>

#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ lookups */

static int locate(const mp_pager *p, uint64_t pid, mp_dir_entry **e, uint8_t **writer,
                  uint32_t *block)
{
    uint64_t b = pid / p->epp;
    if (b >= p->dir_count)
        return MP_EOUT_OF_BOUNDS;
    uint64_t s = pid % p->epp;
    *e = &p->dirs[b].entries[s];
    if (writer)
        *writer = &p->dirs[b].writer_open[s];
    if (block)
        *block = (uint32_t)b;
    return MP_OK;
}

static int locate_live(const mp_pager *p, uint64_t pid, mp_dir_entry **e, uint8_t **writer,
                       uint32_t *block)
{
    int rc = locate(p, pid, e, writer, block);
    if (rc == MP_OK && !(*e)->in_use)
        rc = MP_EOUT_OF_BOUNDS;
    return rc;
}

static uint64_t active_page(const mp_dir_entry *e)
{
    return e->active_slot ? e->page_b : e->page_a;
}

static uint64_t inactive_page(const mp_dir_entry *e)
{
    return e->active_slot ? e->page_a : e->page_b;
}

/* The checks every lookup of a live protected page starts with. */
static int lookup_live(const mp_pager *p, uint64_t pid, const void *out, mp_dir_entry **e)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!out)
        return MP_EINVALID_ARGUMENT;
    return locate_live(p, pid, e, NULL, NULL);
}

int mp_protected_page_locked(const mp_pager *p, uint64_t pid, uint64_t *out_page)
{
    mp_dir_entry *e;
    int rc = lookup_live(p, pid, out_page, &e);
    if (rc == MP_OK)
        *out_page = active_page(e);
    return rc;
}

int mp_protected_verify_locked(const mp_pager *p, uint64_t pid, int *out_ok)
{
    mp_dir_entry *e;
    int rc = lookup_live(p, pid, out_ok, &e);
    if (rc == MP_OK)
        *out_ok = mp_crc32(pager_page_ptr(p, active_page(e)), p->page_size) == e->crc;
    return rc;
}

int mp_protected_crc_locked(const mp_pager *p, uint64_t pid, uint32_t *out_crc)
{
    mp_dir_entry *e;
    int rc = lookup_live(p, pid, out_crc, &e);
    if (rc == MP_OK)
        *out_crc = e->crc;
    return rc;
}

int mp_protected_backing_locked(const mp_pager *p, uint64_t pid, uint64_t *out_page_a,
                         uint64_t *out_page_b)
{
    mp_dir_entry *e;
    int rc = lookup_live(p, pid, out_page_b ? out_page_a : NULL, &e);
    if (rc == MP_OK) {
        *out_page_a = e->page_a;
        *out_page_b = e->page_b;
    }
    return rc;
}

int mp_pager_dir_block_pages_locked(const mp_pager *p, uint64_t block, uint64_t *out_page_a,
                             uint64_t *out_page_b)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!out_page_a || !out_page_b)
        return MP_EINVALID_ARGUMENT;
    if (block >= p->dir_count)
        return MP_EOUT_OF_BOUNDS;
    *out_page_a = p->refs[block].page_a;
    *out_page_b = p->refs[block].page_b;
    return MP_OK;
}

int mp_protected_list_locked(const mp_pager *p, uint64_t start, uint64_t *out_pids,
                      uint64_t capacity, uint64_t *out_n)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!out_pids || !out_n)
        return MP_EINVALID_ARGUMENT;
    uint64_t n = 0;
    uint64_t end = (uint64_t)p->dir_count * p->epp;
    for (uint64_t pid = start; pid < end && n < capacity; pid++) {
        if (p->dirs[pid / p->epp].entries[pid % p->epp].in_use)
            out_pids[n++] = pid;
    }
    *out_n = n;
    return MP_OK;
}

/* ------------------------------------------------------------ alloc/free */

static void stage(mp_pager *p, uint64_t staged);

/* A page a new entry or block will name: flushed before the commit names it,
 * or, in the extended layout's one-flush commit, listed in its record like a
 * staged copy (commit.c, engine.c). */
static int flush_new_page(mp_pager *p, uint64_t id)
{
    if (pager_extended(p) && p->durability != MP_DURABILITY_NONE) {
        stage(p, id);
        return MP_OK;
    }
    return pager_flush_page(p, id);
}

static int flush_zeroed(mp_pager *p, uint64_t id, uint32_t *crc)
{
    memset(pager_page_ptr(p, id), 0, p->page_size);
    *crc = mp_crc32(pager_page_ptr(p, id), p->page_size);
    return flush_new_page(p, id);
}

static int take_pages(mp_pager *p, uint64_t n, uint64_t *ids)
{
    int rc = pager_ensure_free(p, n);
    if (rc != MP_OK)
        return rc;
    for (uint64_t i = 0; i < n; i++) {
        if ((rc = pager_take_lowest(p, &ids[i])) != MP_OK) {
            for (uint64_t j = 0; j < i; j++)
                pager_release_bit(p, ids[j]);
            return rc;
        }
    }
    return MP_OK;
}

static void claim_system(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        bitmap_set(p->system, ids[i]);
    p->system_count += n;
}

static int alloc_in_new_block(mp_pager *p, uint64_t *out_pid)
{
    uint32_t b = p->dir_count;
    int rc;
    if (b >= pager_dir_block_limit(p)) {
        /* Past page 0's capacity the directory lives in the extended
         * layout's index pages; index page k sits in chunk k + 1. */
        uint64_t per = fmt_max_dir_blocks(p->page_size);
        rc = pager_grow_at_least(p, fmt_total_for_index(p->chunk_pages, p->ext_always, b / per));
        if (rc == MP_EFILE_FULL)
            return MP_EDIRECTORY_FULL;
        if (rc != MP_OK)
            return rc;
    }
    if ((rc = dir_reserve(p, (uint64_t)b + 1)) != MP_OK)
        return rc;
    rc = dir_block_init(p, b);
    if (rc != MP_OK)
        return rc;
    /* The crate's order: dir_a, dir_b, data_a, data_b, lowest free first. */
    uint64_t ids[4];
    if ((rc = take_pages(p, 4, ids)) != MP_OK) {
        free(p->dirs[b].entries);
        free(p->dirs[b].writer_open);
        p->dirs[b].entries = NULL;
        p->dirs[b].writer_open = NULL;
        return rc;
    }
    mp_dir_entry *e = &p->dirs[b].entries[0];
    e->in_use = 1;
    e->page_a = ids[2];
    e->page_b = ids[3];
    if ((rc = flush_zeroed(p, ids[2], &e->crc)) != MP_OK)
        return rc;
    /* Both copies of a new block are written whole (the crate leaves one
     * stale), so a later fallback never meets an uninitialised page. In the
     * one-flush commit only the live copy, page_a, is in the record: the next
     * change to the block rewrites page_b at once, and a page the committed
     * record lists must not change while that record counts (a crash then
     * would make open doubt a durable commit). page_b goes out under the
     * same fdatasync, unlisted: open reads it only if page_a fails. */
    int one_flush = pager_extended(p) && p->durability != MP_DURABILITY_NONE;
    for (int w = 0; w < 2; w++) {
        fmt_dir_page_write(pager_page_ptr(p, ids[w]), p->page_size, p->dirs[b].entries);
        if ((w == 0 || !one_flush) && (rc = flush_new_page(p, ids[w])) != MP_OK)
            return rc;
    }
    p->refs[b].page_a = ids[0];
    p->refs[b].page_b = ids[1];
    p->refs[b].active = 0;
    p->dir_count++;
    claim_system(p, ids, 4);
    p->protected_count++;
    dir_ref_changed(p, b);
    p->changed = 1;
    /* Without the directory record, page 0 appends the block before the
     * bitmap commit: a crash in between leaves a trailing block on
     * unallocated pages, dropped on open. */
    if ((rc = pager_commit(p, MP_ORDER_DIR_FIRST)) != MP_OK)
        return rc;
    *out_pid = (uint64_t)b * p->epp;
    return MP_OK;
}

int mp_protected_alloc_locked(mp_pager *p, uint64_t *out_pid)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (!out_pid)
        return MP_EINVALID_ARGUMENT;
    if ((rc = pager_prepare_dir_commit(p)) != MP_OK)
        return rc;
    for (uint32_t b = 0; b < p->dir_count; b++) {
        for (uint32_t s = 0; s < p->epp; s++) {
            mp_dir_entry *e = &p->dirs[b].entries[s];
            if (e->in_use)
                continue;
            uint64_t ids[2];
            if ((rc = take_pages(p, 2, ids)) != MP_OK)
                return rc;
            mp_dir_entry fresh = {1, ids[0], ids[1], 0, 0, 0};
            if ((rc = flush_zeroed(p, ids[0], &fresh.crc)) != MP_OK)
                return rc;
            *e = fresh;
            p->dirs[b].writer_open[s] = MP_WRITER_NONE;
            p->dirs[b].dirty = 1;
            p->changed = 1;
            claim_system(p, ids, 2);
            p->protected_count++;
            if ((rc = pager_commit(p, MP_ORDER_DIR_FIRST)) != MP_OK)
                return rc;
            *out_pid = (uint64_t)b * p->epp + s;
            return MP_OK;
        }
    }
    return alloc_in_new_block(p, out_pid);
}

static void release_entry(mp_pager *p, uint32_t b, mp_dir_entry *e)
{
    pager_release_bit(p, e->page_a);
    pager_release_bit(p, e->page_b);
    bitmap_clear(p->system, e->page_a);
    bitmap_clear(p->system, e->page_b);
    p->system_count -= 2;
    p->protected_count--;
    e->in_use = 0;
    p->dirs[b].dirty = 1;
    p->changed = 1;
}

int mp_protected_free_locked(mp_pager *p, uint64_t pid)
{
    return mp_protected_free_bulk(p, &pid, 1);
}

/* Frees pids[0..n), a copy the core owns: validated first, then applied. */
static int free_bulk_owned(mp_pager *p, const uint64_t *pids, uint64_t n)
{
    int rc = pager_prepare_dir_commit(p);
    if (rc != MP_OK)
        return rc;
    /* Validate everything first; in_use is cleared as each id passes so a
     * repeated id fails as a double free, and restored on failure. */
    uint64_t i;
    for (i = 0; i < n; i++) {
        mp_dir_entry *e;
        uint8_t *w;
        rc = locate(p, pids[i], &e, &w, NULL);
        if (rc == MP_OK && !e->in_use)
            rc = MP_EDOUBLE_FREE;
        if (rc == MP_OK && *w == MP_WRITER_OPEN)
            rc = MP_EWRITER_OPEN;
        if (rc != MP_OK)
            break;
        e->in_use = 0;
    }
    for (uint64_t j = 0; j < i; j++) {
        mp_dir_entry *e = NULL;
        if (locate(p, pids[j], &e, NULL, NULL) == MP_OK)
            e->in_use = 1;
    }
    if (rc != MP_OK)
        return rc;
    for (i = 0; i < n; i++) {
        mp_dir_entry *e = NULL;
        uint32_t b = 0;
        if (locate(p, pids[i], &e, NULL, &b) == MP_OK)
            release_entry(p, b, e);
    }
    return pager_commit(p, MP_ORDER_META_FIRST);
}

int mp_protected_free_bulk_locked(mp_pager *p, const uint64_t *caller_pids, uint64_t n)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!caller_pids)
        return MP_EINVALID_ARGUMENT;
    /* Read once: the ids validated are the ids applied (pager_ids_copy). */
    uint64_t *pids = pager_ids_copy(caller_pids, n);
    if (!pids)
        return MP_ENO_MEMORY;
    rc = free_bulk_owned(p, pids, n);
    free(pids);
    return rc;
}

/* ------------------------------------------------------------ writers */

int mp_protected_begin_locked(mp_pager *p, uint64_t pid, uint64_t *out_staged_page)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (!out_staged_page)
        return MP_EINVALID_ARGUMENT;
    mp_dir_entry *e;
    uint8_t *w;
    if ((rc = locate_live(p, pid, &e, &w, NULL)) != MP_OK)
        return rc;
    /* Written earlier in this transaction: the other copy is the one the
     * committed state names, and staging into it would overwrite that. */
    if (*w != MP_WRITER_NONE)
        return MP_EWRITER_OPEN;
    /* The staged copy is not touched here: the writer stages its content in
     * its own memory (starting from the active copy, so a small change keeps
     * the rest of the page) and hands it to mp_protected_commit_bytes, which
     * writes the whole page. A store through the mapping would dirty the
     * whole page-cache folio under the page. */
    *w = MP_WRITER_OPEN;
    *out_staged_page = inactive_page(e);
    return MP_OK;
}

/* The commit under way names no staged copy any more: flushed, carried in its
 * record, or rolled back. */
void pager_staged_forget(mp_pager *p)
{
    p->staged_lo = 1;
    p->staged_hi = 0;
    p->staged_n = 0;
}

/* Staged copies are flushed by the commit that names them (commit.c's
 * flush_dir_changes), before its commit point: the directory copy and the
 * metadata written with them may reach the disk at any time. */
static void stage(mp_pager *p, uint64_t staged)
{
    /* The extended layout's record names each one (engine.c). */
    if (p->staged_n < MP_MAX_RECORD)
        p->staged_ids[p->staged_n] = staged;
    if (p->staged_n <= MP_MAX_RECORD)
        p->staged_n++;
    if (p->staged_hi < p->staged_lo) {
        p->staged_lo = p->staged_hi = staged;
    } else {
        p->staged_lo = staged < p->staged_lo ? staged : p->staged_lo;
        p->staged_hi = staged > p->staged_hi ? staged : p->staged_hi;
    }
}

/* The checks a writer's commit starts with. */
static int open_writer(mp_pager *p, uint64_t pid, mp_dir_entry **e, uint8_t **w, uint32_t *b)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if ((rc = locate_live(p, pid, e, w, b)) != MP_OK)
        return rc;
    if (**w != MP_WRITER_OPEN)
        return MP_ENO_WRITER;
    return pager_prepare_dir_commit(p);
}

/* The record lists only the copies the committed state names: the copy
 * this commit leaves inactive (written earlier in the same commit: the zeroed
 * page of an alloc, or an earlier write's copy in a transaction) leaves the
 * list. The next write stages into it at once, and a page the committed
 * record lists must keep its content while that record counts. */
static void unstage(mp_pager *p, uint64_t id)
{
    uint32_t n = p->staged_n < MP_MAX_RECORD ? p->staged_n : MP_MAX_RECORD;
    for (uint32_t i = 0; i < n; i++) {
        if (p->staged_ids[i] == id) {
            p->staged_ids[i] = p->staged_ids[n - 1];
            if (p->staged_n <= MP_MAX_RECORD)
                p->staged_n--;
            return;
        }
    }
}

/* The staged copy holds the new content (crc its CRC): flip the entry and
 * commit the directory change. */
static int commit_staged(mp_pager *p, mp_dir_entry *e, uint8_t *w, uint32_t b, uint32_t crc)
{
    unstage(p, active_page(e));
    stage(p, inactive_page(e));
    e->crc = crc;
    e->active_slot ^= 1u;
    e->generation++;
    *w = p->txn_depth > 0 ? MP_WRITER_DONE_IN_TXN : MP_WRITER_NONE;
    /* A directory change only: page 0 commits it, no metadata commit. */
    p->dirs[b].dirty = 1;
    return pager_commit(p, MP_ORDER_DIR_FIRST);
}

int mp_protected_commit_locked(mp_pager *p, uint64_t pid)
{
    mp_dir_entry *e;
    uint8_t *w;
    uint32_t b;
    int rc = open_writer(p, pid, &e, &w, &b);
    if (rc != MP_OK)
        return rc;
    uint64_t staged = inactive_page(e);
    return commit_staged(p, e, w, b, mp_crc32(pager_page_ptr(p, staged), p->page_size));
}

int mp_protected_commit_bytes_locked(mp_pager *p, uint64_t pid, const uint8_t *buf, uint64_t len)
{
    mp_dir_entry *e;
    uint8_t *w;
    uint32_t b;
    int rc = open_writer(p, pid, &e, &w, &b);
    if (rc != MP_OK)
        return rc;
    if (!buf || len != p->page_size)
        return MP_EINVALID_ARGUMENT;
    /* One read of the caller's buffer, which another thread may change, into
     * the core's scratch page: the CRC and the bytes written are of the same
     * content. pwrite, not a store through the mapping: a store dirties the
     * whole page-cache folio under it (megabytes after a sequential read),
     * which the flush then writes to the device; pwrite dirties only the
     * blocks it writes. */
    memcpy(p->scratch, buf, p->page_size);
    uint64_t staged = inactive_page(e);
    rc = os_write_all(p->map.io, p->fd, p->scratch, p->page_size, staged * (uint64_t)p->page_size);
    if (rc != MP_OK) {
        p->poisoned = 1;
        return rc;
    }
    return commit_staged(p, e, w, b, mp_crc32(p->scratch, p->page_size));
}

int mp_protected_discard_locked(mp_pager *p, uint64_t pid)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    mp_dir_entry *e;
    uint8_t *w;
    int rc = locate_live(p, pid, &e, &w, NULL);
    if (rc != MP_OK)
        return rc;
    if (*w != MP_WRITER_OPEN)
        return MP_ENO_WRITER;
    *w = MP_WRITER_NONE;
    return MP_OK;
}
