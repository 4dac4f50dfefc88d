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

int mp_pager_alloc_bulk_locked(mp_pager *p, uint64_t n, int zero, uint64_t *out_ids)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!out_ids)
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
    if ((rc = pager_ensure_free(p, n)) != MP_OK) {
        free(ids);
        return rc;
    }
    uint64_t at = p->hint;
    chunk_cursor cur = {1, 0, 0};
    for (uint64_t i = 0; i < n;) {
        uint64_t id = find_allocatable(p, at);
        if (id >= p->total_pages) {
            /* The hint is only a lower bound; ensure_free counted the pages. */
            id = find_allocatable(p, MP_RESERVED_PAGES);
            if (id >= p->total_pages)
                rc = MP_ECORRUPT_METADATA;
        }
        if (rc == MP_OK)
            rc = take_word(p, id, ids, n, &i, &cur);
        if (rc != MP_OK) {
            for (uint64_t j = 0; j < i; j++)
                pager_bit_give(p, ids[j]);
            free(ids);
            return rc;
        }
        at = ids[i - 1] + 1;
    }
    p->free_count -= n;
    p->hint = at;
    p->changed = 1;
    if (zero)
        zero_pages(p, ids, n);
    rc = pager_commit(p, MP_ORDER_DIR_FIRST);
    if (rc == MP_OK)
        memcpy(out_ids, ids, (size_t)n * sizeof(uint64_t));
    free(ids);
    return rc;
}

/* Why a page may not be freed (or viewed), in the order the checks apply. */
static int check_freeable(const mp_pager *p, uint64_t id)
{
    if (id < MP_RESERVED_PAGES)
        return MP_ERESERVED_PAGE;
    if (id >= p->total_pages)
        return MP_EOUT_OF_BOUNDS;
    if (pager_is_layout_page(p, id) || bitmap_get(p->system, id))
        return MP_ERESERVED_PAGE;
    if (!bitmap_get(p->bits, id))
        return MP_EDOUBLE_FREE;
    return MP_OK;
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
    if (id < MP_RESERVED_PAGES)
        return MP_ERESERVED_PAGE;
    if (id >= p->total_pages)
        return MP_EOUT_OF_BOUNDS;
    if (pager_is_layout_page(p, id) || bitmap_get(p->system, id))
        return MP_ERESERVED_PAGE;
    return MP_OK;
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

