/*
 * alloc.c - allocation and freeing of regular pages.
 *
 * Owns: the lowest-free-page search (through the summary), the public alloc,
 * free and listing calls, and the rule that a page freed by a commit that is
 * not durable yet is not handed out again (pending[]).
 *
 * Invariants: a page handed out is below total_pages, not a layout page, not
 * a system page and not pending; every call validates the caller's ids from a
 * copy in core-owned memory before changing anything, so a bad id changes
 * nothing.
 */
#include "mp_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Lowest page at or above start that is free and not pending; the summary
 * makes this a few word reads however full the file is. */
static uint64_t find_allocatable(const mp_pager *p, uint64_t start)
{
    return summary_find_free(&p->sum, p->bits, p->pending, start, p->total_pages);
}

int pager_take_lowest(mp_pager *p, uint64_t *out_id)
{
    int rc = pager_ensure_free(p, 1);
    if (rc != MP_OK)
        return rc;
    uint64_t id = find_allocatable(p, p->hint);
    if (id >= p->total_pages) {
        /* The hint is only a lower bound; fall back to a full search. */
        id = find_allocatable(p, MP_RESERVED_PAGES);
        if (id >= p->total_pages)
            return MP_ECORRUPT_METADATA;
    }
    /* A punched page gets its blocks back first (space.c). */
    if ((rc = space_before_take(p, id)) != MP_OK)
        return rc;
    pager_bit_take(p, id);
    p->free_count--;
    p->hint = id + 1;
    p->changed = 1;
    *out_id = id;
    return MP_OK;
}

void pager_release_bit(mp_pager *p, uint64_t id)
{
    bitmap_clear(p->bits, id);
    p->free_count++;
    p->changed = 1;
    /* With a reader table the page is also held back for readers whose
     * snapshot has it allocated (readers.c). */
    int pinned = readers_pin(p, id);
    /* Every free of a writer waits for its commit: in "compat" and "fast" the
     * commit's flush may run with the mutex released (group.c). */
    if (!p->read_only) {
        /* Until the free is durable the page belongs to the durable state; a
         * new owner's writes must not reach it before then. */
        if (p->lk.flushing)
            group_note_later(p, id, pinned); /* not in the flush in flight */
        if (!bitmap_get(p->pending, id)) {
            bitmap_set(p->pending, id);
            uint64_t w = id >> 6;
            if (p->pending_count == 0 || w < p->pending_lo)
                p->pending_lo = w;
            if (p->pending_count == 0 || w > p->pending_hi)
                p->pending_hi = w;
            p->pending_count++;
        }
    }
    pager_map_changed(p, id);
    if (id < p->hint)
        p->hint = id;
}

/* ------------------------------------------------------------ alloc/free */

static void zero_pages(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        memset(pager_page_ptr(p, ids[i]), 0, p->page_size);
}

int mp_pager_alloc_locked(mp_pager *p, int zero, uint64_t *out_id)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (!out_id)
        return MP_EINVALID_ARGUMENT;
    uint64_t id;
    if ((rc = pager_take_lowest(p, &id)) != MP_OK)
        return rc;
    if (zero)
        zero_pages(p, &id, 1);
    if ((rc = pager_commit(p, MP_ORDER_DIR_FIRST)) != MP_OK)
        return rc;
    *out_id = id;
    return MP_OK;
}

/* A private array of n ids, or NULL when n ids do not fit in memory. */
static uint64_t *id_list_new(uint64_t n)
{
    if (n > SIZE_MAX / sizeof(uint64_t))
        return NULL;
    return malloc((size_t)n * sizeof(uint64_t));
}

uint64_t *pager_ids_copy(const uint64_t *caller_ids, uint64_t n)
{
    uint64_t *ids = id_list_new(n);
    if (ids)
        memcpy(ids, caller_ids, (size_t)n * sizeof(uint64_t));
    return ids;
}

/* The chunk of the last id looked at: a run of ids in one chunk costs one
 * division, not one per id (ids from alloc_bulk come sorted). */
typedef struct {
    uint64_t start, end, chunk;
} chunk_cursor;

static uint64_t cursor_chunk(chunk_cursor *c, uint64_t chunk_pages, uint64_t id)
{
    if (id < c->start || id >= c->end) {
        c->chunk = id / chunk_pages;
        c->start = c->chunk * chunk_pages;
        c->end = c->start + chunk_pages;
    }
    return c->chunk;
}

/* Takes the free pages of free page id's word, from id up, into ids[*i..n):
 * the summary says where a free page is, and the rest of its word is taken
 * with it, so a run of free pages costs a few operations per word. A
 * punched page gets its blocks back first (space.c); if that fails, the pages
 * taken so far are in bits[] and ids[0..*i) for the caller to give back. */
static int take_word(mp_pager *p, uint64_t id, uint64_t *ids, uint64_t n, uint64_t *i,
                     chunk_cursor *cur)
{
    uint64_t w = id >> 6, take = 0, dirty = UINT64_MAX;
    uint64_t avail = ~(p->bits[w] | p->pending[w]) & (~(uint64_t)0 << (id & 63));
    if ((w + 1) * 64 > p->total_pages)
        avail &= ((uint64_t)1 << (p->total_pages & 63)) - 1;
    int rc = MP_OK;
    for (; avail && *i < n; avail &= avail - 1) {
        uint64_t got = (w << 6) + (uint64_t)__builtin_ctzll(avail);
        if ((rc = space_before_take(p, got)) != MP_OK)
            break;
        take |= (uint64_t)1 << (got & 63);
        ids[(*i)++] = got;
        uint64_t c = cursor_chunk(cur, p->chunk_pages, got);
        if (c != dirty)
            bitmap_set(p->chunk_dirty, dirty = c);
    }
    p->bits[w] |= take;
    if (p->sum.mem)
        summary_update(&p->sum, w, p->bits[w] | p->pending[w]);
    return rc;
}

/* Used pages (allocated or pending) of word w. */
static uint64_t used_word(const mp_pager *p, uint64_t w)
{
    return p->bits[w] | p->pending[w];
}

/* First page at or above id, below limit, that allocation may not hand out:
 * the end of the free run that holds id, looked at no further than limit. */
static uint64_t run_end(const mp_pager *p, uint64_t id, uint64_t limit)
{
    uint64_t w = id >> 6, last = (limit - 1) >> 6;
    uint64_t used = used_word(p, w) & (~(uint64_t)0 << (id & 63));
    while (!used && w < last)
        used = used_word(p, ++w);
    uint64_t end = used ? (w << 6) + (uint64_t)__builtin_ctzll(used) : limit;
    return end < limit ? end : limit;
}

/* First page of the free run that holds id (pages 0-2 are never free). */
static uint64_t run_start(const mp_pager *p, uint64_t id)
{
    uint64_t w = id >> 6;
    uint64_t used = (id & 63) ? used_word(p, w) & (((uint64_t)1 << (id & 63)) - 1) : 0;
    while (!used && w > 0)
        used = used_word(p, --w);
    return used ? (w << 6) + 64 - (uint64_t)__builtin_clzll(used) : 0;
}

/* The aligned block size b that every run of min_run pages contains whole:
 * the largest power of two (at most 64) with 2b - 1 <= min_run. */
static unsigned run_block(uint64_t min_run)
{
    unsigned b = 1;
    while (b < 64 && 4 * (uint64_t)b - 1 <= min_run)
        b *= 2;
    return b;
}

/* Bits of x that start an aligned block of b set bits. */
static uint64_t aligned_blocks(uint64_t x, unsigned b)
{
    static const uint64_t starts[7] = {
        ~(uint64_t)0,          0x5555555555555555ull, 0x1111111111111111ull,
        0x0101010101010101ull, 0x0001000100010001ull, 0x0000000100000001ull,
        1,
    };
    unsigned k = 0;
    for (unsigned s = 1; s < b; s <<= 1, k++)
        x &= x >> s;
    return x & starts[k];
}

/* The next free run at or above at that serves min_run pages: at least
 * min_run long, or the last run of the file (a growth extends it). Its
 * first page goes to *start and its end, looked at no further than
 * start + reach (reach >= min_run), to *end; 0 when there is none. Words are
 * tested for a whole aligned block, which every such run holds, so a file of
 * short holes costs a few operations per word that has free pages, and the
 * summary skips the full ones. */
static int next_run(const mp_pager *p, uint64_t at, uint64_t min_run, uint64_t reach,
                    uint64_t *start, uint64_t *end)
{
    uint64_t total = p->total_pages, from = at;
    unsigned b = run_block(min_run);
    while (at < total) {
        uint64_t id = find_allocatable(p, at);
        if (id >= total)
            break;
        uint64_t w = id >> 6;
        uint64_t avail = ~used_word(p, w) & (~(uint64_t)0 << (id & 63));
        if ((w + 1) * 64 > total)
            avail &= ((uint64_t)1 << (total & 63)) - 1;
        uint64_t blocks = aligned_blocks(avail, b);
        if (!blocks) {
            at = (w + 1) << 6;
            continue;
        }
        uint64_t s = run_start(p, (w << 6) + (uint64_t)__builtin_ctzll(blocks));
        uint64_t limit = total - s > reach ? s + reach : total;
        uint64_t e = run_end(p, s, limit);
        if (e - s >= min_run || e == total) {
            *start = s;
            *end = e;
            return 1;
        }
        at = e;
    }
    /* The last run holds no whole block: it serves all the same. */
    if (total > from && !bitmap_get(p->bits, total - 1) && !bitmap_get(p->pending, total - 1)) {
        uint64_t s = run_start(p, total - 1);
        if (s >= from) {
            *start = s;
            *end = total;
            return 1;
        }
    }
    return 0;
}

/* Free pages in runs that serve min_run, counted up to n. */
static uint64_t run_pages(const mp_pager *p, uint64_t min_run, uint64_t n)
{
    uint64_t count = 0, s, e;
    for (uint64_t at = MP_RESERVED_PAGES; count < n; at = e) {
        uint64_t want = n - count;
        if (!next_run(p, at, min_run, want > min_run ? want : min_run, &s, &e))
            break;
        count += e - s < want ? e - s : want;
    }
    return count;
}

/* Makes room for n pages in runs of min_run: after pager_ensure_free, grows
 * the file by what the runs lack (the new pages extend the last run). A file
 * that cannot grow so far (max_pages, or a growth that failed and left the
 * pager usable: a full disk) is left as it is: runs are a preference, and the
 * pages then come from shorter runs too. */
static int ensure_runs(mp_pager *p, uint64_t n, uint64_t min_run, int grow_for_runs)
{
    int rc = pager_ensure_free(p, n);
    if (rc != MP_OK || min_run <= 1 || !grow_for_runs)
        return rc;
    uint64_t have = run_pages(p, min_run, n);
    if (have >= n || p->total_pages + (n - have) > p->max_pages)
        return MP_OK;
    rc = pager_grow_at_least(p, p->total_pages + (n - have));
    return rc != MP_OK && p->poisoned ? rc : MP_OK;
}

/* Takes pages [id, id + count), all allocatable, into ids[*i..). */
static int take_run(mp_pager *p, uint64_t id, uint64_t count, uint64_t *ids, uint64_t *i,
                    chunk_cursor *cur)
{
    uint64_t stop = *i + count;
    int rc = MP_OK;
    while (*i < stop && rc == MP_OK) {
        rc = take_word(p, id, ids, stop, i, cur);
        id = (id | 63) + 1;
    }
    return rc;
}

static int id_order(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Takes n pages into ids: first from free runs that serve min_run, lowest
 * first, then (min_run 1, or a file that could not grow for the runs) the
 * lowest free pages. On failure the pages taken are given back. */
static int take_pages(mp_pager *p, uint64_t n, uint64_t min_run, uint64_t *ids)
{
    uint64_t i = 0, at = MP_RESERVED_PAGES;
    chunk_cursor cur = {1, 0, 0};
    int rc = MP_OK;
    for (uint64_t s, e; min_run > 1 && i < n && rc == MP_OK; at = e) {
        uint64_t want = n - i;
        if (!next_run(p, at, min_run, want > min_run ? want : min_run, &s, &e))
            break;
        rc = take_run(p, s, e - s < want ? e - s : want, ids, &i, &cur);
    }
    uint64_t from_runs = i;
    for (at = p->hint; i < n && rc == MP_OK;) {
        uint64_t id = find_allocatable(p, at);
        if (id >= p->total_pages) {
            /* The hint is only a lower bound; ensure_free counted the pages. */
            id = find_allocatable(p, MP_RESERVED_PAGES);
            if (id >= p->total_pages) {
                rc = MP_ECORRUPT_METADATA;
                break;
            }
        }
        if ((rc = take_word(p, id, ids, n, &i, &cur)) == MP_OK)
            at = ids[i - 1] + 1; /* (a word taken without failing gave one id at least) */
    }
    if (rc != MP_OK) {
        for (uint64_t j = 0; j < i; j++)
            pager_bit_give(p, ids[j]);
        return rc;
    }
    /* Taking the lowest free pages moves the hint past them; runs leave it. */
    if (min_run <= 1)
        p->hint = ids[n - 1] + 1;
    /* Pages of short runs taken after the runs may lie below them. */
    if (from_runs > 0 && from_runs < n)
        qsort(ids, (size_t)n, sizeof *ids, id_order);
    return MP_OK;
}

int pager_alloc_pages(mp_pager *p, uint64_t n, uint64_t min_run, int grow_for_runs, int zero,
                      uint64_t *out_ids)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!out_ids || min_run == 0)
        return MP_EINVALID_ARGUMENT;
    if (n > p->max_pages)
        return MP_EFILE_FULL;
    /* The ids live in the core's own list until the commit is done: the
     * caller's buffer may change under us (another thread; or it is a view
     * of a page this very call hands out and zeroes), so nothing is ever read
     * back from it. It is written last, only on success. */
    uint64_t *ids = id_list_new(n);
    if (!ids)
        return MP_ENO_MEMORY;
    /* All the growth happens first, so nothing below can fail before the
     * commit: either every page is taken in one commit or none is. */
    if ((rc = ensure_runs(p, n, min_run, grow_for_runs)) != MP_OK ||
        (rc = take_pages(p, n, min_run, ids)) != MP_OK) {
        free(ids);
        return rc;
    }
    p->free_count -= n;
    p->changed = 1;
    if (zero)
        zero_pages(p, ids, n);
    rc = pager_commit(p, MP_ORDER_DIR_FIRST);
    if (rc == MP_OK)
        memcpy(out_ids, ids, (size_t)n * sizeof(uint64_t));
    free(ids);
    return rc;
}

int mp_pager_alloc_runs_locked(mp_pager *p, uint64_t n, uint64_t min_run, int zero,
                               uint64_t *out_ids)
{
    return pager_alloc_pages(p, n, min_run, 1, zero, out_ids);
}

int mp_pager_alloc_bulk_locked(mp_pager *p, uint64_t n, int zero, uint64_t *out_ids)
{
    return mp_pager_alloc_runs_locked(p, n, 1, zero, out_ids);
}

int pager_check_page_id(const mp_pager *p, uint64_t id)
{
    if (id < MP_RESERVED_PAGES)
        return MP_ERESERVED_PAGE; /* (before the bounds: the order page() reports in) */
    if (id >= p->total_pages)
        return MP_EOUT_OF_BOUNDS;
    return pager_is_layout_page(p, id) || bitmap_get(p->system, id) ? MP_ERESERVED_PAGE : MP_OK;
}

/* Why a page may not be freed, in the order the checks apply. */
static int check_freeable(const mp_pager *p, uint64_t id)
{
    int rc = pager_check_page_id(p, id);
    if (rc == MP_OK && !bitmap_get(p->bits, id))
        return MP_EDOUBLE_FREE;
    return rc;
}

int mp_pager_free_locked(mp_pager *p, uint64_t id)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if ((rc = check_freeable(p, id)) != MP_OK)
        return rc;
    pager_release_bit(p, id);
    if ((rc = pager_commit(p, MP_ORDER_META_FIRST)) != MP_OK)
        return rc;
    space_after_free(p, &id, 1);
    return MP_OK;
}

/* check_freeable for each id, in order, clearing each bit as it is checked so
 * a repeated id fails as a double free; on a failure the bits cleared so far
 * are set again and nothing has changed. */
static int check_and_clear(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    chunk_cursor cur = {1, 0, 0};
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id = ids[i];
        int rc = MP_OK;
        if (id < MP_RESERVED_PAGES)
            rc = MP_ERESERVED_PAGE;
        else if (id >= p->total_pages)
            rc = MP_EOUT_OF_BOUNDS;
        else if ((cursor_chunk(&cur, p->chunk_pages, id) > 0 &&
                  id - cur.start < MP_LAYOUT_PAGES) ||
                 bitmap_get(p->system, id))
            rc = MP_ERESERVED_PAGE;
        else if (!bitmap_get(p->bits, id))
            rc = MP_EDOUBLE_FREE;
        if (rc != MP_OK) {
            for (uint64_t j = 0; j < i; j++)
                bitmap_set(p->bits, ids[j]);
            return rc;
        }
        bitmap_clear(p->bits, ids[i]);
    }
    return MP_OK;
}

/* pager_release_bit for every id at once, the bits already clear: ids of one
 * word are gathered into a mask, so the pending map, the summary and the
 * count move a word at a time, and the dirty free-map chunks a chunk at a
 * time. */
static void release_cleared(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    int pinned = readers_pin_many(p, ids, n);
    /* Every free of a writer waits for its commit, as pager_release_bit's:
     * in "compat" and "fast" the commit's flush may run with the mutex
     * released (group.c), and a free made meanwhile is not in it. */
    int hold = !p->read_only;
    for (uint64_t i = 0; hold && p->lk.flushing && i < n; i++)
        group_note_later(p, ids[i], pinned);
    chunk_cursor cur = {1, 0, 0};
    uint64_t low = UINT64_MAX, dirty = UINT64_MAX;
    for (uint64_t i = 0; i < n;) {
        uint64_t w = ids[i] >> 6, mask = 0;
        for (; i < n && ids[i] >> 6 == w; i++) {
            mask |= (uint64_t)1 << (ids[i] & 63);
            low = ids[i] < low ? ids[i] : low;
            uint64_t c = cursor_chunk(&cur, p->chunk_pages, ids[i]);
            if (c != dirty)
                bitmap_set(p->chunk_dirty, dirty = c);
        }
        /* Until the free is durable the page belongs to the durable state. */
        uint64_t fresh = hold ? mask & ~p->pending[w] : 0;
        if (fresh) {
            if (p->pending_count == 0 || w < p->pending_lo)
                p->pending_lo = w;
            if (p->pending_count == 0 || w > p->pending_hi)
                p->pending_hi = w;
            p->pending[w] |= fresh;
            p->pending_count += (uint64_t)__builtin_popcountll(fresh);
        }
        if (p->sum.mem)
            summary_update(&p->sum, w, p->bits[w] | p->pending[w]);
    }
    p->free_count += n;
    p->changed = 1;
    if (low < p->hint)
        p->hint = low;
}

int mp_pager_free_bulk_locked(mp_pager *p, const uint64_t *caller_ids, uint64_t n)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!caller_ids)
        return MP_EINVALID_ARGUMENT;
    /* One read of the caller's buffer, into memory the core owns: another
     * thread may change that buffer at any moment (the GIL is released), and
     * ids checked in one read and applied from a second would let it free a
     * reserved page or set a bit far past the bitmap. */
    uint64_t *ids = pager_ids_copy(caller_ids, n);
    if (!ids)
        return MP_ENO_MEMORY;
    if ((rc = check_and_clear(p, ids, n)) != MP_OK) {
        free(ids);
        return rc;
    }
    release_cleared(p, ids, n);
    rc = pager_commit(p, MP_ORDER_META_FIRST);
    if (rc == MP_OK)
        space_after_free(p, ids, n);
    free(ids);
    return rc;
}

int mp_pager_check_page_locked(const mp_pager *p, uint64_t id)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    return pager_check_page_id(p, id);
}

int mp_pager_list_pages_locked(const mp_pager *p, int kind, uint64_t start, uint64_t *out_ids,
                        uint64_t capacity, uint64_t *out_n)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!out_ids || !out_n || (kind != MP_KIND_ALLOCATED && kind != MP_KIND_SYSTEM))
        return MP_EINVALID_ARGUMENT;
    uint64_t n = 0;
    uint64_t at = start < MP_RESERVED_PAGES ? MP_RESERVED_PAGES : start;
    while (n < capacity) {
        uint64_t id = kind == MP_KIND_ALLOCATED
                          ? bitmap_find_set(p->bits, p->system, at, p->total_pages)
                          : bitmap_find_set(p->system, NULL, at, p->total_pages);
        if (id >= p->total_pages)
            break;
        at = id + 1;
        if (kind == MP_KIND_ALLOCATED && pager_is_layout_page(p, id))
            continue;
        out_ids[n++] = id;
    }
    *out_n = n;
    return MP_OK;
}

