/*
 * check.c - the pager's invariants, executable (pager_check).
 *
 * Owns: one function that checks, from the in-memory state alone, what every
 * other file promises between calls, in the spirit of SQLite's
 * assert_pager_state and LMDB's mdb_audit. It is compiled in when
 * MAPPEDPAGES_CHECK is defined (build_ffi.py defines it for the sanitizer
 * build, fuzz/run.sh for the fuzz build) and runs after every commit outside a
 * transaction (commit.c). A violation never aborts: the pager is poisoned and
 * the call returns MP_EINTERNAL, so a test or fuzz input that breaks an
 * invariant fails loudly at the commit that broke it.
 *
 * Invariants checked (they hold in every durability mode and both layouts,
 * outside a transaction, after a successful commit):
 *   - free_count is total_pages minus the pages set in bits[] below it, and no
 *     bit of bits[], system[] or pending[] is set at or past total_pages;
 *   - pages 0-2 and every layout page of the chunks below total_pages are set;
 *   - system[] is within bits[] and counts system_count pages; pending[] is
 *     disjoint from bits[] and counts pending_count pages;
 *   - the summary's first level has a bit set exactly for the full words of
 *     bits | pending (writers);
 *   - the directory: each block's two pages and each live entry's two backing
 *     pages are system pages, and no page is owned twice; protected_count is
 *     the number of live entries;
 *   - roots and the commit record where the layout keeps them: non-zero roots
 *     only in a v0.2 state whose bitmap leaves the tail room, or in an
 *     extended state with root pages; the record within its room; the root
 *     pages (extended states only) a pair of system pages at a multiple of 4
 *     that nothing else owns; in a file extended from creation, index page
 *     0's pages 6-7 system pages that nothing else owns either.
 *   - the pager's flags form a valid combination for its named state
 *     (pager_state; the table and which flags each mode and layout allows
 *     after a commit are in mp_internal.h);
 *   - a commit runs with the pager's mutex held, on a pager not closed
 *     (lock.c: state is only changed with the mutex held).
 * Not checked here, since it is false by design in some modes: that bits[]
 * equals the committed copy on disk ("none" defers it, a transaction is ahead
 * of it) and that page 0 names `active` ("fast" and the extended layout
 * update page 0 lazily).
 */
#include "mp_internal.h"

#include <stdlib.h>

#ifdef MAPPEDPAGES_CHECK

static int bits_past(const uint64_t *bits, uint64_t total, uint64_t words)
{
    return total < words * 64 && bitmap_find_set(bits, NULL, total, words * 64) < words * 64;
}

static int check_counts(const mp_pager *p)
{
    uint64_t total = p->total_pages;
    uint64_t words = p->words_used;
    if (total == 0 || bitmap_words(total) > words)
        return 0;
    if (p->free_count != total - bitmap_count_set(p->bits, total))
        return 0;
    if (bits_past(p->bits, total, words) || bits_past(p->system, total, words) ||
        bits_past(p->pending, total, words))
        return 0;
    if (bitmap_count_set(p->system, total) != p->system_count ||
        bitmap_count_set(p->pending, total) != p->pending_count)
        return 0;
    for (uint64_t w = 0; w < words; w++) {
        if ((p->system[w] & ~p->bits[w]) != 0 || (p->pending[w] & p->bits[w]) != 0)
            return 0;
    }
    return 1;
}

static int check_layout_pages(const mp_pager *p)
{
    for (uint64_t id = 0; id < MP_RESERVED_PAGES; id++) {
        if (!bitmap_get(p->bits, id))
            return 0;
    }
    uint64_t chunks = fmt_chunks_below(p->chunk_pages, p->total_pages);
    for (uint64_t c = 1; c <= chunks; c++) {
        for (uint32_t i = 0; i < MP_LAYOUT_PAGES; i++) {
            uint64_t id = fmt_chunk_start(p->chunk_pages, c) + i;
            if (id < p->total_pages && !bitmap_get(p->bits, id))
                return 0;
        }
    }
    return 1;
}

static int check_summary(const mp_pager *p)
{
    if (!p->sum.mem)
        return 1;
    for (uint64_t w = 0; w < p->words_used && w < p->sum.map_words; w++) {
        int full = (p->bits[w] | p->pending[w]) == ~(uint64_t)0;
        if (bitmap_get(p->sum.lvl[0], w) != full)
            return 0;
    }
    return 1;
}

/* Marks id as owned in seen[]; fails if it is owned already or is no system
 * page of the file. */
static int own(const mp_pager *p, uint64_t *seen, uint64_t id)
{
    if (id >= p->total_pages || !bitmap_get(p->system, id) || bitmap_get(seen, id))
        return 0;
    bitmap_set(seen, id);
    return 1;
}

static int check_block(const mp_pager *p, uint32_t b, uint64_t *seen, uint64_t *live)
{
    const mp_dir_block *blk = &p->dirs[b];
    if (!own(p, seen, p->refs[b].page_a) || !own(p, seen, p->refs[b].page_b))
        return 0;
    if (!blk->entries)
        return 1;
    for (uint32_t i = 0; i < p->epp; i++) {
        const mp_dir_entry *e = &blk->entries[i];
        if (!e->in_use)
            continue;
        if (!own(p, seen, e->page_a) || !own(p, seen, e->page_b))
            return 0;
        (*live)++;
    }
    return 1;
}

/* Roots and the commit record sit where the layout keeps them: beside a v0.2
 * bitmap that leaves them room (the metadata tail), or, past v0.2's cap, in
 * the root pages: a pair of system pages at a multiple of 4 (claimed in
 * seen[], so no directory block or entry may own them too). */
static int check_roots(const mp_pager *p, uint64_t *seen)
{
    int any = 0;
    for (uint32_t r = 0; r < MP_ROOTS; r++)
        any |= p->roots[r] != 0;
    int extended = pager_extended(p);
    if (any && !(extended ? p->roots_page != 0 : fmt_meta_has_tail(p->page_size, p->total_pages)))
        return 0;
    uint64_t room = extended ? fmt_roots_page_room(p->page_size)
                             : fmt_meta_record_room(p->page_size, p->total_pages);
    if (!p->meta_unwritten && p->rec_n > room)
        return 0;
    if (p->roots_page == 0)
        return 1;
    if (!extended || p->roots_page % 4 != 0 || p->roots_active > 1)
        return 0;
    for (uint64_t i = 0; i < MP_ROOT_PAGES; i++)
        if (pager_is_layout_page(p, p->roots_page + i) || !own(p, seen, p->roots_page + i))
            return 0;
    return 1;
}

static int check_directory(const mp_pager *p)
{
    uint64_t *seen = calloc((size_t)p->words_used, sizeof(uint64_t));
    if (!seen)
        return 1; /* no memory to check with is not a violation */
    /* Index page 0 of a file extended from creation: its own pair. */
    int index0 = !p->ext_always || (own(p, seen, pager_index_page(p, 0, 0)) &&
                                    own(p, seen, pager_index_page(p, 0, 1)));
    if (!index0 || !check_roots(p, seen) || (p->dir_count == 0 && p->protected_count != 0)) {
        free(seen);
        return 0;
    }
    uint64_t live = 0;
    int ok = 1;
    for (uint32_t b = 0; ok && b < p->dir_count; b++)
        ok = check_block(p, b, seen, &live);
    free(seen);
    return ok && live == p->protected_count;
}

/* The flags form the combination the named state allows (the table in
 * mp_internal.h). Runs where pager_check does: outside a transaction, once a
 * commit returned. */
static int check_state(const mp_pager *p)
{
    switch (pager_state(p)) {
    case MP_PAGER_FORGOTTEN:
        return p->poisoned;
    case MP_PAGER_ERROR:
        return 1;
    case MP_PAGER_READER:
        return p->txn_depth == 0 && !p->sum.mem && !p->meta_unwritten && p->pending_count == 0;
    case MP_PAGER_WRITER_TXN:
        return p->sum.mem != NULL;
    default:
        break;
    }
    /* WRITER_DEFERRED and WRITER_IDLE: what a commit leaves. */
    if (!p->sum.mem || p->changed)
        return 0;
    /* Outside "none" a commit leaves no frees pending, but those pinned for
     * live readers (pins.c), which stay pending until the readers move on. */
    uint64_t pinned = p->rd ? p->rd->tail - p->rd->head : 0;
    if (p->durability != MP_DURABILITY_NONE &&
        (p->meta_unwritten || p->pending_count > pinned))
        return 0;
    /* "compat" keeps page 0 current for the crate, in files the crate reads:
     * an extended file (or one created in the extended layout) has none. */
    int crate_file = p->minor == MP_MINOR_V02 && !pager_extended(p);
    return !(p->durability == MP_DURABILITY_COMPAT && p->page0_stale && crate_file);
}

int pager_check(mp_pager *p)
{
    if (!check_state(p) || p->lk.depth == 0 || p->lk.closed) {
        p->poisoned = 1;
        return MP_EINTERNAL;
    }
    if (p->read_only || p->no_io || p->poisoned)
        return MP_OK;
    if (check_counts(p) && check_layout_pages(p) && check_summary(p) && check_directory(p))
        return MP_OK;
    p->poisoned = 1;
    return MP_EINTERNAL;
}

#endif /* MAPPEDPAGES_CHECK */
