/*
 * directory.c - the protected-page directory: loading, validating, writing.
 *
 * Owns: reading the directory named by page 0 (v0.2) or the index pages
 * (extended layout) from the committed copies, the checks each entry passes,
 * open's repairs (dir_adopt_current, salvage), and writing a block's inactive
 * copy before a commit flips to it. The public protected-page calls are
 * protected.c's; the crash reasoning is in protected.c's opening comment.
 */
#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>

void dir_release(mp_pager *p)
{
    if (!p->dirs)
        return;
    for (uint32_t i = 0; i < p->dir_capacity; i++) {
        /* A block never used is left unwritten: with huge pages the table
         * is large, and only reading it keeps its memory unallocated. */
        if (!p->dirs[i].entries && !p->dirs[i].writer_open && !p->dirs[i].dirty)
            continue;
        free(p->dirs[i].entries);
        free(p->dirs[i].writer_open);
        p->dirs[i].entries = NULL;
        p->dirs[i].writer_open = NULL;
        p->dirs[i].dirty = 0;
    }
    p->dir_count = 0;
    p->protected_count = 0;
}

int dir_block_init(mp_pager *p, uint32_t b)
{
    mp_dir_block *d = &p->dirs[b];
    d->entries = calloc(p->epp, sizeof(mp_dir_entry));
    d->writer_open = calloc(p->epp, 1);
    d->dirty = 0;
    if (!d->entries || !d->writer_open) {
        free(d->entries);
        free(d->writer_open);
        d->entries = NULL;
        d->writer_open = NULL;
        return MP_ENO_MEMORY;
    }
    return MP_OK;
}

static uint64_t ref_page(const mp_dir_ref *r, int which)
{
    return which ? r->page_b : r->page_a;
}

static int page_usable_for(const mp_pager *p, uint64_t id)
{
    return id < p->total_pages && !pager_is_layout_page(p, id);
}

int dir_reserve(mp_pager *p, uint64_t n)
{
    if (n <= p->dir_capacity)
        return MP_OK;
    if (n > UINT32_MAX / 2)
        return MP_EDIRECTORY_FULL;
    uint64_t cap = (uint64_t)p->dir_capacity * 2 > n ? (uint64_t)p->dir_capacity * 2 : n;
    mp_dir_block *dirs = realloc(p->dirs, (size_t)cap * sizeof *dirs);
    if (!dirs)
        return MP_ENO_MEMORY;
    memset(dirs + p->dir_capacity, 0, (size_t)(cap - p->dir_capacity) * sizeof *dirs);
    p->dirs = dirs;
    mp_dir_ref *refs = realloc(p->refs, (size_t)(cap + 1) * sizeof *refs);
    if (!refs)
        return MP_ENO_MEMORY;
    memset(refs + p->dir_capacity + 1, 0, (size_t)(cap - p->dir_capacity) * sizeof *refs);
    p->refs = refs;
    p->dir_capacity = (uint32_t)cap;
    return MP_OK;
}

void dir_ref_changed(mp_pager *p, uint64_t b)
{
    bitmap_set(p->index_dirty, b / fmt_max_dir_blocks(p->page_size));
    p->index_changed = 1;
}

/* Checks an in-use entry against the file. Returns 0 when it may stand,
 * 1 when it is the trace of an interrupted alloc/free (or stale), and
 * 2 when it can only be damage. */
/* A page the file holds, past the reserved ones; it may lie past the committed
 * page count when an alloc_protected that grew the file was cut short between
 * its directory commit and its bitmap commit. */
static int page_in_file(const mp_pager *p, uint64_t id)
{
    return id < p->map.mapped / p->page_size && !pager_is_layout_page(p, id);
}

static int page_allocated(const mp_pager *p, uint64_t id)
{
    return id < p->total_pages && bitmap_get(p->bits, id);
}

static int entry_verdict(const mp_pager *p, const mp_dir_entry *e, int from_fallback)
{
    if (!page_in_file(p, e->page_a) || !page_in_file(p, e->page_b) ||
        e->page_a == e->page_b ||
        (e->page_a < p->total_pages && bitmap_get(p->system, e->page_a)) ||
        (e->page_b < p->total_pages && bitmap_get(p->system, e->page_b)))
        return from_fallback ? 1 : 2;
    if (!page_allocated(p, e->page_a) || !page_allocated(p, e->page_b))
        return 1;
    if (from_fallback) {
        uint64_t active = e->active_slot ? e->page_b : e->page_a;
        if (mp_crc32(pager_page_ptr(p, active), p->page_size) != e->crc)
            return 1;
    }
    return 0;
}

/* Parses a directory page from a private copy (a reader may be racing a
 * writer that rewrites the page), and notes the copy's stored CRC: a reader
 * checks afterwards that the page still holds it (recover.c, load_state). */
static int dir_page_entries(mp_pager *p, uint64_t id, mp_dir_entry *entries, uint32_t *crc)
{
    memcpy(p->scratch, pager_page_ptr(p, id), p->page_size);
    if (crc)
        *crc = mp_load_u32(p->scratch + p->page_size - 4);
    return fmt_dir_page_read(p->scratch, p->page_size, entries);
}

/* Reads a block's page, keeping its stored CRC so a reader can tell later
 * whether the page changed under it. */
static int dir_page_read(mp_pager *p, uint64_t id, mp_dir_block *block)
{
    return dir_page_entries(p, id, block->entries, &block->read_crc);
}

/* A block appended to page 0 whose pages no committed bitmap counts yet
 * (they may even lie past the committed end of the file). */
int block_unfinished(const mp_pager *p, const mp_dir_ref *r)
{
    uint64_t ids[2] = {r->page_a, r->page_b};
    for (int w = 0; w < 2; w++) {
        if (ids[w] < MP_RESERVED_PAGES)
            return 0;
        if (ids[w] < p->total_pages && bitmap_get(p->bits, ids[w]))
            return 0;
    }
    return r->page_a != r->page_b;
}

/* A page an entry or block of the current directory may be given back:
 * inside the file and the v0.2 layout, past the reserved pages. */
static int adoptable(uint64_t id, uint64_t limit)
{
    return id >= MP_RESERVED_PAGES && id < limit;
}

/* Marks id allocated if the bitmap does not count it; 1 if it did so. */
static int adopt_page(mp_pager *p, uint64_t id)
{
    if (id < p->total_pages && bitmap_get(p->bits, id))
        return 0;
    pager_claim_bit(p, id);
    return 1;
}

/* Entries of block r's active copy (into entries) that the directory proves
 * current: in-use, both pages adoptable, and the active page matching the CRC
 * the entry recorded. Returns the highest page the block and they need plus
 * one, or 0 when the block's own pages cannot be given back. */
static uint64_t block_need(mp_pager *p, const mp_dir_ref *r, uint64_t limit,
                           mp_dir_entry *entries)
{
    if (!adoptable(r->page_a, limit) || !adoptable(r->page_b, limit) ||
        r->page_a == r->page_b)
        return 0;
    uint64_t need = (r->page_a > r->page_b ? r->page_a : r->page_b) + 1;
    /* An active copy that does not parse proves no entry current. */
    if (dir_page_entries(p, ref_page(r, r->active), entries, NULL) != MP_OK)
        memset(entries, 0, p->epp * sizeof *entries);
    for (uint32_t s = 0; s < p->epp; s++) {
        mp_dir_entry *e = &entries[s];
        if (!e->in_use)
            continue;
        if (!adoptable(e->page_a, limit) || !adoptable(e->page_b, limit) ||
            e->page_a == e->page_b ||
            mp_crc32(pager_page_ptr(p, e->active_slot ? e->page_b : e->page_a),
                     p->page_size) != e->crc) {
            e->in_use = 0; /* left to dir_load's checks */
            continue;
        }
        uint64_t top = (e->page_a > e->page_b ? e->page_a : e->page_b) + 1;
        if (top > need)
            need = top;
    }
    return need;
}

/* The metadata copy open chose is the older one (the newer failed), while page
 * 0's directory, committed apart from the bitmap, is current: its blocks, and
 * the entries of their active copies whose page still matches the recorded
 * CRC, were acknowledged. Rather than drop them because the older bitmap does
 * not count their pages, those pages are counted and marked allocated again
 * (pages the older bitmap counts already are taken as theirs); dir_load's
 * checks then see them as whole. */
int dir_adopt_current(mp_pager *p, mp_open_report *rep, uint32_t count)
{
    uint64_t limit = p->file_pages < p->chunk_pages ? p->file_pages : p->chunk_pages;
    mp_dir_entry *entries = calloc(p->epp, sizeof *entries);
    if (!entries)
        return MP_ENO_MEMORY;
    uint64_t need = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t n = block_need(p, &p->refs[i], limit, entries);
        need = n > need ? n : need;
    }
    /* The pages were counted by the commit that was lost: the file holds
     * them, and the pages of it nothing claims come back free. */
    if (need > p->total_pages)
        pager_count_pages(p, limit);
    for (uint32_t i = 0; i < count; i++) {
        const mp_dir_ref *r = &p->refs[i];
        if (block_need(p, r, limit, entries) == 0)
            continue;
        (void)adopt_page(p, r->page_a);
        (void)adopt_page(p, r->page_b);
        for (uint32_t s = 0; s < p->epp; s++) {
            const mp_dir_entry *e = &entries[s];
            if (!e->in_use)
                continue;
            int kept = adopt_page(p, e->page_a);
            kept |= adopt_page(p, e->page_b);
            if (kept) {
                rep->kept_protected++;
                rep->flags |= MP_REC_PROTECTED_KEPT;
            }
        }
    }
    free(entries);
    return MP_OK;
}

/* A copy of a directory block that can exist: inside the file and not one of
 * the layout's own pages. */
static int copy_exists(const mp_pager *p, uint64_t id)
{
    return page_in_file(p, id);
}

/* Reads block i from the copy that exists and parses, falling back to the
 * inactive copy (and noting it) when the active one does not. */
static int block_read(mp_pager *p, mp_open_report *rep, uint32_t i)
{
    mp_dir_ref *r = &p->refs[i];
    int have[2] = {copy_exists(p, r->page_a), copy_exists(p, r->page_b)};
    if (!have[0] && !have[1]) {
        /* Both copies lie past the end of the file or on the layout's pages:
         * no crash leaves that (an append grows the file first). */
        if (!p->salvage)
            return MP_ECORRUPT_PROTECTED_DIRECTORY;
        rep->salvaged_blocks++;
        rep->flags |= MP_REC_SALVAGE_DROPPED;
        p->dirs[i].dirty = 1;
        return MP_OK;
    }
    int rc = have[r->active] ? dir_page_read(p, ref_page(r, r->active), &p->dirs[i])
                             : MP_ECORRUPT_PROTECTED_DIRECTORY;
    if (rc == MP_OK) {
        /* The inactive copy is the one the next change writes. */
        if (!have[!r->active]) {
            rep->dir_fallbacks++;
            rep->flags |= MP_REC_DIR_FALLBACK;
        }
        return MP_OK;
    }
    if (!have[!r->active] ||
        dir_page_read(p, ref_page(r, !r->active), &p->dirs[i]) != MP_OK)
        return MP_ECORRUPT_PROTECTED_DIRECTORY;
    r->active ^= 1u;
    /* dirty doubles as "read from the fallback copy" until the entries below
     * are checked. */
    p->dirs[i].dirty = 1;
    dir_ref_changed(p, i);
    rep->dir_fallbacks++;
    rep->flags |= MP_REC_DIR_FALLBACK;
    return MP_OK;
}

/* A writer gives a block a new page for each copy that cannot exist, so that
 * no later change writes past the file or over the layout; the block is
 * rewritten there by open's commit. */
static int block_replace_missing(mp_pager *p, uint32_t i)
{
    mp_dir_ref *r = &p->refs[i];
    for (int w = 0; w < 2; w++) {
        if (copy_exists(p, ref_page(r, w)))
            continue;
        uint64_t id;
        int rc = pager_take_lowest(p, &id);
        if (rc != MP_OK)
            return rc;
        bitmap_set(p->system, id);
        if (w)
            r->page_b = id;
        else
            r->page_a = id;
        p->dirs[i].dirty = 1;
        dir_ref_changed(p, i);
    }
    return MP_OK;
}

int dir_load(mp_pager *p, mp_open_report *rep, uint32_t count)
{
    int rc;
    /* A trailing block whose pages are not allocated is an append that did
     * not reach its bitmap commit: the block was never acknowledged. An
     * append grows the file before it, so such a block lies in the file. */
    while (count > 0) {
        const mp_dir_ref *r = &p->refs[count - 1];
        if (!block_unfinished(p, r) || !copy_exists(p, r->page_a) ||
            !copy_exists(p, r->page_b))
            break;
        count--;
        rep->dropped_blocks++;
        rep->flags |= MP_REC_DIR_BLOCK_DROPPED;
        p->index_changed = 1;
    }
    for (uint32_t i = 0; i < count; i++) {
        const mp_dir_ref *r = &p->refs[i];
        for (int w = 0; w < 2; w++) {
            uint64_t id = ref_page(r, w);
            if (!copy_exists(p, id))
                continue; /* block_read decides */
            if (!page_usable_for(p, id) || !bitmap_get(p->bits, id) || bitmap_get(p->system, id))
                return MP_ECORRUPT_DIRECTORY_INDEX;
            bitmap_set(p->system, id);
        }
        if (r->page_a == r->page_b)
            return MP_ECORRUPT_DIRECTORY_INDEX;
    }
    p->dir_count = count;
    for (uint32_t i = 0; i < count; i++) {
        if ((rc = dir_block_init(p, i)) != MP_OK)
            return rc;
        if ((rc = block_read(p, rep, i)) != MP_OK)
            return rc;
    }
    for (uint32_t i = 0; i < count; i++) {
        int from_fallback = p->dirs[i].dirty;
        for (uint32_t s = 0; s < p->epp; s++) {
            mp_dir_entry *e = &p->dirs[i].entries[s];
            if (!e->in_use)
                continue;
            int v = entry_verdict(p, e, from_fallback);
            if (v == 2)
                return MP_ECORRUPT_PROTECTED_DIRECTORY;
            if (v == 1) {
                e->in_use = 0;
                p->dirs[i].dirty = 1;
                rep->dropped_entries++;
                rep->flags |= MP_REC_DIR_ENTRY_DROPPED;
                continue;
            }
            bitmap_set(p->system, e->page_a);
            bitmap_set(p->system, e->page_b);
            p->protected_count++;
        }
    }
    p->system_count = bitmap_count_set(p->system, p->total_pages);
    /* Readers never write, so they keep the missing copies named. */
    for (uint32_t i = 0; i < count && !p->read_only; i++)
        if ((rc = block_replace_missing(p, i)) != MP_OK)
            return rc;
    p->system_count = bitmap_count_set(p->system, p->total_pages);
    return MP_OK;
}

int dir_any_dirty(const mp_pager *p)
{
    for (uint32_t i = 0; i < p->dir_count; i++)
        if (p->dirs[i].dirty)
            return 1;
    return 0;
}

/* Writes each changed block into its inactive copy, built aside and written
 * with pwrite (a store through the mapping would dirty the whole page-cache
 * folio under it), and with `flush` flushes each. The copy must be durable
 * before any committed state names it: without `flush` the caller flushes
 * (commit.c's flush_dir_changes). */
int dir_write_dirty(mp_pager *p, int flush)
{
    for (uint32_t i = 0; i < p->dir_count; i++) {
        if (!p->dirs[i].dirty)
            continue;
        mp_dir_ref *r = &p->refs[i];
        uint64_t target = ref_page(r, !r->active);
        fmt_dir_page_write(p->scratch, p->page_size, p->dirs[i].entries);
        int rc = os_write_all(p->map.io, p->fd, p->scratch, p->page_size,
                              target * (uint64_t)p->page_size);
        if (rc != MP_OK) {
            p->poisoned = 1;
            return rc;
        }
        if (flush && (rc = pager_flush_page(p, target)) != MP_OK)
            return rc;
    }
    return MP_OK;
}

/* Points each changed block at the copy dir_write_dirty wrote; the commit
 * that follows makes the switch durable, for all blocks at once. */
uint64_t dir_inactive_page(const mp_pager *p, uint32_t b)
{
    return ref_page(&p->refs[b], !p->refs[b].active);
}

void dir_flip_dirty(mp_pager *p)
{
    for (uint32_t i = 0; i < p->dir_count; i++) {
        if (p->dirs[i].dirty) {
            p->refs[i].active ^= 1u;
            p->dirs[i].dirty = 0;
            dir_ref_changed(p, i);
        }
    }
}
