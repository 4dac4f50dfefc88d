/*
 * pins.c - the writer's side of reader snapshots: pages freed while a live
 * reader's commit may still have them allocated are held back ("pinned").
 *
 * Owns: the FIFO of pinned pages, the cached bound on the readers' oldest
 * generation, and the writer's fields of the reader table's header (its pid
 * and the pinned count, for `info` in other processes). The table itself,
 * its slots and their locks are readers.c's.
 *
 * Invariants (the reasoning is readers.c's, at the top):
 *   - Every page in the FIFO is free in bits[] and set in pending[], so
 *     allocation skips it; pending_count counts it.
 *   - Entries are in the order freed, so by the writer's written generation
 *     when freed (gen); those before `durable` were made durable by a commit.
 *   - An entry is released only if durable and gen < bound, where bound is at
 *     most the oldest live slot's generation and the writer's generation when
 *     the table was last read: no reader, now or later, has it allocated.
 *   - Unless `unpinned` is set (a push failed, or pages were pending when the
 *     table was attached), every pending page has an entry, or had one that
 *     was released; so when every entry may go, the whole pending map may be
 *     cleared a word at a time (release_all), as a commit without readers
 *     does, instead of page by page.
 */
#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The pinned count, in the header for `info`; written only when it changed. */
static void publish_pinned(mp_pager *p)
{
    mp_readers *rd = p->rd;
    uint64_t n = rd->durable - rd->head;
    if (n == rd->published)
        return;
    uint8_t v[8];
    mp_store_u64(v, n);
    if (os_write_all(NULL, rd->fd, v, sizeof v, RD_HEAD_PINNED) == MP_OK)
        rd->published = n;
}

/* The writer's pid in the header (0: none), with a pinned count of 0. */
static void publish_writer(int fd, uint64_t pid)
{
    uint8_t v[16];
    mp_store_u64(v, 0);
    mp_store_u64(v + 8, pid);
    (void)os_write_all(NULL, fd, v, sizeof v, RD_HEAD_PINNED);
}

/* ------------------------------------------------------- writer: pinning */

static int pinning(const mp_pager *p)
{
    return p->rd && p->rd->fd >= 0 && !p->read_only;
}

/* Appends a pin; 0 when out of memory (the page then stays pending until the
 * pager closes: never unsafe). */
static int push(mp_readers *rd, uint64_t id, uint64_t gen)
{
    if (rd->tail == rd->cap) {
        if (rd->head > 0) {
            /* Slide the live part down rather than grow. */
            memmove(rd->pins, rd->pins + rd->head, (size_t)(rd->tail - rd->head) * sizeof *rd->pins);
            rd->tail -= rd->head;
            rd->durable -= rd->head;
            rd->head = 0;
        }
        if (rd->tail == rd->cap) {
            uint64_t ncap = rd->cap ? rd->cap * 2 : 256;
            rd_pin *np = realloc(rd->pins, (size_t)ncap * sizeof *np);
            if (!np)
                return 0;
            rd->pins = np;
            rd->cap = ncap;
        }
    }
    rd->pins[rd->tail].id = id;
    rd->pins[rd->tail].gen = gen;
    rd->tail++;
    return 1;
}

int readers_pin(mp_pager *p, uint64_t id)
{
    if (!pinning(p))
        return 0;
    if (!push(p->rd, id, p->generation))
        p->rd->unpinned = 1;
    return 1;
}

int readers_pin_many(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    if (!pinning(p))
        return 0;
    mp_readers *rd = p->rd;
    /* Room for all of them first, then a plain copy loop. */
    if (n > 0 && !push(rd, ids[0], p->generation)) {
        rd->unpinned = 1;
        return 1;
    }
    if (n > 1 && rd->cap - rd->tail < n - 1) {
        uint64_t ncap = rd->tail + n - 1;
        rd_pin *np = realloc(rd->pins, (size_t)ncap * sizeof *np);
        if (!np) {
            for (uint64_t i = 1; i < n; i++)
                if (!push(rd, ids[i], p->generation))
                    rd->unpinned = 1;
            return 1;
        }
        rd->pins = np;
        rd->cap = ncap;
    }
    for (uint64_t i = 1; i < n; i++) {
        rd->pins[rd->tail].id = ids[i];
        rd->pins[rd->tail].gen = p->generation;
        rd->tail++;
    }
    return 1;
}

/* Marks a free page pending (out of allocation's reach). */
static void hold(mp_pager *p, uint64_t id)
{
    bitmap_set(p->pending, id);
    uint64_t w = id >> 6;
    if (p->pending_count == 0 || w < p->pending_lo)
        p->pending_lo = w;
    if (p->pending_count == 0 || w > p->pending_hi)
        p->pending_hi = w;
    p->pending_count++;
    if (p->sum.mem)
        summary_update(&p->sum, w, p->bits[w] | p->pending[w]);
}

/* A writer that opens beside readers holding an older commit than its own
 * (an earlier writer freed pages under them and closed, or open's repairs
 * committed) cannot know which free pages their commits have allocated: it
 * holds back every free page, as freed just before its first commit, until
 * those readers move on. */
static int hold_free_pages(mp_pager *p)
{
    uint64_t oldest;
    int rc = readers_table_scan(p->rd->fd, -1, 1, NULL, 0, NULL, &oldest);
    if (rc != MP_OK || oldest >= p->generation)
        return rc;
    uint64_t gen = p->generation - 1;
    for (uint64_t w = 0; w < bitmap_words(p->total_pages); w++) {
        uint64_t free = ~(p->bits[w] | p->pending[w]);
        for (; free; free &= free - 1) {
            uint64_t id = (w << 6) + (uint64_t)__builtin_ctzll(free);
            if (id >= p->total_pages)
                break;
            if (!push(p->rd, id, gen))
                return MP_ENO_MEMORY;
            hold(p, id);
        }
    }
    p->rd->durable = p->rd->tail;
    return MP_OK;
}

int mp_readers_attach_locked(mp_pager *p, const char *table_path, int64_t max_readers)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!table_path || p->read_only || max_readers < 0 || max_readers > RD_MAX_SLOTS)
        return MP_EINVALID_ARGUMENT;
    if (p->rd && p->rd->fd >= 0)
        return MP_EINVALID_ARGUMENT;
    mp_readers *rd = readers_get(p);
    if (!rd)
        return MP_ENO_MEMORY;
    int fd;
    if ((rc = readers_table_open(p, table_path, max_readers, &fd)) != MP_OK)
        return rc;
    rd->fd = fd;
    rd->bound = 0;
    rd->published = 0;
    /* Pages pending now have no entry: they must not go with release_all. */
    rd->unpinned = p->pending_count > 0;
    if ((rc = hold_free_pages(p)) != MP_OK) {
        pins_release(p);
        close(fd);
        rd->fd = -1;
        return rc;
    }
    publish_writer(fd, (uint64_t)getpid());
    publish_pinned(p);
    return MP_OK;
}

static void unpin(mp_pager *p, uint64_t id)
{
    if (!bitmap_get(p->pending, id) || bitmap_get(p->bits, id))
        return;
    bitmap_clear(p->pending, id);
    p->pending_count--;
    uint64_t w = id >> 6;
    if (p->sum.mem)
        summary_update(&p->sum, w, p->bits[w] | p->pending[w]);
    if (id < p->hint)
        p->hint = id;
}

static uint64_t mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Testing a slot's lock is a system call per live slot: done at most this
 * often while pins wait, and always before the file grows for them. */
static const uint64_t LIVENESS_EVERY_NS = 10u * 1000u * 1000u;

/* Every entry is durable and below the bound, and every pending page has (or
 * had) an entry: clear the pending map a word at a time, whatever the number
 * of pages, so making a large bulk free durable costs one commit and not work
 * per page. pending[] and bits[] are disjoint (check.c), so the summary's
 * word becomes bits[w]. */
static void release_all(mp_pager *p)
{
    if (p->pending_count > 0) {
        for (uint64_t w = p->pending_lo; w <= p->pending_hi; w++) {
            if (!p->pending[w])
                continue;
            p->pending[w] = 0;
            if (p->sum.mem)
                summary_update(&p->sum, w, p->bits[w]);
        }
        p->pending_count = 0;
        /* Allocation skipped those pages and moved its hint past them. */
        p->hint = MP_RESERVED_PAGES;
    }
    mp_readers *rd = p->rd;
    rd->head = rd->durable = rd->tail = 0;
}

/* Releases the durable pins no live reader can see; reads the table only when
 * the cached bound holds the oldest pin back. */
static int release_pins(mp_pager *p, int force)
{
    mp_readers *rd = p->rd;
    if (rd->head == rd->durable)
        return MP_OK;
    if (rd->pins[rd->head].gen >= rd->bound) {
        uint64_t oldest, now = mono_ns();
        int live = force || now - rd->live_checked >= LIVENESS_EVERY_NS;
        /* The commit being released must be visible before the slots are read. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        int rc = readers_table_scan(rd->fd, -1, live, NULL, 0, NULL, &oldest);
        if (rc != MP_OK)
            return rc; /* keep them pinned: the file grows, nothing breaks */
        if (live)
            rd->live_checked = now;
        rd->scans++;
        rd->bound = oldest < p->generation ? oldest : p->generation;
    }
    /* Entries are ordered by gen: the last durable one has the greatest. */
    if (!rd->unpinned && rd->durable == rd->tail && rd->pins[rd->durable - 1].gen < rd->bound) {
        release_all(p);
        return MP_OK;
    }
    while (rd->head < rd->durable && rd->pins[rd->head].gen < rd->bound) {
        unpin(p, rd->pins[rd->head].id);
        rd->head++;
    }
    if (rd->head == rd->tail) {
        rd->head = rd->durable = rd->tail = 0;
        if (p->pending_count == 0)
            rd->unpinned = 0; /* nothing pending is left without an entry */
    }
    return MP_OK;
}

int readers_settle(mp_pager *p, uint64_t later)
{
    if (!pinning(p))
        return 0;
    mp_readers *rd = p->rd;
    rd->durable = rd->tail - rd->head > later ? rd->tail - later : rd->head;
    (void)release_pins(p, 0);
    publish_pinned(p);
    return 1;
}

uint64_t readers_held(const mp_pager *p)
{
    return pinning(p) ? p->rd->durable - p->rd->head : 0;
}

uint64_t readers_releasable(const mp_pager *p)
{
    /* (a held count above the pending one, never expected, reads as none) */
    uint64_t held = readers_held(p);
    return held < p->pending_count ? p->pending_count - held : 0;
}

int readers_reclaim(mp_pager *p, int force)
{
    if (!pinning(p) || p->rd->head == p->rd->durable)
        return 0;
    uint64_t before = p->pending_count;
    (void)release_pins(p, force);
    publish_pinned(p);
    return p->pending_count != before;
}

void readers_after_reload(mp_pager *p)
{
    if (!pinning(p))
        return;
    mp_readers *rd = p->rd;
    /* Frees after the last durable point were rolled back: their pages are
     * allocated again. The durable ones are free in the reloaded state, and
     * pinned again. */
    rd->tail = rd->durable;
    for (uint64_t i = rd->head; i < rd->durable; i++) {
        uint64_t id = rd->pins[i].id;
        if (!bitmap_get(p->bits, id) && !bitmap_get(p->pending, id))
            hold(p, id);
    }
}

int mp_readers_pinned_locked(mp_pager *p, uint64_t *out_count)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!out_count)
        return MP_EINVALID_ARGUMENT;
    uint64_t n = 0;
    if (pinning(p)) {
        /* Look again first, testing every slot's lock, so the count is of
         * pages live readers hold now. */
        if (p->txn_depth == 0)
            (void)release_pins(p, 1);
        publish_pinned(p);
        n = p->rd->durable - p->rd->head;
    }
    *out_count = n;
    return MP_OK;
}

int mp_readers_scans_locked(const mp_pager *p, uint64_t *out_count)
{
    if (!p || !out_count)
        return MP_EINVALID_ARGUMENT;
    *out_count = p->rd ? p->rd->scans : 0;
    return MP_OK;
}

void pins_release(mp_pager *p)
{
    if (pinning(p) && !p->no_io)
        publish_writer(p->rd->fd, 0);
    free(p->rd->pins);
    p->rd->pins = NULL;
    p->rd->head = p->rd->durable = p->rd->tail = p->rd->cap = 0;
}
