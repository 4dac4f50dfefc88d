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
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id = find_allocatable(p, at);
        if (id >= p->total_pages) {
            /* The hint is only a lower bound; ensure_free counted the pages. */
            id = find_allocatable(p, MP_RESERVED_PAGES);
            if (id >= p->total_pages) {
                for (uint64_t j = 0; j < i; j++)
                    pager_bit_give(p, ids[j]);
                free(ids);
                return MP_ECORRUPT_METADATA;
            }
        }
        if ((rc = space_before_take(p, id)) != MP_OK) {
            for (uint64_t j = 0; j < i; j++)
                pager_bit_give(p, ids[j]);
            free(ids);
            return rc;
        }
        pager_bit_take(p, id);
        ids[i] = id;
        at = id + 1;
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
    /* Clearing each bit as it is checked makes a repeated id fail as a double
     * free; on any failure the bits cleared so far are set again. */
    for (uint64_t i = 0; i < n; i++) {
        rc = check_freeable(p, ids[i]);
        if (rc != MP_OK) {
            for (uint64_t j = 0; j < i; j++)
                bitmap_set(p->bits, ids[j]);
            free(ids);
            return rc;
        }
        bitmap_clear(p->bits, ids[i]);
    }
    /* Validated: set the bits again and release them the one way there is. */
    for (uint64_t i = 0; i < n; i++) {
        bitmap_set(p->bits, ids[i]);
        pager_release_bit(p, ids[i]);
    }
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

