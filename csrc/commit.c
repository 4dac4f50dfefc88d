/*
 * commit.c - making state changes durable: the metadata commit, page 0
 * and durability modes (transactions are txn.c's).
 *
 * Owns: the order of writes and flushes of every commit. Everything that
 * changes allocation or directory state ends in pager_commit().
 *
 * The extended layout has one commit point, the metadata copy's flush: the
 * free-map and index pages a commit changed are written with the metadata
 * copy and made durable by the same flush, and the copy's seal lets open
 * reject a commit that reached the disk only in part (write_extended_pages,
 * meta_write, commit_extended); everything below is about the v0.2 layout.
 *
 * The v0.2 layout has two commit points. Allocation state commits when the
 * new metadata copy is flushed: open takes the newest valid copy by
 * generation. The protected-page directory commits when page 0, which names
 * each block's live directory copy, is flushed. The durability mode decides
 * what an allocation-only commit flushes:
 *   compat  the metadata copy, then page 0 rewritten to name it: at every
 *           instant the crate (which follows page 0's selector) reads the
 *           latest committed state. 2 flushes.
 *   fast    the metadata copy only; page 0 is rewritten at sync, close, the
 *           next directory commit and the next writer's open. 1 flush. After a
 *           crash the crate may read the state before the commits since then.
 *   none    nothing: the state is written at sync and close (or with the
 *           next directory commit). 0 flushes. A crash loses the commits since
 *           then, never consistency: a page freed since is not reused until
 *           the free is durable (the pending map), so no page of the durable
 *           state can be overwritten by a new owner.
 * Directory changes (protected alloc, free, write) flush page 0 in every mode,
 * since page 0 is their commit point, and everything a directory names (a
 * staged copy, a directory copy) is flushed before page 0 names it:
 *   protected write      staged copy, directory copy, page 0: 3 flushes in
 *                        compat; 2 in fast and none, where one fdatasync
 *                        covers the first two (flush_dir_changes);
 *   alloc_protected      zeroed copy, directory copy, page 0, metadata copy
 *                        (+ page 0 again in compat): 4-5 flushes;
 *   free_protected       metadata copy, directory copy, page 0: 3 flushes.
 * The order of the two commits of alloc/free is protected.c's reasoning.
 */
#include "mp_internal.h"

#include <string.h>

/* The span of bytes [*lo, *hi) where a and b differ, within n bytes; 0 when
 * they are equal. */
static int diff_span(const uint8_t *a, const uint8_t *b, uint64_t n, uint64_t *lo, uint64_t *hi)
{
    if (memcmp(a, b, (size_t)n) == 0)
        return 0;
    uint64_t l = 0, h = n;
    while (a[l] == b[l])
        l++;
    while (a[h - 1] == b[h - 1])
        h--;
    *lo = l;
    *hi = h;
    return 1;
}

/* Page 0 is rewritten, as the crate does, but never by stores into the
 * mapping, which a kill could interrupt anywhere: the new page is built aside
 * and written with pwrite, one OS page at a time and only the OS pages that
 * change, and of each only the span of bytes that changes (usually the
 * selector byte: a commit's page-0 write copies a few bytes, not a page).
 * The kernel copies a write within one OS page whole even if the process is
 * killed, so with pages up to the OS page size the rewrite is all-or-nothing;
 * with larger pages the directory's CRC, in the last OS page, goes last, and
 * the states left between OS pages are the ones fmt_dir_index_recover looks
 * for. */
void commit_page0_build(const mp_pager *p, uint8_t *next)
{
    memcpy(next, pager_page_ptr(p, 0), p->page_size);
    fmt_superblock_write(next, p->log2, (uint8_t)p->minor, p->ext_always, (uint8_t)p->active);
    fmt_dir_index_write(next, p->page_size, p->dir_count, p->refs);
}

/* Writes the OS pages of page 0 that differ from next; reads only m (group.c
 * calls it with the mutex released, a copy of the map taken under it). */
int commit_page0_write(const mp_map *m, uint32_t page_size, const uint8_t *next)
{
    const uint8_t *now = m->base;
    uint64_t step = os_page_size();
    if (step > page_size)
        step = page_size;
    for (uint64_t off = 0; off < page_size; off += step) {
        uint64_t lo, hi;
        if (!diff_span(next + off, now + off, step, &lo, &hi))
            continue;
        int rc = os_write_all(m->io, m->fd, next + off + lo, (size_t)(hi - lo), off + lo);
        if (rc != MP_OK)
            return rc;
    }
    return MP_OK;
}

int pager_write_page0(mp_pager *p, int flush)
{
    commit_page0_build(p, p->scratch);
    int rc = commit_page0_write(&p->map, p->page_size, p->scratch);
    if (rc != MP_OK) {
        p->poisoned = 1;
        return rc;
    }
    p->page0_stale = 0;
    p->index_changed = 0;
    return flush ? pager_flush_page(p, 0) : MP_OK;
}

/* The upgrade's first step: page 0 says minor 3 before any commit relies on
 * the extended layout. The state it describes is unchanged, and a minor-3 file
 * whose committed page count fits v0.2 is read as v0.2, so a crash from here
 * to the commit point loses nothing; from here on the crate refuses the file
 * (its version check), where it would misread the extended layout. */
static int mark_extended(mp_pager *p)
{
    /* Bytes 5-15 in one small write, inside one sector: the minor version
     * and the mark land together. */
    uint8_t sb[MP_SB_SIZE];
    memcpy(sb, pager_page_ptr(p, 0), sizeof sb);
    fmt_superblock_write(sb, p->log2, MP_MINOR_EXTENDED, p->ext_always, sb[12]);
    int rc = os_write_all(p->map.io, p->fd, sb + 5, 11, 5);
    if (rc != MP_OK) {
        p->poisoned = 1;
        return rc;
    }
    if ((rc = pager_flush_page(p, 0)) != MP_OK)
        return rc;
    p->minor = MP_MINOR_EXTENDED;
    return MP_OK;
}

/* A commit builds each metadata page it writes aside and writes it with
 * pwrite, never with stores into the mapping. A store marks its whole
 * page-cache folio dirty, and where the kernel holds the file in large folios
 * (up to 2 MiB, after a sequential read or a large write) the flush then
 * writes all of it: measured on ext4, a one-byte store and msync wrote 2 MiB
 * to the device and took 780 us, the same change with pwrite 4 KiB and
 * 175 us. The mapping shows the new bytes at once (one page cache), and a
 * kill during the write leaves each OS page old or new. A failed write leaves
 * the in-memory state ahead of the file, so the pager takes no further commit
 * (poisoned), as after a failed flush. */
uint8_t *commit_page_from(mp_pager *p, uint64_t id)
{
    memcpy(p->commit_page, pager_page_ptr(p, id), p->page_size);
    return p->commit_page;
}

int commit_page_write(mp_pager *p, uint64_t id)
{
    int rc = os_write_all(p->map.io, p->fd, p->commit_page, p->page_size,
                          id * (uint64_t)p->page_size);
    if (rc != MP_OK)
        p->poisoned = 1;
    return rc;
}

/* Writes each changed free-map page and directory-index page of the extended
 * layout into its inactive copy, stamped with the generation of the commit
 * under way, and adds each copy to the commit's seal (free-map pages by
 * chunk, then index pages by number: the order open checks them in). The
 * committed copies are not touched, so a crash before the commit point leaves
 * the old state whole; the new copies then carry a generation above it and
 * are ignored. Nothing is flushed here: see meta_write. */
static int write_extended_pages(mp_pager *p, uint64_t gen, uint32_t *seal, uint64_t *written)
{
    int rc;
    if (p->minor < MP_MINOR_EXTENDED && (rc = mark_extended(p)) != MP_OK)
        return rc;
    uint32_t per = fmt_max_dir_blocks(p->page_size);
    if (!p->ext_committed) {
        /* The upgrade: the directory moves from page 0 to the index pages. */
        for (uint64_t k = 0; k * per < p->dir_count; k++)
            bitmap_set(p->index_dirty, k);
        bitmap_set(p->chunk_dirty, 1);
    }
    if (p->dir_count != p->dir_committed) {
        uint32_t lo = p->dir_count < p->dir_committed ? p->dir_count : p->dir_committed;
        uint32_t hi = p->dir_count > p->dir_committed ? p->dir_count : p->dir_committed;
        for (uint64_t k = lo / per; k * per < hi; k++)
            bitmap_set(p->index_dirty, k);
        bitmap_set(p->chunk_dirty, 1); /* it holds the block count */
    }
    uint64_t last = fmt_chunks_below(p->chunk_pages, p->total_pages);
    *seal = 0;
    *written = 0;
    for (uint64_t c = bitmap_find_set(p->chunk_dirty, NULL, 1, last + 1); c <= last;
         c = bitmap_find_set(p->chunk_dirty, NULL, c + 1, last + 1)) {
        bitmap_clear(p->chunk_dirty, c);
        uint32_t copy = (uint32_t)!bitmap_get(p->chunk_active, c);
        uint64_t id = fmt_free_map_page(p->chunk_pages, c, copy);
        uint8_t *page = commit_page_from(p, id);
        fmt_chunk_write(page, p->page_size, c, p->total_pages, gen, c == 1 ? p->dir_count : 0,
                        p->bits);
        *seal = fmt_seal_add(*seal, page, p->page_size);
        if ((rc = commit_page_write(p, id)) != MP_OK)
            return rc;
        (*written)++;
        p->chunk_active[c >> 6] ^= (uint64_t)1 << (c & 63);
    }
    uint64_t pages = pager_index_pages(p);
    for (uint64_t k = bitmap_find_set(p->index_dirty, NULL, 0, pages); k < pages;
         k = bitmap_find_set(p->index_dirty, NULL, k + 1, pages)) {
        bitmap_clear(p->index_dirty, k);
        uint64_t n = p->dir_count > k * per ? p->dir_count - k * per : 0;
        if (n > per)
            n = per;
        uint32_t copy = (uint32_t)!bitmap_get(p->index_active, k);
        uint64_t target = pager_index_page(p, k, copy);
        uint8_t *page = commit_page_from(p, target);
        fmt_index_write(page, p->page_size, k, gen, (uint32_t)n, p->refs + k * per);
        *seal = fmt_seal_add(*seal, page, p->page_size);
        if ((rc = commit_page_write(p, target)) != MP_OK)
            return rc;
        (*written)++;
        p->index_active[k >> 6] ^= (uint64_t)1 << (k & 63);
    }
    bitmap_clear(p->chunk_dirty, 0);
    p->dir_committed = p->dir_count;
    /* The root pages last (the seal's order): when the roots changed or the
     * commit carries a record (engine.c). */
    if (p->roots_page != 0 && (p->roots_dirty || p->rec_new)) {
        uint32_t copy = p->roots_active ^ 1u;
        uint8_t *page = commit_page_from(p, p->roots_page + copy);
        mp_meta_tail tail = {p->roots, p->rec, p->rec_new ? p->rec_n : 0};
        fmt_roots_page_write(page, p->page_size, gen, &tail);
        *seal = fmt_seal_add(*seal, page, p->page_size);
        if ((rc = commit_page_write(p, p->roots_page + copy)) != MP_OK)
            return rc;
        (*written)++;
        p->roots_active = copy;
        p->roots_dirty = 0;
    }
    return MP_OK;
}

int pager_clear_leftovers(mp_pager *p)
{
    if (!pager_extended(p))
        return MP_OK;
    uint64_t last = fmt_last_chunk(p->chunk_pages, p->total_pages);
    for (uint64_t c = 1; c <= last; c++) {
        for (uint64_t i = 0; i < MP_LAYOUT_PAGES; i++) {
            uint64_t id = fmt_chunk_start(p->chunk_pages, c) + i;
            uint8_t *page = pager_page_ptr(p, id);
            /* The generation is read first: a CRC only for the rare newer one. */
            if (mp_load_u64(page) <= p->generation ||
                !fmt_is_leftover(page, p->page_size, p->generation))
                continue;
            memset(page, 0, p->page_size);
            int rc = pager_flush_page(p, id);
            if (rc != MP_OK)
                return rc;
        }
    }
    /* Index page 0 of a file extended from creation, outside any chunk. */
    for (uint32_t w = 0; p->ext_always && w < 2; w++) {
        uint64_t id = pager_index_page(p, 0, w);
        if (!fmt_is_leftover(pager_page_ptr(p, id), p->page_size, p->generation))
            continue;
        memset(pager_page_ptr(p, id), 0, p->page_size);
        int rc = pager_flush_page(p, id);
        if (rc != MP_OK)
            return rc;
    }
    /* The root pages carry generations too. */
    for (uint64_t w = 0; p->roots_page != 0 && w < MP_ROOT_PAGES; w++) {
        uint8_t *page = pager_page_ptr(p, p->roots_page + w);
        if (!fmt_is_leftover(page, p->page_size, p->generation))
            continue;
        memset(page, 0, p->page_size);
        int rc = pager_flush_page(p, p->roots_page + w);
        if (rc != MP_OK)
            return rc;
    }
    return MP_OK;
}

/* Writes the in-memory state into the inactive copy, with generation + 1,
 * and makes it the active one in memory; *f says what the commit point's
 * flush must cover (commit_flush). Nothing is flushed here: group.c runs the
 * flush with the mutex released, so the state is already the new one while
 * it is in flight (a free made meanwhile is pinned at the new generation). */
int commit_write_copy(mp_pager *p, mp_flush *f)
{
    uint32_t target = p->active ^ 1u;
    int rc;
    uint32_t seal = 0;
    uint64_t written = 0;
    int extended = pager_extended(p);
    if (extended && (rc = write_extended_pages(p, p->generation + 1, &seal, &written)) != MP_OK)
        return rc;
    /* A reader that sees this copy must see the pages it selects. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    /* The record (engine.c) is this commit's: data pages it vouches for. */
    mp_meta_tail tail = {p->roots, p->rec, p->rec_new ? p->rec_n : 0};
    fmt_meta_write(commit_page_from(p, 1 + (uint64_t)target), p->page_size, p->total_pages,
                   p->generation + 1,
                   extended ? fmt_meta_ext_word(seal, p->roots_page) : p->free_count, p->bits,
                   extended ? NULL : &tail);
    if ((rc = commit_page_write(p, 1 + (uint64_t)target)) != MP_OK)
        return rc;
    f->whole_file = written > 0 || tail.n > 0;
    f->offset = (1 + (uint64_t)target) * p->page_size;
    f->len = p->page_size;
    p->active = target;
    p->generation++;
    p->meta_unwritten = 0;
    p->rec_n = tail.n;
    p->rec_new = 0;
    p->ext_committed = pager_extended(p);
    /* Page 0 names a copy only for the crate, which cannot read an extended
     * file anyway. */
    p->page0_stale = !pager_extended(p);
    return MP_OK;
}

/* The commit point: once this flush returns, open finds the new state.
 * With free-map or index pages written too, one fdatasync makes all of them
 * durable at once: until it returns any of them may be on disk and any not,
 * and the seal is what lets open tell (a copy whose seal does not match the
 * pages it selects is discarded, and the older copy, whose pages this commit
 * did not touch, is used). fdatasync also writes back data pages dirtied
 * through views since the last flush. Reads only m and f: group.c calls it
 * with a copy of the map taken under the mutex, and the mutex released. */
int commit_flush(const mp_map *m, const mp_flush *f)
{
    return f->whole_file ? os_sync_file(m) : os_flush_range(m, f->offset, f->len);
}

/* "none" commits name the pages their transactions wrote without flushing
 * them (commit_data): before a durable state names them, they are written
 * back, as sync() does, or a crash could show a root over stale content. */
static int flush_unwritten_data(mp_pager *p)
{
    int rc = os_flush_range(&p->map, 0, p->total_pages * (uint64_t)p->page_size);
    if (rc == MP_OK)
        rc = os_sync_file(&p->map);
    if (rc != MP_OK)
        p->poisoned = 1;
    else
        p->data_unwritten = 0;
    return rc;
}

/* The serial commit: write the copy, then flush it with the mutex held. */
static int meta_write(mp_pager *p, int flush)
{
    mp_flush f;
    int rc;
    if (flush && p->data_unwritten && (rc = flush_unwritten_data(p)) != MP_OK)
        return rc;
    rc = commit_write_copy(p, &f);
    if (rc != MP_OK || !flush)
        return rc;
    if ((rc = commit_flush(&p->map, &f)) != MP_OK)
        p->poisoned = 1;
    return rc;
}

/* The frees of the commit just made durable are released; those made while
 * its flush was in flight (group.c's later map and pins) stay pending for the
 * next commit. */
void commit_release_pending(mp_pager *p)
{
    mp_lock *g = &p->lk;
    if (p->pending_count == 0)
        return;
    /* Durable now; readers.c releases the pages no live reader can see. */
    if (readers_settle(p, g->later_pins))
        return;
    for (uint64_t w = p->pending_lo; w <= p->pending_hi; w++) {
        uint64_t keep = g->later_count ? g->later[w] : 0;
        if (p->pending[w] == keep)
            continue;
        p->pending[w] = keep;
        summary_update(&p->sum, w, p->bits[w] | keep);
    }
    p->pending_count = g->later_count;
    p->pending_lo = g->later_lo;
    p->pending_hi = g->later_hi;
    /* Allocation skipped those pages and moved its hint past them. */
    p->hint = MP_RESERVED_PAGES;
}

static void pending_clear(mp_pager *p)
{
    commit_release_pending(p);
}

/* Commits every change made since the last commit: allocation changes
 * (p->changed) and directory changes (dirty blocks, a changed index). */
/* Staged copies a transaction committed must be durable before any directory
 * copy names them. One msync covers them all: only the dirty pages in its
 * range are written. */
static int flush_staged(mp_pager *p)
{
    if (p->staged_hi < p->staged_lo)
        return MP_OK;
    int rc = os_flush_range(&p->map, p->staged_lo * (uint64_t)p->page_size,
                            (p->staged_hi - p->staged_lo + 1) * (uint64_t)p->page_size);
    if (rc != MP_OK) {
        p->poisoned = 1;
        return rc;
    }
    pager_staged_forget(p);
    return MP_OK;
}

/* Staged copies and the new directory copies (all written with pwrite), made
 * durable before the commit point names them. Neither is named by anything
 * until then, so their order does not matter: v0.2 "compat" flushes each, as
 * the crate does (an msync of a page writes no other page); the other modes
 * and the extended layout make them durable together with one fdatasync. */
static int flush_dir_changes(mp_pager *p, int dirs)
{
    int staged = p->staged_hi >= p->staged_lo;
    uint64_t pages = staged ? p->staged_hi - p->staged_lo + 1 : 0;
    for (uint32_t i = 0; dirs && i < p->dir_count && pages < 2; i++)
        pages += p->dirs[i].dirty;
    /* One page: its msync is the cheapest flush (fdatasync also writes every
     * data page dirtied through views). */
    if (pages < 2 || (p->durability == MP_DURABILITY_COMPAT && !pager_extended(p))) {
        int rc = flush_staged(p);
        if (rc == MP_OK && dirs)
            rc = dir_write_dirty(p, 1);
        return rc;
    }
    if (dirs) {
        int rc = dir_write_dirty(p, 0);
        if (rc != MP_OK)
            return rc;
    }
    if (!staged && !dirs)
        return MP_OK;
    int rc = os_sync_file(&p->map);
    if (rc != MP_OK) {
        p->poisoned = 1;
        return rc;
    }
    pager_staged_forget(p);
    return MP_OK;
}

/* The transaction's dirty pages (engine.c), before the commit point: carried
 * in the metadata copy's record when they fit and the commit has a single
 * commit point (`record`), so one fdatasync makes data and state durable;
 * otherwise flushed first, so no committed state points at data that did not
 * reach the disk. In "none" mode nothing is flushed per commit: sync() writes
 * the data back before the state. */
static int commit_data(mp_pager *p, int record)
{
    if (p->dirty_count == 0)
        return MP_OK;
    if (p->durability == MP_DURABILITY_NONE) {
        p->data_unwritten = 1;
        txn_forget_dirty(p);
        return MP_OK;
    }
    if (record && txn_build_record(p))
        return MP_OK;
    return txn_flush_dirty(p);
}

/* The extended layout has one commit point, the metadata copy, and in
 * "compat" and "fast" one flush: the record in the root page (engine.c)
 * carries the CRC of every page the commit wrote that no generation marks
 * (dirty data pages, staged protected copies, new directory copies), the
 * seal covers the root page, and those pages, the index and free-map pages
 * and the metadata copy go out under the same fdatasync. Open rejects a copy
 * whose recorded pages do not all match, for the older state, which none of
 * them overwrote (new pages, or inactive copies). Pages that do not fit the
 * record are flushed first (2 flushes), as in "none" (at sync()). So a
 * protected alloc, free or write, or a whole transaction, is one atomic
 * commit, and a protected write or a transaction one flush. */
static int commit_extended(mp_pager *p)
{
    int rc;
    int dirs = dir_any_dirty(p);
    int dir_change = dirs || p->index_changed || p->dir_count != p->dir_committed;
    if (!dir_change && !p->changed && p->dirty_count == 0)
        return MP_OK;
    int built = 0;
    if (p->durability != MP_DURABILITY_NONE && (rc = txn_build_ext_record(p, &built)) != MP_OK)
        return rc;
    if (!built && (rc = commit_data(p, 0)) != MP_OK)
        return rc;
    if (!dir_change && !p->changed && !built)
        return MP_OK;
    if (!dir_change && p->durability == MP_DURABILITY_NONE) {
        p->changed = 0;
        p->meta_unwritten = 1;
        return MP_OK;
    }
    if (!dir_change && group_eligible(p))
        return group_commit(p);
    if (!built && (rc = flush_dir_changes(p, dirs)) != MP_OK)
        return rc;
    dir_flip_dirty(p);
    p->changed = 0;
    p->index_changed = 0;
    if ((rc = meta_write(p, 1)) != MP_OK)
        return rc;
    pending_clear(p);
    return MP_OK;
}

static int commit_now(mp_pager *p, int order)
{
    if (pager_extended(p))
        return commit_extended(p);
    int rc;
    int dirs = dir_any_dirty(p);
    int dir_change = dirs || p->index_changed;
    int meta_change = p->changed || p->meta_unwritten;
    if (!dir_change) {
        if (!p->changed && p->dirty_count == 0)
            return MP_OK;
        /* Data pages and the allocation state: one commit point, so the
         * record can carry the data. */
        if ((rc = commit_data(p, 1)) != MP_OK)
            return rc;
        if (!p->changed && !p->rec_new)
            return MP_OK;
        if (group_eligible(p))
            return group_commit(p);
        p->changed = 0;
        if (p->durability == MP_DURABILITY_NONE) {
            p->meta_unwritten = 1;
            return MP_OK;
        }
        if ((rc = meta_write(p, 1)) != MP_OK)
            return rc;
        pending_clear(p);
        /* A file created in the extended layout is never read by the crate:
         * page 0 needs no rewrite for it. */
        if (p->durability == MP_DURABILITY_COMPAT && p->minor < MP_MINOR_EXTENDED)
            return pager_write_page0(p, 1);
        return MP_OK;
    }
    if ((rc = commit_data(p, 0)) != MP_OK)
        return rc;
    /* Staged copies, then each new directory copy, must be durable before
     * page 0 names them. */
    if ((rc = flush_dir_changes(p, dirs)) != MP_OK)
        return rc;
    p->changed = 0;
    if (order == MP_ORDER_META_FIRST && meta_change && (rc = meta_write(p, 1)) != MP_OK)
        return rc;
    dir_flip_dirty(p);
    /* The directory's commit point; it names the active metadata copy too. */
    if ((rc = pager_write_page0(p, 1)) != MP_OK)
        return rc;
    if (order == MP_ORDER_DIR_FIRST && meta_change) {
        if ((rc = meta_write(p, 1)) != MP_OK)
            return rc;
        if (p->durability == MP_DURABILITY_COMPAT && (rc = pager_write_page0(p, 1)) != MP_OK)
            return rc;
    }
    pending_clear(p);
    return MP_OK;
}

int pager_write_state(mp_pager *p)
{
    group_wait_idle(p);
    int rc = meta_write(p, 1);
    if (rc == MP_OK && p->page0_stale && p->minor < MP_MINOR_EXTENDED)
        rc = pager_write_page0(p, 1);
    return rc;
}

int pager_commit(mp_pager *p, int order)
{
    if (p->txn_depth > 0)
        return MP_OK;
    /* A commit that is not a group's waits for the group's flush, and writes
     * the changes waiting for one first (group.c). */
    if (!group_eligible(p))
        group_wait_idle(p);
    int rc = commit_now(p, order);
    /* Check builds: every committed state passes the invariants (check.c);
     * while other threads' changes wait for a flush, the last one checks. */
    if (rc != MP_OK || p->lk.change_seq != p->lk.durable_seq || p->lk.flushing)
        return rc;
    return pager_check(p);
}

int pager_settle_deferred(mp_pager *p)
{
    int rc;
    group_wait_idle(p);
    if (p->meta_unwritten) {
        /* The deferred state of "none" mode: write it and flush it (the
         * commit point), then page 0 below. */
        if ((rc = meta_write(p, 1)) != MP_OK)
            return rc;
    }
    if (p->page0_stale && (rc = pager_write_page0(p, 1)) != MP_OK)
        return rc;
    pending_clear(p);
    return MP_OK;
}

int mp_pager_sync_locked(mp_pager *p)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (p->txn_depth > 0)
        return MP_EINVALID_ARGUMENT;
    /* msync writes back the data pages; the fsync after it covers what msync
     * does not promise everywhere (file metadata, the drive's cache on macOS). */
    if ((rc = flush_unwritten_data(p)) != MP_OK)
        return rc;
    /* Data first, then the state that may point at it. */
    return pager_settle_deferred(p);
}

int mp_pager_finish_locked(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    if (p->read_only || p->no_io || p->poisoned)
        return MP_OK;
    if (p->txn_depth > 0) {
        int rc = mp_txn_abort(p);
        if (rc != MP_OK)
            return rc;
    }
    return pager_settle_deferred(p);
}

/* For a fork child: never write again, and drop this process's references to
 * the open file description (its descriptor and its mapping), so the writer
 * lock, which belongs to that description, goes away when the parent closes,
 * whatever the child does. Views the child holds keep reading the file, from
 * a read-only mapping of a new description (os.c); a reader's mapping is
 * read-only and lockless already, and is kept. */
int pager_forget_locked(mp_pager *p)
{
    if (p->no_io || p->lk.closed)
        return MP_OK; /* forgotten at an earlier fork, or closed: nothing to let go */
    p->no_io = 1;
    p->poisoned = 1;
    readers_forget(p, 0);
    if (!p->read_only)
        (void)os_map_share_read_only(&p->map);
    if (p->fd >= 0) {
        (void)os_close_file(p->fd);
        p->fd = p->map.fd = -1;
    }
    return MP_OK;
}
