/*
 * scan.c - a record tree's range read: its records with lo <= key < hi, in order.
 *
 * Owns: mp_tree_scan. A scan keeps nothing between calls: each call descends
 * from the root to the first key it is asked for, copies every page it reaches
 * and checks it whole (rec_page_load, the one checker of a page's format, the
 * one mp_tree_apply uses), and copies records out until the caller's buffer is
 * full or the range ends; the caller goes on from the last key it got
 * (MP_SCAN_AFTER). Between two calls the tree may change: the next call reads
 * whatever the ids name then, checked as ever, and never reads past a page.
 *
 * Invariants of one call:
 *   - the records it writes have strictly ascending keys, after lo (or at it)
 *     and before hi; a damaged tree whose pages disagree on the order is refused
 *     (MP_EINVALID_ARGUMENT), so a caller going on from its last key always
 *     moves on, and a scan of any file ends;
 *   - it copies at most total_pages pages and goes at most REC_MAX_DEPTH levels
 *     deep: a tree reaches each of its pages once (more is a cycle);
 *   - it reads the caller's keys once, into its own memory, and only writes
 *     the caller's buffer.
 */
#include "mp_internal.h"
#include "mp_bytes.h"
#include "mp_records.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const mp_pager *p;
    uint8_t *copies; /* level d's page copy at d * page_size */
    uint64_t copies_cap, visits;
    uint32_t depth;  /* the level of the page records come from */
    uint8_t kind[REC_MAX_DEPTH];
    uint32_t at[REC_MAX_DEPTH], left[REC_MAX_DEPTH]; /* per level: next record, records left */
    uint8_t *last;   /* the key every next record must follow (lo at first) */
    uint64_t last_cap;
    uint32_t last_len;
    int has_last, last_strict;
    const uint8_t *hi;
    uint32_t hi_len;
    int has_hi;
} scan;

static uint8_t *level_page(const scan *s, uint32_t d)
{
    return s->copies + (uint64_t)d * s->p->page_size;
}

/* Copy page id to level d and check it: the visit is counted first, so a walk
 * that meets a page twice fails by the file's size at the latest. */
static int load(scan *s, uint32_t d, uint64_t id)
{
    if (d >= REC_MAX_DEPTH || ++s->visits > s->p->total_pages)
        return MP_EINVALID_ARGUMENT; /* a page reached twice: a cycle, not a tree */
    if (rec_reserve(&s->copies, &s->copies_cap, (uint64_t)(d + 1) * s->p->page_size) != MP_OK)
        return MP_ENO_MEMORY;
    uint32_t n;
    int rc = rec_page_load(s->p, id, level_page(s, d), &s->kind[d], &n);
    if (rc != MP_OK)
        return d == 0 ? rc : MP_EINVALID_ARGUMENT; /* a child: the tree is damaged */
    s->depth = d;
    s->at[d] = REC_PAGE_HEADER;
    s->left[d] = n;
    return MP_OK;
}

static const uint8_t *next_rec(const scan *s, uint32_t d)
{
    return level_page(s, d) + s->at[d];
}

static uint32_t rec_size(const uint8_t *rec)
{
    return REC_HEAD + rec_klen(rec) + mp_load_u32(rec + 2);
}

static void skip(scan *s, uint32_t d)
{
    s->at[d] += rec_size(next_rec(s, d));
    s->left[d]--;
}

/* Whether a key is past the last one taken (or lo): strictly, or at it. */
static int follows_last(const scan *s, const uint8_t *key, uint32_t klen)
{
    if (!s->has_last)
        return 1;
    int c = rec_key_cmp(key, klen, s->last, s->last_len);
    return s->last_strict ? c > 0 : c >= 0;
}

static int before_hi(const scan *s, const uint8_t *key, uint32_t klen)
{
    return !s->has_hi || rec_key_cmp(key, klen, s->hi, s->hi_len) < 0;
}

/* Go down from the current level, while it is a branch, through the child the
 * walk needs next: the one lo falls in on the first descent (the last whose
 * key is at most lo), the next child after. Stops at a leaf. */
static int descend(scan *s, int to_lo)
{
    while (s->kind[s->depth] == MP_RECORD_BRANCH) {
        uint32_t d = s->depth;
        if (s->left[d] == 0)
            return MP_OK; /* (a branch has records: checked on load) */
        while (to_lo && s->has_last && s->left[d] > 1) {
            const uint8_t *nx = next_rec(s, d) + rec_size(next_rec(s, d));
            if (rec_key_cmp(rec_key(nx), rec_klen(nx), s->last, s->last_len) > 0)
                break; /* the next child starts past lo */
            skip(s, d);
        }
        const uint8_t *rec = next_rec(s, d);
        uint64_t child = mp_load_u64(rec + REC_HEAD + rec_klen(rec));
        skip(s, d);
        int rc = load(s, d + 1, child);
        if (rc != MP_OK)
            return rc;
    }
    return MP_OK;
}

/* Move to the next page with records to read: up to the nearest level with a
 * child left, and down its next child. *out_end when the tree (or the range)
 * has no more. */
static int advance(scan *s, int *out_end)
{
    for (;;) {
        if (s->kind[s->depth] == MP_RECORD_LEAF && s->left[s->depth] > 0)
            return MP_OK;
        while (s->left[s->depth] == 0) {
            if (s->depth == 0) {
                *out_end = 1;
                return MP_OK;
            }
            s->depth--;
        }
        if (s->kind[s->depth] == MP_RECORD_BRANCH) {
            const uint8_t *rec = next_rec(s, s->depth); /* the child's lowest key */
            if (!before_hi(s, rec_key(rec), rec_klen(rec))) {
                *out_end = 1;
                return MP_OK;
            }
            int rc = descend(s, 0);
            if (rc != MP_OK)
                return rc;
        }
    }
}

static int remember(scan *s, const uint8_t *key, uint32_t klen)
{
    if (rec_reserve(&s->last, &s->last_cap, klen ? klen : 1) != MP_OK)
        return MP_ENO_MEMORY;
    if (klen)
        memcpy(s->last, key, klen);
    s->last_len = klen;
    s->has_last = 1;
    return MP_OK;
}

/* Copy the range's records into buf from where the descent left the walk. */
static int collect(scan *s, uint8_t *buf, uint64_t cap, uint64_t *used, int *more)
{
    for (;;) {
        int end = 0, rc = advance(s, &end);
        if (rc != MP_OK || end)
            return rc;
        const uint8_t *rec = next_rec(s, s->depth);
        uint32_t klen = rec_klen(rec), size = rec_size(rec);
        if (!follows_last(s, rec_key(rec), klen)) {
            if (*used)
                return MP_EINVALID_ARGUMENT; /* out of order across pages: damaged */
            skip(s, s->depth); /* not past lo yet: lo's leaf, before it */
            continue;
        }
        if (!before_hi(s, rec_key(rec), klen))
            return MP_OK;
        if (*used + size > cap) {
            *more = 1;
            return MP_OK;
        }
        memcpy(buf + *used, rec, size);
        *used += size;
        s->last_strict = 1;
        if ((rc = remember(s, rec_key(rec), klen)) != MP_OK)
            return rc;
        skip(s, s->depth);
    }
}

int mp_tree_scan_locked(const mp_pager *p, uint64_t root, const uint8_t *lo, uint32_t lo_len,
                        const uint8_t *hi, uint32_t hi_len, uint32_t flags, uint8_t *buf,
                        uint64_t cap, uint64_t *out_used, int *out_more)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if ((!lo && lo_len) || (!hi && hi_len) || !buf || cap < p->page_size || !out_used ||
        !out_more || (flags & ~(uint32_t)(MP_SCAN_FROM | MP_SCAN_AFTER | MP_SCAN_TO)))
        return MP_EINVALID_ARGUMENT;
    scan s;
    memset(&s, 0, sizeof s);
    s.p = p;
    s.has_hi = (flags & MP_SCAN_TO) != 0;
    s.hi_len = s.has_hi ? hi_len : 0;
    uint8_t *own_hi = malloc(s.hi_len ? s.hi_len : 1);
    rc = own_hi ? MP_OK : MP_ENO_MEMORY;
    if (rc == MP_OK && s.hi_len)
        memcpy(own_hi, hi, s.hi_len); /* once: the caller may change its keys */
    s.hi = own_hi;
    if (rc == MP_OK && (flags & (MP_SCAN_FROM | MP_SCAN_AFTER)))
        rc = remember(&s, lo, lo_len);
    s.last_strict = (flags & MP_SCAN_AFTER) != 0;
    *out_used = 0;
    *out_more = 0;
    if (rc == MP_OK && (rc = load(&s, 0, root)) == MP_OK && (rc = descend(&s, 1)) == MP_OK)
        rc = collect(&s, buf, cap, out_used, out_more);
    free(own_hi);
    free(s.last);
    free(s.copies);
    return rc;
}
