/*
 * space.c - giving disk space back: trim (cut the file past its last page in
 * use) and hole punching (deallocate the blocks of free pages).
 *
 * Owns: the bitmap of punched pages, the punch_on_free setting, and the two
 * public calls mp_pager_trim and mp_pager_punch_free.
 *
 * Invariants, and why they hold:
 *   - Trim commits the smaller page count durably before the file is cut, so
 *     a crash leaves the old size (a longer file, which open accepts) or the
 *     new one. It writes both metadata copies (the commit, then the older
 *     copy at the same state) so that no copy counts pages past the new end. It never cuts a page that is allocated, pending (a free not yet
 *     durable, or held back for a reader), a layout page of a kept chunk, or
 *     below the page count any live registered reader published: the table is
 *     scanned after the commit, so a reader registering later loads the new
 *     state (readers.c's fence argument).
 *   - In the writer's process every address past the new end is replaced by
 *     zero memory before the cut (os_map_detach_tail): a view of a cut page
 *     reads zeros, it never faults.
 *   - An extended-layout file stays extended: trim stops at chunk 1's layout
 *     pages (and at the chunks holding the directory's index pages). Moving
 *     back to v0.2 would mean moving the directory index into page 0 and a
 *     second commit point; the extended layout is valid at any size past it.
 *   - Only pages free in bits[] and not pending are punched: their free is
 *     durable and no reader's snapshot has them allocated, so a crash or a
 *     reader never sees the zeros where it expects data.
 *   - A punched page is set in punched[] until it is handed out again; with
 *     preallocate it gets its blocks back (posix_fallocate) first, so a full
 *     disk is an error from alloc, never SIGBUS through a view.
 */
#include "mp_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct mp_space {
    uint64_t *punched;       /* map_bytes: pages punched since last handed out */
    uint64_t punched_count;
    int punch_on_free;
};

static struct mp_space *space_get(mp_pager *p)
{
    if (!p->sp) {
        struct mp_space *sp = calloc(1, sizeof *sp);
        if (!sp)
            return NULL;
        sp->punched = os_alloc_zeroed(p->map_bytes);
        if (!sp->punched) {
            free(sp);
            return NULL;
        }
        p->sp = sp;
    }
    return p->sp;
}

void space_release(mp_pager *p)
{
    if (!p->sp)
        return;
    os_free_zeroed(p->sp->punched, p->map_bytes);
    free(p->sp);
    p->sp = NULL;
}

static void unmark(struct mp_space *sp, uint64_t id)
{
    if (bitmap_get(sp->punched, id)) {
        bitmap_clear(sp->punched, id);
        sp->punched_count--;
    }
}

int space_before_take(mp_pager *p, uint64_t id)
{
    struct mp_space *sp = p->sp;
    if (!sp || !bitmap_get(sp->punched, id))
        return MP_OK;
    if (p->preallocate) {
        int rc = os_fill_range(&p->map, id * (uint64_t)p->page_size, p->page_size);
        if (rc != MP_OK)
            return rc;
    }
    unmark(sp, id);
    return MP_OK;
}

/* A page punch may take: free, its free durable, pinned by no reader. */
static int punchable(const mp_pager *p, uint64_t id)
{
    return !bitmap_get(p->bits, id) && !bitmap_get(p->pending, id) &&
           !bitmap_get(p->sp->punched, id);
}

static uint64_t blocks_of(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_blocks * 512u : 0;
}

/* Punches the run [a, b) and marks it. */
static int punch_run(mp_pager *p, uint64_t a, uint64_t b)
{
    uint64_t ps = p->page_size;
    int rc = os_punch_range(&p->map, a * ps, (b - a) * ps);
    if (rc != MP_OK)
        return rc;
    for (uint64_t id = a; id < b; id++) {
        if (!bitmap_get(p->sp->punched, id)) {
            bitmap_set(p->sp->punched, id);
            p->sp->punched_count++;
        }
    }
    return MP_OK;
}

int mp_pager_punch_free_locked(mp_pager *p, uint64_t *out_bytes, int *out_unsupported)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (!out_bytes || !out_unsupported || p->txn_depth > 0)
        return MP_EINVALID_ARGUMENT;
    /* Frees made durable and pins readers no longer need are punched too. */
    if ((rc = pager_settle_deferred(p)) != MP_OK)
        return rc;
    (void)readers_reclaim(p, 1);
    if (!space_get(p))
        return MP_ENO_MEMORY;
    uint64_t before = blocks_of(p->fd);
    uint64_t id = MP_RESERVED_PAGES;
    while (id < p->total_pages) {
        /* Whole words with every page taken are skipped at once. */
        uint64_t w = id >> 6;
        if ((id & 63) == 0 && (p->bits[w] | p->pending[w] | p->sp->punched[w]) == ~(uint64_t)0) {
            id += 64;
            continue;
        }
        if (!punchable(p, id)) {
            id++;
            continue;
        }
        uint64_t end = id + 1;
        while (end < p->total_pages && punchable(p, end))
            end++;
        rc = punch_run(p, id, end);
        if (rc == -EOPNOTSUPP) {
            *out_bytes = 0;
            *out_unsupported = 1;
            return MP_OK;
        }
        if (rc != MP_OK)
            return rc;
        id = end;
    }
    uint64_t after = blocks_of(p->fd);
    *out_bytes = before > after ? before - after : 0;
    *out_unsupported = 0;
    return MP_OK;
}

/* Free, durable and unpinned, punched or not: a punch may cover it. */
static int coverable(const mp_pager *p, uint64_t id)
{
    return id >= MP_RESERVED_PAGES && id < p->total_pages && !bitmap_get(p->bits, id) &&
           !bitmap_get(p->pending, id);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void space_after_free(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    if (!p->sp || !p->sp->punch_on_free || p->txn_depth > 0 || p->poisoned || n == 0)
        return;
    uint64_t *sorted = pager_ids_copy(ids, n);
    if (!sorted)
        return; /* punching is only a saving */
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_u64);
    /* Each run reaches over free neighbours up to a file-system block either
     * side, so pages smaller than a block still free whole blocks. Pages
     * still pending (a lazy mode, a reader's pin) wait for punch_free. */
    uint64_t reach = os_page_size() / p->page_size;
    uint64_t done = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id = sorted[i];
        if (id < done || !coverable(p, id) || bitmap_get(p->sp->punched, id))
            continue;
        /* The run of consecutive ids from here, then the reach. */
        uint64_t j = i;
        while (j + 1 < n && sorted[j + 1] <= sorted[j] + 1)
            j++;
        uint64_t a = id, b = id + 1, last = sorted[j];
        while (a > done && id - a < reach && coverable(p, a - 1))
            a--;
        while (coverable(p, b) && b <= last + reach)
            b++;
        if (punch_run(p, a, b) != MP_OK)
            break; /* unsupported, or failing */
        done = b;
    }
    free(sorted);
}

int mp_pager_set_punch_on_free_locked(mp_pager *p, int on)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (on && !space_get(p))
        return MP_ENO_MEMORY;
    if (p->sp)
        p->sp->punch_on_free = on != 0;
    return MP_OK;
}

int mp_pager_punched_locked(const mp_pager *p, uint64_t *out_count)
{
    if (!p || !out_count)
        return MP_EINVALID_ARGUMENT;
    *out_count = p->sp ? p->sp->punched_count : 0;
    return MP_OK;
}

/* ------------------------------------------------------------------ trim */

/* One past the last page in use: allocated or pending, not counting the
 * layout pages of chunks past chunk 0 (a chunk holding nothing else goes). */
static uint64_t used_extent(const mp_pager *p)
{
    uint64_t w = bitmap_words(p->total_pages);
    while (w-- > 0) {
        uint64_t v = p->bits[w] | p->pending[w];
        while (v) {
            uint64_t id = (w << 6) + 63u - (uint64_t)__builtin_clzll(v);
            if (id < p->total_pages && !(id >= p->chunk_pages && pager_is_layout_page(p, id)))
                return id + 1;
            v &= ~((uint64_t)1 << (id & 63));
        }
    }
    return MP_RESERVED_PAGES;
}

/* The fewest pages the file's layout and directory allow. */
static uint64_t layout_floor(const mp_pager *p)
{
    uint64_t floor = MP_INITIAL_PAGES;
    /* A file extended from creation needs only its pages 4-7 while it fits
     * chunk 0; one that grew past it keeps chunk 1, as any extended file. */
    if (p->ext_always && p->total_pages <= p->chunk_pages)
        floor = MP_ALWAYS_PAGES;
    else if (p->minor == MP_MINOR_EXTENDED || pager_extended(p)) {
        floor = p->chunk_pages + MP_LAYOUT_PAGES;
        uint64_t per = fmt_max_dir_blocks(p->page_size);
        if (p->dir_count > 0 && per > 0) {
            uint64_t need = fmt_total_for_index(p->chunk_pages, p->ext_always, (p->dir_count - 1u) / per);
            if (need > floor)
                floor = need;
        }
    }
    return floor;
}

/* The most pages a live registered reader published (0 when none). */
static int readers_floor(mp_pager *p, uint64_t *out)
{
    *out = 0;
    if (!p->rd || p->rd->fd < 0)
        return MP_OK;
    rd_entry *e = malloc(sizeof *e * RD_MAX_SLOTS);
    if (!e)
        return MP_ENO_MEMORY;
    uint64_t n = 0, oldest = 0;
    int rc = readers_table_scan(p->rd->fd, -1, 1, e, RD_MAX_SLOTS, &n, &oldest);
    for (uint64_t i = 0; rc == MP_OK && i < n; i++) {
        if (e[i].pages > *out)
            *out = e[i].pages;
    }
    free(e);
    return rc;
}

/* In memory: the pages from `total` on leave (all free but for the layout
 * pages of the chunks that go). */
static void cut_state(mp_pager *p, uint64_t total)
{
    uint64_t old = p->total_pages;
    uint64_t first_gone = fmt_chunks_below(p->chunk_pages, total) + 1;
    uint64_t last = fmt_chunks_below(p->chunk_pages, old);
    uint64_t layout_gone = 0;
    for (uint64_t c = first_gone; c <= last; c++) {
        uint64_t at = fmt_chunk_start(p->chunk_pages, c);
        for (uint64_t i = 0; i < MP_LAYOUT_PAGES; i++)
            pager_bit_give(p, at + i);
        layout_gone += MP_LAYOUT_PAGES;
        bitmap_clear(p->chunk_dirty, c);
        bitmap_clear(p->chunk_active, c);
        if (!pager_chunk_holds_index(p, c))
            continue; /* index page 0 of a file extended from creation stays */
        bitmap_clear(p->index_dirty, c - 1);
        bitmap_clear(p->index_active, c - 1);
    }
    /* The new last chunk's free map covers fewer pages: written again. */
    if (first_gone > 1)
        bitmap_set(p->chunk_dirty, first_gone - 1);
    if (p->sp) {
        for (uint64_t id = total; id < old; id++)
            unmark(p->sp, id);
    }
    p->free_count -= (old - total) - layout_gone;
    p->total_pages = total;
    if (p->hint >= total)
        p->hint = MP_RESERVED_PAGES;
    p->changed = 1;
}

int mp_pager_trim_locked(mp_pager *p, uint64_t *out_pages)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (!out_pages || p->txn_depth > 0)
        return MP_EINVALID_ARGUMENT;
    /* Frees made durable and pins no reader needs any more are cut too
     * (pinned pages are pending: used_extent keeps them). */
    if ((rc = pager_settle_deferred(p)) != MP_OK)
        return rc;
    (void)readers_reclaim(p, 1);
    uint64_t ps = p->page_size, file_bytes;
    if ((rc = os_file_size(p->fd, &file_bytes)) != MP_OK)
        return rc;
    uint64_t file_pages = file_bytes / ps;
    uint64_t keep = used_extent(p), floor = layout_floor(p);
    keep = fmt_fit_total(p->chunk_pages, keep < floor ? floor : keep);
    if (keep < p->total_pages) {
        /* The commit point: the smaller count durable in every durability
         * mode. Then the other metadata copy is brought to the same state,
         * so that neither copy counts pages past the new end (open would
         * take such a copy for damage and say so); a crash between the two
         * leaves the old size, which both copies fit. */
        cut_state(p, keep);
        for (int copy = 0; copy < 2; copy++) {
            p->changed = 1;
            if ((rc = pager_commit(p, MP_ORDER_META_FIRST)) != MP_OK ||
                (rc = pager_settle_deferred(p)) != MP_OK) {
                p->poisoned = 1;
                return rc;
            }
        }
    }
    /* Read after the commit: a reader registering later loads the new
     * state. The file keeps every page a live reader has mapped. */
    uint64_t seen;
    if ((rc = readers_floor(p, &seen)) != MP_OK)
        seen = file_pages;
    uint64_t cut = seen > p->total_pages ? seen : p->total_pages;
    if (cut >= file_pages) {
        *out_pages = 0;
        return MP_OK;
    }
    if ((rc = os_map_detach_tail(&p->map, p->total_pages * ps)) != MP_OK ||
        (rc = os_shrink_file(&p->map, cut * ps)) != MP_OK)
        return rc;
    *out_pages = file_pages - cut;
    return MP_OK;
}
