/*
 * check_harness.c - C-level tests of pager_check (csrc/check.c), built with
 * MAPPEDPAGES_CHECK by tests/test_pager_check.py. Each case breaks one
 * invariant in memory, as a bug would, and expects the next commit to fail
 * with MP_EINTERNAL and poison the pager (never an abort).
 */
#include "mp_internal.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static mp_pager *fresh(const char *path)
{
    mp_options o;
    memset(&o, 0, sizeof o);
    o.page_size = 1024;
    unlink(path);
    mp_pager *p = NULL;
    if (mp_pager_create(path, &o, &p) != MP_OK)
        return NULL;
    return p;
}

/* Breaks one invariant of p; returns a name for the report. */
static const char *breaks(mp_pager *p, int which)
{
    switch (which) {
    case 0:
        /* A page past the end of the file marked allocated. */
        bitmap_set(p->bits, p->total_pages + 1);
        return "bit past total";
    case 1: {
        /* A system page the free map counts free (the highest free page:
         * the next allocation takes the lowest). */
        uint64_t id = p->total_pages - 1;
        while (id > MP_RESERVED_PAGES && bitmap_get(p->bits, id))
            id--;
        bitmap_set(p->system, id);
        p->system_count += 1;
        return "system outside bits";
    }
    case 2:
        p->system_count += 1;
        return "system_count";
    default:
        p->protected_count += 1;
        return "protected_count";
    }
}

/* Flag combinations no named state allows, which only the state check sees
 * (the maps stay consistent): pager_check fails and poisons. */
static int flag_cases(const char *path)
{
    int failures = 0;
    for (int which = 0; which < 2; which++) {
        mp_pager *p = fresh(path);
        uint64_t id;
        if (!p)
            return 1;
        const char *name;
        if (which == 0) {
            /* Deferred metadata in "compat", which never defers it. */
            p->meta_unwritten = 1;
            name = "meta_unwritten in compat";
        } else {
            /* A free page marked pending outside a transaction in "compat". */
            uint64_t free_id = p->total_pages - 1;
            bitmap_set(p->pending, free_id);
            p->pending_lo = p->pending_hi = free_id >> 6;
            p->pending_count = 1;
            name = "pending in compat";
        }
        int rc = pager_check(p);
        int after = mp_pager_alloc(p, 0, &id);
        printf("%s: %d then %d\n", name, rc, after);
        if (rc != MP_EINTERNAL || after != MP_EUNAVAILABLE)
            failures++;
        mp_pager_release(p);
    }
    return failures;
}

static int expect_state(const mp_pager *p, mp_pager_state want, const char *when)
{
    mp_pager_state got = pager_state(p);
    if (got == want)
        return 0;
    printf("state %s: %d, expected %d\n", when, (int)got, (int)want);
    return 1;
}

/* The named states through a writer's life, a reader and a fork child's copy. */
static int state_walk(const char *path)
{
    mp_pager *p = fresh(path);
    uint64_t id;
    if (!p)
        return 1;
    int f = expect_state(p, MP_PAGER_WRITER_IDLE, "after create");
    f += mp_txn_begin(p) != MP_OK || expect_state(p, MP_PAGER_WRITER_TXN, "in a transaction");
    f += mp_pager_alloc(p, 0, &id) != MP_OK || mp_pager_free(p, id) != MP_OK;
    f += mp_txn_abort(p) != MP_OK || expect_state(p, MP_PAGER_WRITER_IDLE, "after abort");
    mp_pager_release(p);
    mp_options o;
    memset(&o, 0, sizeof o);
    o.durability = MP_DURABILITY_NONE;
    mp_open_report rep;
    f += mp_pager_open(path, &o, &p, &rep) != MP_OK;
    f += mp_pager_alloc(p, 0, &id) != MP_OK || expect_state(p, MP_PAGER_WRITER_DEFERRED, "none");
    f += mp_pager_sync(p) != MP_OK || expect_state(p, MP_PAGER_WRITER_IDLE, "after sync");
    mp_pager *r = NULL;
    o.read_only = 1;
    f += mp_pager_open(path, &o, &r, &rep) != MP_OK || expect_state(r, MP_PAGER_READER, "reader");
    f += mp_pager_refresh(r, &rep) != MP_OK || expect_state(r, MP_PAGER_READER, "refreshed");
    f += mp_pager_forget(p) != MP_OK || expect_state(p, MP_PAGER_FORGOTTEN, "forgotten");
    f += mp_pager_alloc(p, 0, &id) != MP_EUNAVAILABLE;
    mp_pager_release(r);
    mp_pager_release(p);
    printf("states: %s\n", f ? "wrong" : "ok");
    return f;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    int failures = 0;
    for (int which = 0; which < 4; which++) {
        mp_pager *p = fresh(argv[1]);
        uint64_t id, some[8];
        /* Pages 3-10 allocated and freed again: free pages to take. */
        if (!p || mp_pager_alloc_bulk(p, 8, 0, some) != MP_OK ||
            mp_pager_free_bulk(p, some, 8) != MP_OK) {
            printf("setup failed\n");
            return 2;
        }
        const char *name = breaks(p, which);
        int rc = mp_pager_alloc(p, 0, &id);
        int after = mp_pager_alloc(p, 0, &id);
        printf("%s: %d then %d\n", name, rc, after);
        if (rc != MP_EINTERNAL || after != MP_EUNAVAILABLE)
            failures++;
        mp_pager_release(p);
    }
    failures += flag_cases(argv[1]);
    failures += state_walk(argv[1]);
    /* An intact pager passes through many commits. */
    mp_pager *p = fresh(argv[1]);
    uint64_t ids[64];
    for (int i = 0; i < 50 && p; i++) {
        if (mp_pager_alloc_bulk(p, 64, 0, ids) != MP_OK ||
            mp_pager_free_bulk(p, ids, 32) != MP_OK) {
            printf("intact pager failed at %d\n", i);
            failures++;
            break;
        }
    }
    if (p)
        mp_pager_release(p);
    return failures ? 1 : 0;
}
