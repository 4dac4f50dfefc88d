/*
 * retry.c - a reader's looks again: a writer's commit in progress, told from damage.
 *
 * Owns: the cheap refusal of a file no look could accept (from the two
 * metadata headers), and the loop that looks again while what a reader sees
 * could be a writer's commit in progress (recover.c makes each look).
 *
 * Invariants: a writer never retries (it holds the lock: nothing can be in
 * progress); a reader retries only what a commit in progress could explain,
 * keeps looking while the metadata generation moves (the writer progresses),
 * within MAX_READER_ATTEMPTS, and copies pages 0-2 at most QUIET_COPY_BUDGET
 * bytes' worth while nothing moves.
 */
#include "mp_internal.h"

#include <string.h>
#include <time.h>

/* At 2 ms apart, about half a second of a writer's progress. */
#define MAX_READER_ATTEMPTS 200
/* Looks without progress before a reader believes damage, and the most the
 * pages 0-2 they copy may add up to: with huge pages the first verdict comes
 * sooner, so refusing a file never costs many copies of its largest pages. */
#define QUIET_LOOKS 5
#define QUIET_COPY_BUDGET ((uint64_t)64 << 20)

/* Whether a metadata copy's header could be one a writer wrote to a file of
 * file_pages pages: a writer grows the file, durably, before a commit counts
 * the new pages, so a committed total is never past the end of file. */
static int header_plausible(const uint8_t *meta, uint64_t file_pages)
{
    uint64_t total = mp_load_u64(meta);
    return total >= MP_RESERVED_PAGES && total <= file_pages;
}

/* Refuses, from the two 24-byte metadata headers, a file that no look could
 * accept: neither copy claims a page count this file has. This costs nothing
 * per page, where a full look copies pages 0-2 (3 GiB with 1 GiB pages). A
 * writer only ever rewrites the copy that is not committed, so while a file
 * is in use at least one header is plausible: a refusal here is final. */
static int headers_refuse(mp_pager *p, mp_open_report *rep)
{
    uint64_t size;
    if (os_file_size(p->fd, &size) != MP_OK)
        return MP_OK; /* the full look decides */
    uint64_t pages = size / p->page_size;
    uint8_t head[2][MP_META_HEADER];
    for (int c = 0; c < 2; c++)
        memcpy(head[c], pager_page_ptr(p, 1 + (uint64_t)c), MP_META_HEADER);
    if (header_plausible(head[0], pages) || header_plausible(head[1], pages))
        return MP_OK;
    /* A copy that counts pages past the end may be a whole commit of a file
     * that was cut: the full look tells it from damage by its CRC, and names
     * the cut (FileTruncated) instead of calling the copies damaged. Its cost
     * is still three pages, whatever the count claims. */
    for (int c = 0; c < 2; c++) {
        uint64_t total = mp_load_u64(head[c]);
        if (total > pages && total <= p->max_pages)
            return MP_OK;
    }
    memset(rep, 0, sizeof *rep);
    for (int c = 0; c < 2; c++) {
        rep->generation[c] = mp_load_u64(head[c] + 8);
        rep->meta_problem[c] = MP_META_BAD_TOTAL;
    }
    return MP_ECORRUPT_METADATA;
}

/* Whether a failed look could be a writer's commit in progress rather than
 * damage. Both metadata copies failing with intact CRCs cannot be: a commit
 * writes one copy, whole, and a torn copy fails its CRC. */
static int writer_may_explain(int rc, const mp_open_report *rep)
{
    if (rc != MP_ECORRUPT_METADATA)
        return 1;
    for (int c = 0; c < 2; c++) {
        uint32_t why = rep->meta_problem[c];
        if (why == MP_META_BAD_CRC || why == MP_META_BAD_TOTAL || why == MP_META_BAD_FREE_MAP)
            return 1;
    }
    return 0;
}

/* A reader may look while a writer is rewriting page 0 or a directory page;
 * what it then sees can fail a CRC for a moment. Readers retry briefly, and
 * only what a commit in progress could explain. */
int pager_load_with_retries(mp_pager *p, uint64_t file_len, mp_open_report *rep,
                             int *page0_stale)
{
    int rc = headers_refuse(p, rep);
    if (rc != MP_OK)
        return rc;
    rc = pager_load_state(p, file_len, rep, page0_stale);
    /* Damage a reader sees may be a writer's write in progress: look again a
     * few times before believing it (an error, or a copy to discard). */
    uint32_t transient = MP_REC_META_A_DAMAGED | MP_REC_META_B_DAMAGED | MP_REC_DIR_FALLBACK |
                         MP_REC_DIR_ENTRY_DROPPED | MP_REC_DIR_INDEX_TORN;
    /* In the extended layout a reader reads free-map pages for a while, and a
     * busy writer may rewrite a copy it needs twice in that time (each commit
     * writes the inactive copies): nothing wrong with the file, only a race.
     * While the metadata generation moves between attempts the writer is
     * making progress, so keep looking, within a bound; with no progress,
     * five looks (about 10 ms) before believing it is damage, fewer when
     * pages are so large that five copies of pages 0-2 would pass the budget. */
    uint64_t look_bytes = (uint64_t)p->page_size * MP_RESERVED_PAGES;
    int quiet = QUIET_COPY_BUDGET / look_bytes < QUIET_LOOKS
                    ? (int)(QUIET_COPY_BUDGET / look_bytes)
                    : QUIET_LOOKS;
    if (quiet < 1)
        quiet = 1;
    int limit = quiet;
    uint64_t seen = rep->generation[0] > rep->generation[1] ? rep->generation[0]
                                                            : rep->generation[1];
    for (int attempt = 0;
         p->read_only && attempt < limit &&
         ((rc > 0 && rc != MP_ENO_MEMORY && writer_may_explain(rc, rep)) ||
          (rc == MP_OK && (rep->flags & transient)));
         attempt++) {
        struct timespec nap = {0, 2 * 1000 * 1000};
        nanosleep(&nap, NULL);
        /* The writer may have grown the file meanwhile: a copy that counts
         * pages past the length seen before is not damage. */
        uint64_t size;
        if (os_file_size(p->fd, &size) == MP_OK) {
            uint64_t len = size < p->map.limit ? size : p->map.limit;
            if (len > p->map.mapped && os_map_extend(&p->map, len) == MP_OK)
                file_len = len;
        }
        dir_release(p);
        memset(rep, 0, sizeof *rep);
        if ((rc = headers_refuse(p, rep)) != MP_OK)
            return rc;
        rc = pager_load_state(p, file_len, rep, page0_stale);
        uint64_t now = rep->generation[0] > rep->generation[1] ? rep->generation[0]
                                                               : rep->generation[1];
        if (now != seen && limit < MAX_READER_ATTEMPTS)
            limit = attempt + 1 + quiet < MAX_READER_ATTEMPTS ? attempt + 1 + quiet
                                                              : MAX_READER_ATTEMPTS;
        seen = now;
    }
    return rc;
}

