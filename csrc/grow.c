/*
 * grow.c - growth of the file and the in-memory free map's bookkeeping.
 *
 * Owns: when and by how much the file grows (doubling as the crate does, then
 * grow_step pages at a time), the taking of each new chunk's layout pages, and
 * the helpers that keep the summary and the dirty free-map pages in step with
 * every change of bits[] or pending[] (bit_take, bit_give, map_changed).
 *
 * Invariants: rule 3 of pager.c: the file is grown, preallocated and its size
 * made durable before any committed metadata counts the new pages (grow_to);
 * a growth target is never past max_pages and never cuts a chunk inside its
 * layout pages (fmt_fit_total).
 */
#include "mp_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

void pager_note_words_used(mp_pager *p, uint64_t total)
{
    uint64_t w = bitmap_words(total) + 1;
    if (w > p->words_used)
        p->words_used = w;
}

/* Word w of bits or pending changed: keep the summary and the dirty free-map
 * pages in step. */
void pager_map_changed(mp_pager *p, uint64_t id)
{
    uint64_t w = id >> 6;
    if (p->sum.mem)
        summary_update(&p->sum, w, p->bits[w] | p->pending[w]);
    bitmap_set(p->chunk_dirty, id / p->chunk_pages);
}

void pager_bit_take(mp_pager *p, uint64_t id)
{
    bitmap_set(p->bits, id);
    pager_map_changed(p, id);
}

void pager_bit_give(mp_pager *p, uint64_t id)
{
    bitmap_clear(p->bits, id);
    pager_map_changed(p, id);
}

/* A state with a non-zero root that leaves v0.2 needs root pages. */
static int roots_move(const mp_pager *p)
{
    int any = 0;
    for (uint32_t r = 0; r < MP_ROOTS; r++)
        any |= p->roots[r] != 0;
    return any && p->roots_page == 0 && p->total_pages <= p->chunk_pages;
}

/* A growth target the layout accepts: never a chunk without its layout
 * pages, never past the cap. */
static uint64_t fit_total(const mp_pager *p, uint64_t t)
{
    t = fmt_fit_total(p->chunk_pages, t);
    /* Chunk 1 may hold the root pages after its layout pages. */
    uint64_t first = p->chunk_pages + MP_LAYOUT_PAGES + MP_ROOT_PAGES;
    if (t > p->chunk_pages && t < first && roots_move(p))
        t = first;
    return t > p->max_pages ? p->max_pages : t;
}

/* Make the file hold new_total pages: preallocate, make the size durable, map.
 * Nothing refers to the new pages until a later metadata commit counts them,
 * so a crash anywhere in here leaves only a longer file, which open accepts. */
static int grow_to(mp_pager *p, uint64_t new_total)
{
    int move_roots = roots_move(p);
    uint64_t ps = p->page_size;
    uint64_t old_size;
    int rc = os_file_size(p->fd, &old_size);
    if (rc != MP_OK)
        return rc;
    uint64_t new_len = new_total * ps;
    /* A file left longer by an earlier crash is never cut back here: the
     * mapping may already cover that length. */
    if (p->preallocate || old_size < new_len) {
        rc = os_grow_file(&p->map, p->total_pages * ps, new_len, p->preallocate);
        if (rc != MP_OK)
            return rc;
    }
    /* The new size must be durable before a commit refers to the new pages,
     * or a crash could leave metadata counting pages past the end of file. */
    rc = os_sync_file(&p->map);
    if (rc != MP_OK) {
        p->poisoned = 1;
        return rc;
    }
    rc = os_map_extend(&p->map, new_len);
    if (rc != MP_OK) {
        (void)os_shrink_file(&p->map, old_size);
        return rc;
    }
    /* Each new chunk's four layout pages are taken at once. Its first
     * free-map write goes to copy A (the committed copy is "B", which holds
     * nothing). The other three must read as invalid before the commit that
     * counts the chunk: past the old end of file they are zero already; a
     * file left longer by an earlier crash may hold an unfinished commit's
     * copies there, so those are zeroed and flushed. */
    uint64_t first = fmt_chunks_below(p->chunk_pages, p->total_pages) + 1;
    uint64_t last = fmt_chunks_below(p->chunk_pages, new_total);
    pager_note_words_used(p, new_total);
    p->free_count += new_total - p->total_pages;
    p->total_pages = new_total;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t at = fmt_chunk_start(p->chunk_pages, c);
        for (uint64_t i = 0; i < MP_LAYOUT_PAGES; i++)
            pager_bit_take(p, at + i);
        p->free_count -= MP_LAYOUT_PAGES;
        bitmap_set(p->chunk_active, c);
        if (pager_chunk_holds_index(p, c))
            bitmap_set(p->index_active, c - 1);
        /* Free-map copy B and both index copies: the page after copy A. */
        uint64_t rest = fmt_free_map_page(p->chunk_pages, c, 1);
        if (rest * ps < old_size) {
            memset(pager_page_ptr(p, rest), 0, 3 * (size_t)ps);
            if ((rc = os_flush_range(&p->map, rest * ps, 3 * ps)) != MP_OK) {
                p->poisoned = 1;
                return rc;
            }
        }
    }
    /* Chunk 1 is new and the state has roots: the two pages after its layout
     * pages (free) become the extended layout's root pages, which the commit
     * that moves the file there writes (engine.c). */
    if (first == 1 && last >= 1 && move_roots)
        roots_pages_claim(p, fmt_chunk_start(p->chunk_pages, 1) + MP_LAYOUT_PAGES);
    p->changed = 1;
    return MP_OK;
}

/* Pages the file gains by growing to t, net of new chunks' layout pages. */
static uint64_t gained(const mp_pager *p, uint64_t t)
{
    uint64_t roots = roots_move(p) && t > p->chunk_pages ? MP_ROOT_PAGES : 0;
    return (t - p->total_pages) - roots -
           MP_LAYOUT_PAGES * (fmt_chunks_below(p->chunk_pages, t) -
                              fmt_chunks_below(p->chunk_pages, p->total_pages));
}

/* The next size: double until the step, then add the step. A v0.2 file
 * stops once at the v0.2 cap, so it leaves the crate's layout only when it
 * must. */
static uint64_t next_total(const mp_pager *p, uint64_t t)
{
    uint64_t add = t < p->grow_step ? t : p->grow_step;
    uint64_t n = t + (add ? add : 1);
    if (t < p->chunk_pages && n > p->chunk_pages)
        n = p->chunk_pages;
    /* A state with roots has them beside the v0.2 bitmap only while it
     * leaves them room (format_tail.c); past that it moves on to the
     * extended layout's root pages. */
    if (n > t && n <= p->chunk_pages && !fmt_meta_has_tail(p->page_size, n) && roots_move(p))
        n = p->chunk_pages + 1;
    return fit_total(p, n);
}

uint64_t pager_room(const mp_pager *p)
{
    return p->free_count - p->pending_count + gained(p, p->max_pages);
}

uint64_t pager_dir_block_limit(const mp_pager *p)
{
    uint64_t per = fmt_max_dir_blocks(p->page_size);
    /* Index page k lives in chunk k + 1 (index page 0 of a file extended
     * from creation: at pages 6-7). */
    return pager_extended(p) ? per * pager_index_pages(p) : per;
}

int pager_grow_at_least(mp_pager *p, uint64_t pages)
{
    if (pages <= p->total_pages)
        return MP_OK;
    if (pages > p->max_pages)
        return MP_EFILE_FULL;
    uint64_t t = p->total_pages;
    while (t < pages)
        t = next_total(p, t);
    return grow_to(p, fit_total(p, t));
}

/* Grow, by doubling as the crate does, until n pages are free; the last step
 * stops at the layout's cap. Fails with nothing changed when n cannot fit. */
int pager_ensure_free(mp_pager *p, uint64_t n)
{
    /* Readers that moved on free their pins, so the lowest page comes next. */
    (void)readers_reclaim(p, 0);
    /* Pages freed by a commit that is not durable yet are not reusable. */
    uint64_t usable = p->free_count - p->pending_count;
    if (usable >= n)
        return MP_OK;
    if (readers_releasable(p) > 0 && p->txn_depth == 0) {
        /* Rather than grow the file, make those frees durable (one flushed
         * commit of the deferred state) so their pages can be reused; frees
         * a reader holds would stay pending, so they do not count. */
        int rc = pager_settle_deferred(p);
        if (rc != MP_OK)
            return rc;
        usable = p->free_count - p->pending_count;
        if (usable >= n)
            return MP_OK;
    }
    /* Before growing for pinned pages, test whether their readers live. */
    if (readers_reclaim(p, 1)) {
        usable = p->free_count - p->pending_count;
        if (usable >= n)
            return MP_OK;
    }
    uint64_t t = p->total_pages;
    while (usable + gained(p, t) < n && t < p->max_pages)
        t = next_total(p, t);
    if (usable + gained(p, t) < n)
        return MP_EFILE_FULL;
    return grow_to(p, t);
}

