/*
 * group.c - group commit: one flush carries every allocation change ready.
 *
 * Owns: the leader/follower protocol of an allocation-only commit, the
 * tickets that say which changes a flush carried, the frees made while a
 * flush is in flight (the later map), and the brief wait of a leader for the
 * threads the last flush woke.
 *
 * The protocol. A call applies its change under the pager's mutex and takes a
 * ticket, seq = ++change_seq. If durable_seq >= seq, a flush that started
 * after the change carried it: done. If a flush is in flight, it waits on
 * `done` (mutex released). Otherwise it leads: writes every change made so
 * far into the inactive metadata copy (commit_write_copy, which also makes
 * that copy the active one in memory), notes target = change_seq, sets
 * flushing, RELEASES the mutex for the flush, takes it again, releases the
 * frees the commit carried, sets durable_seq = target and wakes the waiters.
 * Every call returns only once its own change is durable.
 *
 * Invariants (all fields are read and written with the mutex held):
 *   - at most one flush is in flight, and while it is, no metadata copy is
 *     written: the inactive copy holds the partner of the last durable one.
 *     Every other writer of the committed state first waits for the flush
 *     and writes the changes still waiting (group_wait_idle): pager_enter
 *     does it for every call but reads and the calls that may join a group,
 *     and pager_commit for every commit that is not a group's;
 *   - a page freed by a commit that is not durable is never handed out: in
 *     "compat" and "fast" every free is pending until its commit is durable,
 *     and a free made while a flush is in flight (so not in it) is noted in
 *     `later` (and counted in later_pins when pinned for readers), so the
 *     release after the flush keeps it pending for the next commit;
 *   - a thread releases the mutex for a flush or a wait only when it holds it
 *     once (a call at its entry): a group of calls held with mp_pager_lock
 *     is never interleaved, and mp_pager_lock waits for a flush in flight
 *     before it returns, so none is in flight while a caller holds a group;
 *   - a failed flush poisons the pager; the waiters it carried get its error
 *     (failed_seq), later ones MP_EUNAVAILABLE.
 * A single thread never waits: the leader waits for more changes (gather)
 * only when the last flush carried more than one, and at most that flush's
 * time.
 */
#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

/* The longest a leader waits for more changes, whatever the last flush cost. */
#define GATHER_MAX_NS 500000u

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int group_init(mp_pager *p)
{
    return pthread_cond_init(&p->lk.done, NULL) == 0 ? MP_OK : MP_ENO_MEMORY;
}

void group_release(mp_pager *p)
{
    mp_lock *g = &p->lk;
    (void)pthread_cond_destroy(&g->done);
    if (g->later)
        os_free_zeroed(g->later, p->map_bytes);
    g->later = NULL;
    free(g->page0);
    g->page0 = NULL;
}

/* Waits for a flush to end with every hold of the mutex released, then
 * holds it again as often as before (depth is the caller's again). */
static void wait_done(mp_pager *p)
{
    uint32_t d = p->lk.depth;
    p->lk.depth = 0;
    for (uint32_t i = 1; i < d; i++)
        (void)pthread_mutex_unlock(&p->lk.mu);
    (void)pthread_cond_wait(&p->lk.done, &p->lk.mu);
    for (uint32_t i = 1; i < d; i++)
        (void)pthread_mutex_lock(&p->lk.mu);
    p->lk.depth = d;
}

void group_note_later(mp_pager *p, uint64_t id, int pinned)
{
    mp_lock *g = &p->lk;
    if (!g->later && !(g->later = os_alloc_zeroed(p->map_bytes)))
        return; /* no memory: the free is released with the flush in flight */
    if (bitmap_get(g->later, id))
        return;
    bitmap_set(g->later, id);
    uint64_t w = id >> 6;
    if (g->later_count == 0 || w < g->later_lo)
        g->later_lo = w;
    if (g->later_count == 0 || w > g->later_hi)
        g->later_hi = w;
    g->later_count++;
    g->later_pins += pinned != 0;
}

static void later_reset(mp_pager *p)
{
    mp_lock *g = &p->lk;
    if (g->later_count)
        memset(g->later + g->later_lo, 0, (size_t)(g->later_hi - g->later_lo + 1) * 8u);
    g->later_count = 0;
    g->later_pins = 0;
}

/* v0.2 "compat": page 0 names the new copy once it is durable, as the crate
 * reads the file (commit.c); part of the flush phase of a group. */
static int page0_due(const mp_pager *p)
{
    return p->durability == MP_DURABILITY_COMPAT && !pager_extended(p) &&
           p->minor < MP_MINOR_EXTENDED;
}

/* The end of a flush carrying the tickets up to target. */
static int finish(mp_pager *p, uint64_t target, int rc)
{
    mp_lock *g = &p->lk;
    if (rc != MP_OK) {
        p->poisoned = 1;
        g->failed_seq = target;
        g->flush_rc = rc;
    } else {
        if (page0_due(p))
            p->page0_stale = 0;
        commit_release_pending(p);
        g->last_group = target - g->durable_seq;
        g->last_behind = g->change_seq - target;
        g->durable_seq = target;
    }
    later_reset(p);
    (void)pthread_cond_broadcast(&g->done);
    return rc;
}

/* Writes and flushes the changes still waiting for a group flush, with the
 * mutex held throughout: before any other commit, which must not pair them
 * with its own state nor release their frees. */
static int absorb(mp_pager *p)
{
    mp_lock *g = &p->lk;
    if (g->change_seq == g->durable_seq || p->poisoned)
        return p->poisoned ? MP_EUNAVAILABLE : MP_OK;
    uint64_t target = g->change_seq;
    p->changed = 0;
    mp_flush f;
    int rc = commit_write_copy(p, &f);
    if (rc == MP_OK)
        rc = commit_flush(&p->map, &f);
    if (rc == MP_OK && page0_due(p))
        rc = pager_write_page0(p, 1);
    return finish(p, target, rc);
}

void group_wait_idle(mp_pager *p)
{
    while (p->lk.flushing)
        wait_done(p);
    (void)absorb(p);
}

int group_eligible(const mp_pager *p)
{
    if (p->durability == MP_DURABILITY_NONE || p->read_only || p->lk.depth != 1 ||
        p->txn_depth > 0 || p->rec_new || p->dirty_count > 0)
        return 0;
    return !(dir_any_dirty(p) || p->index_changed || p->dir_count != p->dir_committed);
}

/* Lets the other threads run, with every hold of the mutex released (so
 * they can add their changes), then holds it again as often as before. */
static void yield_released(mp_pager *p)
{
    uint32_t d = p->lk.depth;
    p->lk.depth = 0;
    for (uint32_t i = 0; i < d; i++)
        (void)pthread_mutex_unlock(&p->lk.mu);
    /* (a scheduling hint that cannot fail in a way that matters: not one of
     * the I/O calls os.c routes through its faultable table) */
    (void)sched_yield();
    for (uint32_t i = 0; i < d; i++)
        (void)pthread_mutex_lock(&p->lk.mu);
    p->lk.depth = d;
}

/* Before writing, the leader waits briefly for the threads the last flush
 * woke to come back with their next change: as many changes as the last
 * group carried, for at most its flush time.
 *
 * It polls, yielding the CPU between looks, rather than sleep on a condition
 * the last thread back would signal: that wake-up (on a virtual machine, an
 * idle CPU's halt and the interrupt that ends it) costs about as much as a
 * thread's way back through the GIL. Measured here with 4 threads in "fast",
 * alternating builds: 25,800 commits/s polling, 20,900 sleeping (medians of
 * 8 runs), for no more CPU time. The poll lasts one flush time at most, and
 * only when the last flush carried more than one change: one thread alone
 * never polls. */
static void gather(mp_pager *p, uint64_t seq)
{
    mp_lock *g = &p->lk;
    /* The threads the last flush woke, and those already waiting behind it:
     * with two groups in turn, each leader would otherwise go with its own
     * half, and every flush carry half the threads. */
    uint64_t want = g->last_group + g->last_behind;
    if (want <= 1 || g->change_seq - g->durable_seq >= want)
        return;
    /* Up to one flush time: the woken threads come back one by one, each
     * through the GIL, in about half to two thirds of a flush here; waiting
     * only half of it, the leader often left without the last of them. */
    uint64_t span = g->last_flush_ns;
    uint64_t until = now_ns() + (span < GATHER_MAX_NS ? span : GATHER_MAX_NS);
    g->gathering = 1;
    while (g->change_seq - g->durable_seq < want && g->durable_seq < seq && !p->poisoned &&
           now_ns() < until)
        yield_released(p);
    g->gathering = 0;
    /* Calls that arrived meanwhile wait for this leader, whose flush carries
     * their changes and wakes them. If it will not lead (an absorb carried
     * its change, or the pager failed), they must look again. */
    if (g->durable_seq >= seq || p->poisoned)
        (void)pthread_cond_broadcast(&g->done);
}

static int lead(mp_pager *p)
{
    mp_lock *g = &p->lk;
    int page0 = page0_due(p);
    if (page0 && !g->page0 && !(g->page0 = malloc(p->page_size)))
        return absorb(p); /* no memory for page 0 aside: serially, then */
    uint64_t target = g->change_seq;
    p->changed = 0;
    mp_flush f;
    int rc = commit_write_copy(p, &f);
    if (rc != MP_OK)
        return finish(p, target, rc);
    if (page0)
        commit_page0_build(p, g->page0);
    uint32_t page_size = p->page_size;
    /* The flush reads a copy of the map: a follower may grow it meanwhile
     * (earlier ranges stay mapped, os.c). */
    mp_map m = p->map;
    g->flushing = 1;
    uint64_t t0 = now_ns();
    p->lk.depth = 0;
    (void)pthread_mutex_unlock(&p->lk.mu);
    rc = commit_flush(&m, &f);
    /* v0.2 "compat": page 0 names the new copy once it is durable, then is
     * flushed itself: the crate's two flushes, both in the flush phase. */
    if (rc == MP_OK && page0 && (rc = commit_page0_write(&m, page_size, g->page0)) == MP_OK)
        rc = os_flush_range(&m, 0, page_size);
    (void)pthread_mutex_lock(&p->lk.mu);
    p->lk.depth = 1;
    g->flushing = 0;
    g->last_flush_ns = now_ns() - t0;
    return finish(p, target, rc);
}

int group_commit(mp_pager *p)
{
    mp_lock *g = &p->lk;
    uint64_t seq = ++g->change_seq;
    for (;;) {
        if (g->durable_seq >= seq)
            return MP_OK;
        if (g->failed_seq >= seq)
            return g->flush_rc;
        if (p->poisoned)
            return MP_EUNAVAILABLE;
        if (!g->flushing && !g->gathering) {
            gather(p, seq);
            if (g->durable_seq >= seq || p->poisoned || g->flushing)
                continue; /* carried, or failed, while we gathered */
            return lead(p);
        }
        wait_done(p);
    }
}
