/*
 * subpage.c - the sub-page allocator: equal slices of the pager's pages.
 *
 * Owns: the in-memory state of an mp_subpage, that is, which big pages it has
 * checked out from its pager and which sub-slots of each are in use. None of
 * it is written to disk (the Rust crate keeps the same state in memory only);
 * after a reopen the caller rebuilds it with mp_subpage_restore from the ids
 * it knows are live. Big pages come and go only through the pager's public
 * calls, so every checkout and every return is one ordinary durable commit.
 *
 * A sub-page id is an address, not a handle: id = big_page * slots + slot,
 * with slots = page_size / sub_size a power of two no larger than 64. That is
 * what lets a caller store ids and hand them back after a reopen.
 *
 * Invariants, kept between calls:
 *   - The table holds exactly the big pages this allocator has checked out;
 *     each record's mask has bit i set when sub-slot i is in use, and a mask
 *     is never zero: the call that frees a page's last sub-slot also returns
 *     the page to the pager and drops its record.
 *   - avail[] lists, once each and in no order, the pages of the table whose
 *     mask is not full, and each such record's pos is its index in avail[];
 *     a full page's pos is NO_POS. alloc pops from avail[], so it finds a
 *     free slot without a search.
 *   - The table is at most half full and avail_cap >= count, and a call
 *     that adds records reserves room for them (reserve) before it asks the
 *     pager for pages: once the pager has committed, nothing can fail, so
 *     no error ever leaves a page checked out that the table does not know.
 *   - live equals the number of set bits over all masks.
 * On any error the state is as before the call. The allocator never outlives
 * its pager: the caller destroys it before, or instead of, using it after
 * mp_pager_close (destroy itself does not touch the pager).
 */
#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>

#define NO_POS UINT64_MAX
#define MIN_CAP 16u

/* Page ids below MP_RESERVED_PAGES are never handed out by the pager, so id 0
 * can mark an empty table cell and a zeroed table is an empty one. */
#define EMPTY_KEY 0u

typedef struct {
    uint64_t page;   /* big page id, EMPTY_KEY for an empty cell */
    uint64_t mask;   /* bit i set = sub-slot i in use */
    uint64_t pos;    /* index in avail[], or NO_POS when the mask is full */
    uint64_t mark;   /* scratch flag for free_bulk; zero between calls */
} sp_rec;

struct mp_subpage {
    mp_pager *p;
    uint32_t sub_size;
    uint32_t slots;        /* sub-slots per big page: 2..64 */
    uint32_t shift;        /* log2(slots) */
    uint32_t sub_log2;     /* log2(sub_size) */
    uint64_t full;         /* mask with all `slots` bits set */
    uint64_t live;         /* sub-pages in use */
    sp_rec *table;         /* open addressing, linear probing, cap a power of 2 */
    uint64_t cap;
    uint64_t count;        /* records in the table */
    uint64_t *avail;       /* big pages with a free sub-slot */
    uint64_t avail_n;
    uint64_t avail_cap;
};

/* ------------------------------------------------------------ hash table */

/* Page ids are small and mostly consecutive; Fibonacci hashing spreads them
 * over the table so linear probing stays short. */
static uint64_t slot_of(const mp_subpage *s, uint64_t page)
{
    return (page * UINT64_C(0x9E3779B97F4A7C15)) & (s->cap - 1);
}

static sp_rec *lookup(const mp_subpage *s, uint64_t page)
{
    if (page == EMPTY_KEY || s->cap == 0)
        return NULL;
    uint64_t i = slot_of(s, page);
    for (;;) {
        sp_rec *r = &s->table[i];
        if (r->page == page)
            return r;
        if (r->page == EMPTY_KEY)
            return NULL;
        i = (i + 1) & (s->cap - 1);
    }
}

/* Inserts an absent page; the caller has made room (table_reserve). */
static sp_rec *insert(mp_subpage *s, uint64_t page)
{
    uint64_t i = slot_of(s, page);
    while (s->table[i].page != EMPTY_KEY)
        i = (i + 1) & (s->cap - 1);
    sp_rec *r = &s->table[i];
    r->page = page;
    r->mask = 0;
    r->pos = NO_POS;
    r->mark = 0;
    s->count++;
    return r;
}

/* Backward-shift deletion: later records of the probe run move up into the
 * hole, so no tombstones build up under alloc/free churn. Record pointers
 * taken before this call are invalid after it. */
static void erase(mp_subpage *s, sp_rec *r)
{
    uint64_t mask = s->cap - 1;
    uint64_t hole = (uint64_t)(r - s->table);
    uint64_t i = hole;
    for (;;) {
        i = (i + 1) & mask;
        sp_rec *c = &s->table[i];
        if (c->page == EMPTY_KEY)
            break;
        uint64_t home = slot_of(s, c->page);
        /* c may fill the hole only if its home is not in (hole, i]. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            s->table[hole] = *c;
            hole = i;
        }
    }
    memset(&s->table[hole], 0, sizeof(sp_rec));
    s->count--;
}

static int rehash(mp_subpage *s, uint64_t new_cap)
{
    sp_rec *nt = calloc(new_cap, sizeof(sp_rec));
    if (!nt)
        return MP_ENO_MEMORY;
    sp_rec *old = s->table;
    uint64_t old_cap = s->cap;
    s->table = nt;
    s->cap = new_cap;
    s->count = 0;
    for (uint64_t i = 0; i < old_cap; i++) {
        if (old[i].page == EMPTY_KEY)
            continue;
        sp_rec *r = insert(s, old[i].page);
        r->mask = old[i].mask;
        r->pos = old[i].pos;
    }
    free(old);
    return MP_OK;
}

/* Makes room for `extra` more records: the table stays at most half full and
 * avail[] can hold every record. Changes nothing when it fails. */
static int reserve(mp_subpage *s, uint64_t extra)
{
    if (extra > UINT64_MAX / 4 - s->count)
        return MP_ENO_MEMORY;
    uint64_t need = s->count + extra;
    if (need > s->avail_cap) {
        uint64_t c = s->avail_cap ? s->avail_cap : MIN_CAP;
        while (c < need)
            c *= 2;
        if (c > SIZE_MAX / sizeof(uint64_t))
            return MP_ENO_MEMORY;
        uint64_t *na = realloc(s->avail, c * sizeof(uint64_t));
        if (!na)
            return MP_ENO_MEMORY;
        s->avail = na;
        s->avail_cap = c;
    }
    /* +1 keeps at least one empty cell, which ends every probe. */
    uint64_t want = s->cap ? s->cap : MIN_CAP;
    while (want < 2 * need + 1)
        want *= 2;
    if (want > SIZE_MAX / sizeof(sp_rec))
        return MP_ENO_MEMORY;
    if (want != s->cap)
        return rehash(s, want);
    return MP_OK;
}

/* Gives memory back after a big drop in held pages. Growth happens at half
 * full and this at one eighth, so churn cannot rehash on every call; a failed
 * allocation here is harmless, the larger table stays. */
static void maybe_shrink(mp_subpage *s)
{
    if (s->cap <= MIN_CAP || s->count * 8 >= s->cap)
        return;
    uint64_t want = s->cap;
    while (want / 2 >= MIN_CAP && want / 2 >= 4 * s->count + 1)
        want /= 2;
    (void)rehash(s, want);
}

/* ---------------------------------------------------------- avail stack */

static void avail_push(mp_subpage *s, sp_rec *r)
{
    r->pos = s->avail_n;
    s->avail[s->avail_n++] = r->page;
}

static void avail_remove(mp_subpage *s, sp_rec *r)
{
    uint64_t at = r->pos;
    uint64_t last = s->avail[--s->avail_n];
    if (at != s->avail_n) {
        s->avail[at] = last;
        lookup(s, last)->pos = at;
    }
    r->pos = NO_POS;
}

/* -------------------------------------------------------------- helpers */

static uint32_t log2_u32(uint32_t v)
{
    return (uint32_t)__builtin_ctz(v);
}

static int is_pow2(uint32_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

/* Takes the lowest free sub-slot of r, which has one. */
static uint64_t take_slot(mp_subpage *s, sp_rec *r)
{
    uint64_t slot = (uint64_t)__builtin_ctzll(~r->mask);
    r->mask |= (uint64_t)1 << slot;
    if (r->mask == s->full)
        avail_remove(s, r);
    s->live++;
    return (r->page << s->shift) | slot;
}

/* Finds the record and bit of a sub-page that may be freed. A page that is
 * not ours but free in the pager cannot hold a live sub-page, so freeing into
 * it is a double free (the usual case: the page was returned when its last
 * sub-page was freed); any other page not ours is out of bounds. */
static int find_live(const mp_subpage *s, uint64_t id, sp_rec **out_r, uint64_t *out_bit)
{
    uint64_t page = id >> s->shift;
    uint64_t bit = (uint64_t)1 << (id & (s->slots - 1u));
    sp_rec *r = lookup(s, page);
    if (!r) {
        const mp_pager *p = s->p;
        if (page >= MP_RESERVED_PAGES && page < p->total_pages && !bitmap_get(p->system, page) &&
            !bitmap_get(p->bits, page))
            return MP_EDOUBLE_FREE;
        return MP_EOUT_OF_BOUNDS;
    }
    if (!(r->mask & bit))
        return MP_EDOUBLE_FREE;
    *out_r = r;
    *out_bit = bit;
    return MP_OK;
}

mp_pager *subpage_pager(const mp_subpage *s)
{
    return s ? s->p : NULL;
}

static int usable(const mp_subpage *s)
{
    if (!s)
        return MP_EINVALID_ARGUMENT;
    return pager_usable(s->p, 1);
}

/* ----------------------------------------------------------- public API */

int mp_subpage_new_locked(mp_pager *p, uint32_t sub_size, mp_subpage **out)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (!out)
        return MP_EINVALID_ARGUMENT;
    if (!is_pow2(sub_size) || sub_size >= p->page_size || p->page_size / sub_size > 64)
        return MP_EINVALID_ARGUMENT;
    mp_subpage *s = calloc(1, sizeof *s);
    if (!s)
        return MP_ENO_MEMORY;
    s->p = p;
    s->sub_size = sub_size;
    s->slots = p->page_size / sub_size;
    s->shift = log2_u32(s->slots);
    s->sub_log2 = log2_u32(sub_size);
    s->full = s->slots == 64 ? UINT64_MAX : ((uint64_t)1 << s->slots) - 1;
    *out = s;
    return MP_OK;
}

int mp_subpage_clear_locked(mp_subpage *s)
{
    if (!s)
        return MP_EINVALID_ARGUMENT;
    if (s->table)
        memset(s->table, 0, (size_t)s->cap * sizeof *s->table);
    s->count = 0;
    s->avail_n = 0;
    s->live = 0;
    return MP_OK;
}

int mp_subpage_destroy(mp_subpage *s)
{
    if (!s)
        return MP_EINVALID_ARGUMENT;
    /* Touches only our own memory: the pager may already be closed. */
    free(s->table);
    free(s->avail);
    free(s);
    return MP_OK;
}

int mp_subpage_alloc_locked(mp_subpage *s, uint64_t *out_id)
{
    int rc = usable(s);
    if (rc != MP_OK)
        return rc;
    if (!out_id)
        return MP_EINVALID_ARGUMENT;
    if (s->avail_n > 0) {
        *out_id = take_slot(s, lookup(s, s->avail[s->avail_n - 1]));
        return MP_OK;
    }
    /* Room first: once the pager has committed the page, nothing may fail. */
    if ((rc = reserve(s, 1)) != MP_OK)
        return rc;
    uint64_t page;
    if ((rc = mp_pager_alloc(s->p, 0, &page)) != MP_OK)
        return rc;
    if (lookup(s, page)) {
        /* The pager handed out a page we hold, so the caller freed it in the
         * pager behind our back. Undo our checkout and refuse with a code of
         * its own, so the caller can tell this misuse apart. */
        (void)mp_pager_free(s->p, page);
        return MP_ESUBPAGE_OWNED;
    }
    sp_rec *r = insert(s, page);
    avail_push(s, r);
    *out_id = take_slot(s, r);
    return MP_OK;
}

int mp_subpage_free_locked(mp_subpage *s, uint64_t id)
{
    int rc = usable(s);
    if (rc != MP_OK)
        return rc;
    sp_rec *r;
    uint64_t bit;
    if ((rc = find_live(s, id, &r, &bit)) != MP_OK)
        return rc;
    if (r->mask == bit) {
        /* The last sub-slot: the page goes back first, so that when the
         * pager refuses, the sub-page is still ours and nothing changed. */
        if ((rc = mp_pager_free(s->p, r->page)) != MP_OK)
            return rc;
        if (r->pos != NO_POS)
            avail_remove(s, r);
        erase(s, r);
        s->live--;
        maybe_shrink(s);
        return MP_OK;
    }
    if (r->mask == s->full)
        avail_push(s, r);
    r->mask &= ~bit;
    s->live--;
    return MP_OK;
}

int mp_subpage_alloc_bulk_locked(mp_subpage *s, uint64_t n, uint64_t *out_ids)
{
    int rc = usable(s);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!out_ids)
        return MP_EINVALID_ARGUMENT;
    /* Free sub-slots in the pages we hold, then whole pages for the rest. */
    uint64_t spare = (s->count << s->shift) - s->live;
    uint64_t fresh = 0;
    if (n > spare) {
        uint64_t rest = n - spare;
        fresh = (rest >> s->shift) + ((rest & (s->slots - 1u)) != 0);
    }
    /* The pager's own capacity rule, checked before any memory is reserved
     * for a request that cannot be met. */
    const mp_pager *p = s->p;
    if (fresh > pager_room(p))
        return MP_EFILE_FULL;
    uint64_t *pages = NULL;
    if (fresh > 0) {
        if ((rc = reserve(s, fresh)) != MP_OK)
            return rc;
        if (fresh > SIZE_MAX / sizeof(uint64_t) || !(pages = malloc(fresh * sizeof(uint64_t))))
            return MP_ENO_MEMORY;
        /* One call, one commit: the pager gives every page or none, so there
         * is nothing of ours to undo when it fails. */
        if ((rc = mp_pager_alloc_bulk(s->p, fresh, 0, pages)) != MP_OK) {
            free(pages);
            return rc;
        }
        for (uint64_t i = 0; i < fresh; i++) {
            if (lookup(s, pages[i])) {
                /* As in mp_subpage_alloc: a page of ours was freed in the
                 * pager behind our back. */
                (void)mp_pager_free_bulk(s->p, pages, fresh);
                free(pages);
                return MP_ESUBPAGE_OWNED;
            }
        }
    }
    /* Partly used pages first, so that the pages just taken fill up last. */
    uint64_t k = 0;
    while (k < n && s->avail_n > 0) {
        sp_rec *r = lookup(s, s->avail[s->avail_n - 1]);
        while (k < n && r->mask != s->full)
            out_ids[k++] = take_slot(s, r);
    }
    for (uint64_t i = 0; i < fresh; i++) {
        sp_rec *r = insert(s, pages[i]);
        avail_push(s, r);
        while (k < n && r->mask != s->full)
            out_ids[k++] = take_slot(s, r);
    }
    free(pages);
    return MP_OK;
}

/* Frees ids[0..n), a copy the core owns. */
static int free_bulk_owned(mp_subpage *s, const uint64_t *ids, uint64_t n)
{
    int rc = MP_OK;
    uint64_t most = n < s->count ? n : s->count;
    uint64_t *empty = malloc((most ? most : 1) * sizeof(uint64_t));
    if (!empty)
        return MP_ENO_MEMORY;
    /* Clearing each bit as it is checked makes a repeated id fail as a double
     * free; on any failure the bits cleared so far are set again. */
    uint64_t i;
    for (i = 0; i < n; i++) {
        sp_rec *r;
        uint64_t bit;
        if ((rc = find_live(s, ids[i], &r, &bit)) != MP_OK)
            break;
        r->mask &= ~bit;
    }
    uint64_t cleared = i;
    /* Pages left with no sub-page in use go back to the pager in one call. */
    uint64_t ne = 0;
    if (rc == MP_OK) {
        for (i = 0; i < n; i++) {
            sp_rec *r = lookup(s, ids[i] >> s->shift);
            if (r->mask == 0 && !r->mark) {
                r->mark = 1;
                empty[ne++] = r->page;
            }
        }
        if (ne > 0)
            rc = mp_pager_free_bulk(s->p, empty, ne);
    }
    if (rc != MP_OK) {
        for (i = 0; i < ne; i++)
            lookup(s, empty[i])->mark = 0;
        for (i = 0; i < cleared; i++)
            lookup(s, ids[i] >> s->shift)->mask |= (uint64_t)1 << (ids[i] & (s->slots - 1u));
        free(empty);
        return rc;
    }
    for (i = 0; i < ne; i++) {
        sp_rec *r = lookup(s, empty[i]);
        if (r->pos != NO_POS)
            avail_remove(s, r);
        erase(s, r);
    }
    /* Pages that were full and still hold sub-pages now have room. */
    for (i = 0; i < n; i++) {
        sp_rec *r = lookup(s, ids[i] >> s->shift);
        if (r && r->pos == NO_POS)
            avail_push(s, r);
    }
    s->live -= n;
    free(empty);
    if (ne > 0)
        maybe_shrink(s);
    return MP_OK;
}

int mp_subpage_free_bulk_locked(mp_subpage *s, const uint64_t *caller_ids, uint64_t n)
{
    int rc = usable(s);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!caller_ids)
        return MP_EINVALID_ARGUMENT;
    /* Read once: the ids validated are the ids applied (pager_ids_copy). */
    uint64_t *ids = pager_ids_copy(caller_ids, n);
    if (!ids)
        return MP_ENO_MEMORY;
    rc = free_bulk_owned(s, ids, n);
    free(ids);
    return rc;
}

/* Empties the allocator's own state; the pager is not told. */
static void reset(mp_subpage *s)
{
    if (s->table)
        memset(s->table, 0, s->cap * sizeof(sp_rec));
    s->count = 0;
    s->avail_n = 0;
    s->live = 0;
}

/* Rebuilds the empty allocator from ids[0..n), a copy the core owns. */
static int restore_owned(mp_subpage *s, const uint64_t *ids, uint64_t n)
{
    int rc = MP_OK;
    const mp_pager *p = s->p;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t page = ids[i] >> s->shift;
        uint64_t bit = (uint64_t)1 << (ids[i] & (s->slots - 1u));
        /* A live sub-page can only sit in an allocated regular page. */
        if (page < MP_RESERVED_PAGES || page >= p->total_pages || bitmap_get(p->system, page) ||
            !bitmap_get(p->bits, page)) {
            rc = MP_EOUT_OF_BOUNDS;
            break;
        }
        sp_rec *r = lookup(s, page);
        if (!r) {
            if ((rc = reserve(s, 1)) != MP_OK)
                break;
            r = insert(s, page);
        }
        if (r->mask & bit) {
            rc = MP_EINVALID_ARGUMENT; /* the same id twice */
            break;
        }
        r->mask |= bit;
    }
    if (rc != MP_OK) {
        reset(s);
        maybe_shrink(s);
        return rc;
    }
    for (uint64_t i = 0; i < s->cap; i++) {
        sp_rec *r = &s->table[i];
        if (r->page != EMPTY_KEY && r->mask != s->full)
            avail_push(s, r);
    }
    s->live = n;
    return MP_OK;
}

int mp_subpage_restore_locked(mp_subpage *s, const uint64_t *caller_ids, uint64_t n)
{
    int rc = usable(s);
    if (rc != MP_OK)
        return rc;
    /* Only an empty allocator can be rebuilt: merging into live state could
     * not tell a restored id from one allocated since. */
    if (s->count != 0 || s->live != 0)
        return MP_EINVALID_ARGUMENT;
    if (n == 0)
        return MP_OK;
    if (!caller_ids)
        return MP_EINVALID_ARGUMENT;
    /* Read once: the ids validated are the ids applied (pager_ids_copy). */
    uint64_t *ids = pager_ids_copy(caller_ids, n);
    if (!ids)
        return MP_ENO_MEMORY;
    rc = restore_owned(s, ids, n);
    free(ids);
    return rc;
}

int mp_subpage_check_locked(const mp_subpage *s, uint64_t id, uint64_t *out_offset)
{
    if (!s || !out_offset)
        return MP_EINVALID_ARGUMENT;
    int rc = pager_usable(s->p, 0);
    if (rc != MP_OK)
        return rc;
    /* Like the crate, a view needs the big page to be ours, not the slot to
     * be in use: the bytes of a free slot belong to no one else. */
    uint64_t page = id >> s->shift;
    if (!lookup(s, page))
        return MP_EOUT_OF_BOUNDS;
    uint64_t slot = id & (s->slots - 1u);
    *out_offset = page * (uint64_t)s->p->page_size + (slot << s->sub_log2);
    return MP_OK;
}

int mp_subpage_stats_locked(const mp_subpage *s, mp_sub_stats *out)
{
    if (!s || !out)
        return MP_EINVALID_ARGUMENT;
    out->sub_size = s->sub_size;
    out->slots_per_page = s->slots;
    out->live_count = s->live;
    out->big_pages = s->count;
    out->partial_pages = s->avail_n;
    return MP_OK;
}

int mp_subpage_list_locked(const mp_subpage *s, uint64_t *out_pages, uint64_t *out_masks,
                    uint64_t capacity, uint64_t *out_n)
{
    if (!s || !out_n)
        return MP_EINVALID_ARGUMENT;
    /* All or nothing: a partial list of a hash table has no useful cursor. */
    if (capacity < s->count || (s->count > 0 && (!out_pages || !out_masks)))
        return MP_EINVALID_ARGUMENT;
    uint64_t k = 0;
    for (uint64_t i = 0; i < s->cap; i++) {
        const sp_rec *r = &s->table[i];
        if (r->page == EMPTY_KEY)
            continue;
        out_pages[k] = r->page;
        out_masks[k] = r->mask;
        k++;
    }
    *out_n = k;
    return MP_OK;
}

int mp_subpage_find_held_locked(const mp_subpage *s, const uint64_t *pages, uint64_t n,
                         uint64_t *out_index)
{
    if (!s || !out_index || (n > 0 && !pages))
        return MP_EINVALID_ARGUMENT;
    /* Only our own table is read, so this needs no usable pager: the Python
     * layer asks every live allocator before it lets the pager free a page. */
    uint64_t i = 0;
    while (i < n && !lookup(s, pages[i]))
        i++;
    *out_index = i;
    return MP_OK;
}
