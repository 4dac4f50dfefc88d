/*
 * recover.c - choosing the committed state on open and refresh.
 *
 * Owns: reading page 0, both metadata copies, the extended layout's free-map
 * and index pages and the directory from the mapping, and choosing among the
 * copies by generation (rule 2 of pager.c); the repairs open makes and
 * reports (mp_open_report). A reader's looks again while a writer commits
 * under it are retry.c's.
 *
 * Invariants: the choice trusts generations and CRCs, never page 0's
 * selector; every count read from the file is bounded by the file's length
 * before use; a reader never writes.
 */
#include "mp_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* -------------------------------------------------------------- open */

/* Reads page 0, both metadata copies and the directory from the mapping into
 * p, choosing the metadata copy by generation (rule 2 above). */
static int load_pages(mp_pager *p, const uint8_t *snap, uint64_t file_len,
                      mp_open_report *rep, int *page0_stale);

/* After a reader loaded: did a writer commit while it read? Every commit a
 * reader can see changes pages 0-2 (page 0 for the directory, a metadata copy,
 * with a higher generation, for the rest), except that page 0 may come back
 * to the very bytes it had (a protected write that flips a block and one that
 * flips it back); then the directory copy read in between was rewritten, and
 * a rewritten copy has a new stored CRC. A directory copy is only rewritten
 * once page 0 names the other one, so if neither changed, every page read was
 * as loaded at the moment pages 0-2 were read again: one committed state. */
int pager_reader_saw_a_commit(const mp_pager *p, const uint8_t *snap, int loaded)
{
    /* The rereads below must not be done before the reads of the load. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (memcmp(snap, pager_page_ptr(p, 0), (size_t)p->page_size * MP_RESERVED_PAGES) != 0)
        return 1;
    for (uint32_t i = 0; loaded && i < p->dir_count; i++) {
        const mp_dir_ref *r = &p->refs[i];
        uint64_t id = r->active ? r->page_b : r->page_a;
        /* A block salvage emptied names no page in the file: nothing was read. */
        if (id >= p->map.mapped / p->page_size)
            continue;
        const uint8_t *page = pager_page_ptr(p, id);
        if (mp_load_u32(page + p->page_size - 4) != p->dirs[i].read_crc)
            return 1;
    }
    return 0;
}

/* A reader keeps looking while the writer commits under it, this long at most
 * (then -EAGAIN: the writer never paused for a whole look, which takes
 * microseconds, or longer for a file whose free map spans many pages, read
 * whole by each look); and while what it sees is a commit in progress with
 * nothing moving, this long (then what it sees is taken as a crash's
 * leftover, and reported like one). A dropped entry is looked at again by
 * load_with_retries as well, a dropped block only here. */
static const double READER_MOVING_LIMIT = 5.0;
static const double READER_ENTRY_LIMIT = 0.05;
static const double READER_BLOCK_LIMIT = 0.25;

/* What a reader sees between the two commit points of a v0.2 protected alloc
 * or free: a directory entry or block whose pages the bitmap does not count
 * (yet, or any more). From a writer, who holds the lock, that is what a crash
 * left; beside a live writer it is a commit in progress. Returns how long to
 * wait for it with nothing moving, or 0 when it is not that. */
static double reader_saw_a_commit_in_progress(const mp_open_report *rep)
{
    if (rep->flags & MP_REC_DIR_FALLBACK)
        return 0;
    if (rep->flags & MP_REC_DIR_BLOCK_DROPPED)
        return READER_BLOCK_LIMIT;
    return (rep->flags & MP_REC_DIR_ENTRY_DROPPED) ? READER_ENTRY_LIMIT : 0;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Works on a private copy of pages 0-2: a reader shares the file with a
 * writer that may rewrite them while they are being read, and each page must
 * be checked and used as one consistent version. A reader also checks, once
 * it has loaded, that the writer committed nothing meanwhile, and otherwise
 * looks again: the state it keeps is one the writer committed, never the
 * bitmap of one commit with a directory page of a later one. */
int pager_load_state(mp_pager *p, uint64_t file_len, mp_open_report *rep, int *page0_stale)
{
    uint64_t bytes = (uint64_t)p->page_size * MP_RESERVED_PAGES;
    uint8_t *snap = malloc(bytes);
    if (!snap)
        return MP_ENO_MEMORY;
    struct timespec start, still;
    clock_gettime(CLOCK_MONOTONIC, &start);
    still = start;
    int rc;
    for (;;) {
        memcpy(snap, pager_page_ptr(p, 0), bytes);
        rc = load_pages(p, snap, file_len, rep, page0_stale);
        if (!p->read_only || rc == MP_ENO_MEMORY)
            break;
        if (pager_reader_saw_a_commit(p, snap, rc == MP_OK)) {
            clock_gettime(CLOCK_MONOTONIC, &still);
            if (seconds_since(&start) > READER_MOVING_LIMIT) {
                rc = -EAGAIN;
                break;
            }
        } else if (rc != MP_OK ||
                   !(seconds_since(&still) < reader_saw_a_commit_in_progress(rep))) {
            break;
        } else {
            /* The writer is between two flushes: give it a moment. */
            struct timespec nap = {0, 500 * 1000};
            nanosleep(&nap, NULL);
        }
        dir_release(p);
        memset(rep, 0, sizeof *rep);
        *page0_stale = 0;
    }
    /* What an idle refresh compares against (readers.c). */
    if (rc == MP_OK && p->read_only)
        readers_note_loaded(p, snap);
    free(snap);
    return rc;
}

/* The chosen copy of an extended-layout page pair (a chunk's free-map page,
 * or a directory-index page): the valid copy with the highest generation not
 * above the committed one. Returns -1 when neither is valid. */
static int pick_copy(uint64_t gen_a, int ok_a, uint64_t gen_b, int ok_b)
{
    if (ok_a && ok_b)
        return gen_b > gen_a ? 1 : 0;
    return ok_a ? 0 : ok_b ? 1 : -1;
}

/* Loads chunks 1.. of the extended layout for the metadata copy of
 * generation gen into p->bits (chunk 0 is loaded already), adding their free
 * pages to *free and the copies written by commit gen to *seal. */
static int load_chunks(mp_pager *p, uint64_t total, uint64_t gen, uint64_t *free,
                       uint32_t *seal, uint32_t *dir_blocks)
{
    uint64_t last = fmt_chunks_below(p->chunk_pages, total);
    for (uint64_t c = 1; c <= last; c++) {
        mp_chunk_header h[2];
        for (int w = 0; w < 2; w++)
            fmt_chunk_check(pager_page_ptr(p, fmt_free_map_page(p->chunk_pages, c, (uint32_t)w)),
                            p->page_size, c,
                            total, gen, &h[w]);
        int pick = pick_copy(h[0].generation, h[0].valid, h[1].generation, h[1].valid);
        if (pick < 0)
            return MP_ECORRUPT_METADATA;
        if (pick)
            bitmap_set(p->chunk_active, c);
        else
            bitmap_clear(p->chunk_active, c);
        const uint8_t *page =
            pager_page_ptr(p, fmt_free_map_page(p->chunk_pages, c, (uint32_t)pick));
        /* The maps grow with the chunks that check out, never with the
         * claimed total: a hostile total costs only what the file holds. */
        uint64_t end = fmt_chunk_start(p->chunk_pages, c + 1);
        pager_note_words_used(p, end < total ? end : total);
        fmt_chunk_load_bits(page, p->page_size, c, total, p->bits);
        *free += h[pick].free_count;
        if (h[pick].generation == gen)
            *seal = fmt_seal_add(*seal, page, p->page_size);
        if (c == 1)
            *dir_blocks = h[pick].dir_blocks;
    }
    return MP_OK;
}

/* The directory's block references in the extended layout, from its index
 * pages (each read from a private copy: a writer may be rewriting one).
 * *count is the block count chunk 1 holds; a file extended from creation
 * that has no chunk 1 yet (`from_page0`) keeps it in index page 0, which it
 * always has, even with no block (its copy of generation 0 is in the seal of
 * the file's first state). */
static int load_index_pages(mp_pager *p, uint32_t *count, int from_page0, uint64_t gen,
                            uint32_t *seal)
{
    uint32_t per = fmt_max_dir_blocks(p->page_size);
    if (*count > pager_dir_block_limit(p))
        return MP_ECORRUPT_DIRECTORY_INDEX;
    /* Room for whole index pages: a copy read before its count is checked
     * may hold up to `per` references. */
    uint64_t room = ((uint64_t)*count + per - 1) / per * per;
    int rc = dir_reserve(p, from_page0 ? per : room);
    if (rc != MP_OK)
        return rc;
    for (uint64_t k = 0; (uint64_t)k * per < *count || (from_page0 && k == 0); k++) {
        if (pager_index_page(p, k, 1) >= p->total_pages)
            return MP_ECORRUPT_DIRECTORY_INDEX;
        uint64_t g[2] = {0, 0};
        uint32_t n[2] = {0, 0};
        int ok[2];
        for (int w = 0; w < 2; w++) {
            const uint8_t *copy = pager_page_ptr(p, pager_index_page(p, k, (uint32_t)w));
            memcpy(p->scratch, copy, p->page_size);
            ok[w] = fmt_index_read(p->scratch, p->page_size, k, gen, &g[w], &n[w],
                                   p->refs + k * per) == MP_OK;
        }
        int pick = pick_copy(g[0], ok[0], g[1], ok[1]);
        if (pick >= 0 && from_page0)
            *count = n[pick];
        uint32_t want = *count - (uint32_t)(k * per) < per ? *count - (uint32_t)(k * per) : per;
        if (pick < 0 || n[pick] != want)
            return MP_ECORRUPT_DIRECTORY_INDEX;
        /* The last read filled refs from copy B; reread the pick if it is A. */
        const uint8_t *chosen =
            pager_page_ptr(p, pager_index_page(p, k, (uint32_t)pick));
        memcpy(p->scratch, chosen, p->page_size);
        if (fmt_index_read(p->scratch, p->page_size, k, gen, &g[pick], &n[pick],
                           p->refs + k * per) != MP_OK || n[pick] != want)
            return MP_ECORRUPT_DIRECTORY_INDEX;
        if (pick)
            bitmap_set(p->index_active, k);
        else
            bitmap_clear(p->index_active, k);
        if (g[pick] == gen)
            *seal = fmt_seal_add(*seal, p->scratch, p->page_size);
    }
    return MP_OK;
}

/* The roots and the commit record of an extended-layout state, from the root
 * pages its metadata copy names (each copy read from a private copy: a writer
 * may be rewriting the inactive one). The record counts only when the copy
 * was written by the commit of generation gen; then the copy is in its seal. */
static int load_roots_pages(mp_pager *p, uint64_t at, uint64_t gen, uint32_t *seal)
{
    p->roots_page = at;
    p->roots_active = 0;
    p->roots_dirty = 0;
    if (at == 0)
        return MP_OK;
    if (!bitmap_get(p->bits, at) || !bitmap_get(p->bits, at + 1))
        return MP_ECORRUPT_METADATA;
    uint64_t g[2] = {0, 0};
    uint32_t n;
    int ok[2];
    for (uint32_t w = 0; w < 2; w++) {
        memcpy(p->scratch, pager_page_ptr(p, at + w), p->page_size);
        ok[w] = fmt_roots_page_read(p->scratch, p->page_size, gen, &g[w], p->roots, NULL,
                                    &n) == MP_OK;
    }
    int pick = pick_copy(g[0], ok[0], g[1], ok[1]);
    if (pick < 0)
        return MP_ECORRUPT_METADATA;
    memcpy(p->scratch, pager_page_ptr(p, at + (uint32_t)pick), p->page_size);
    if (fmt_roots_page_read(p->scratch, p->page_size, gen, &g[pick], p->roots, p->rec, &n) !=
        MP_OK)
        return MP_ECORRUPT_METADATA;
    p->rec_n = g[pick] == gen ? n : 0;
    if (g[pick] == gen)
        *seal = fmt_seal_add(*seal, p->scratch, p->page_size);
    p->roots_active = (uint32_t)pick;
    bitmap_set(p->system, at);
    bitmap_set(p->system, at + 1);
    return MP_OK;
}

/* Clears the in-memory maps and loads the chosen copy's state into them.
 * Only the words some earlier load or growth touched need clearing (the rest
 * are still zero), and words_used rises only with what was loaded: a copy
 * that claims more pages than it describes is refused before the cost of
 * the pages it claims (load_chunks stops at the first chunk that fails). */
static int load_meta(mp_pager *p, const uint8_t *meta, const mp_meta_header *h,
                     uint32_t *dir_blocks)
{
    size_t bytes = (size_t)p->words_used * sizeof(uint64_t);
    memset(p->bits, 0, bytes);
    memset(p->system, 0, bytes);
    memset(p->pending, 0, bytes);
    size_t cw = (size_t)(bitmap_words(p->max_chunks) + 1) * sizeof(uint64_t);
    memset(p->chunk_dirty, 0, cw);
    memset(p->index_dirty, 0, cw);
    memset(p->chunk_active, 0, cw);
    memset(p->index_active, 0, cw);
    p->pending_count = 0;
    p->total_pages = h->total_pages;
    p->generation = h->generation;
    p->free_count = h->free_count;
    uint64_t in0 = p->total_pages < p->chunk_pages ? p->total_pages : p->chunk_pages;
    pager_note_words_used(p, in0);
    fmt_meta_load_bits(meta, in0, p->bits);
    p->roots_page = 0;
    p->roots_active = 0;
    p->roots_dirty = 0;
    *dir_blocks = 0;
    if (!pager_extended(p)) {
        fmt_meta_tail_read(meta, p->page_size, p->total_pages, p->roots, p->rec, &p->rec_n);
        return MP_OK;
    }
    memset(p->roots, 0, sizeof p->roots);
    p->rec_n = 0;
    /* Extended: the commit wrote its free-map and index pages and this copy
     * with one flush, so any of them may have missed the disk; the seal says
     * whether every page copy the commit wrote is the one selected now. */
    uint64_t free = in0 - bitmap_count_set(p->bits, in0);
    uint32_t seal = 0;
    int rc = load_chunks(p, p->total_pages, p->generation, &free, &seal, dir_blocks);
    if (rc == MP_OK)
        rc = load_index_pages(p, dir_blocks,
                              p->ext_always && fmt_chunks_below(p->chunk_pages, p->total_pages) == 0,
                              p->generation, &seal);
    if (rc == MP_OK)
        rc = load_roots_pages(p, fmt_meta_roots_page(h->free_count), p->generation, &seal);
    if (rc != MP_OK)
        return rc;
    /* Index page 0 of a file extended from creation: system pages, as the
     * root pages (4-5, which fmt_meta_check requires of such a copy). */
    for (uint64_t id = MP_ALWAYS_INDEX_PAGE; p->ext_always && id < MP_ALWAYS_PAGES; id++) {
        if (!bitmap_get(p->bits, id))
            return MP_ECORRUPT_METADATA;
        bitmap_set(p->system, id);
    }
    if (seal != (uint32_t)h->free_count)
        return MP_ECORRUPT_METADATA;
    p->free_count = free;
    return MP_OK;
}

/* Validates one metadata copy. A copy that passes every check but counts
 * pages past the end of the file is told apart from an impossible one: growth
 * is durable before any commit counts it (rule 3), so no crash leaves such a
 * copy behind; only a file cut after the commit does. */
static void check_copy(const mp_pager *p, const uint8_t *page, uint64_t file_pages,
                       uint64_t max_total, mp_meta_header *h)
{
    fmt_meta_check(page, p->page_size, max_total, max_total, p->ext_always, h);
    if (h->problem == MP_META_OK && h->total_pages > file_pages)
        h->problem = MP_META_PAST_END;
}

/* The copy that shows the file was cut, or -1: a copy past the end that is at
 * least as new as any copy that fits. An older copy past the end loses
 * nothing when passed over: the newest state fits. */
static int cut_copy(const mp_meta_header *h)
{
    int cut = -1;
    for (int c = 0; c < 2; c++) {
        const mp_meta_header *other = &h[c ^ 1];
        if (h[c].problem != MP_META_PAST_END)
            continue;
        if (other->problem == MP_META_OK && other->generation > h[c].generation)
            continue;
        if (cut < 0 || h[c].generation > h[cut].generation)
            cut = c;
    }
    return cut;
}

/* The commit record of the copy h: in the metadata tail (v0.2), or in the
 * root page copy its own commit wrote (extended; a copy of another
 * generation carries an older commit's record, which does not count, and a
 * missing or torn one is the seal's business). */
static int record_holds(mp_pager *p, const uint8_t *meta, const mp_meta_header *h)
{
    uint64_t roots[MP_ROOTS];
    uint32_t n = 0;
    int extended = p->ext_always || h->total_pages > p->chunk_pages;
    if (!extended)
        fmt_meta_tail_read(meta, p->page_size, h->total_pages, roots, p->rec, &n);
    uint64_t at = extended ? fmt_meta_roots_page(h->free_count) : 0;
    for (uint32_t w = 0; at != 0 && w < MP_ROOT_PAGES && n == 0; w++) {
        uint64_t gen;
        memcpy(p->scratch, pager_page_ptr(p, at + w), p->page_size);
        if (fmt_roots_page_read(p->scratch, p->page_size, h->generation, &gen, roots, p->rec,
                                &n) != MP_OK || gen != h->generation)
            n = 0;
    }
    return n == 0 || txn_record_holds(p, p->rec, n);
}

void pager_claim_bit(mp_pager *p, uint64_t id)
{
    pager_bit_take(p, id);
    p->free_count--;
    p->changed = 1;
}

void pager_count_pages(mp_pager *p, uint64_t total)
{
    if (total <= p->total_pages)
        return;
    pager_note_words_used(p, total);
    p->free_count += total - p->total_pages;
    p->total_pages = total;
    p->changed = 1;
}

/* The choice itself, once the cut file is ruled out: the newest valid copy
 * by generation, page 0's selector only between equals. */
static void choose_copy(const mp_choice_in *in, mp_choice *out)
{
    int ok0 = in->problem[0] == MP_META_OK, ok1 = in->problem[1] == MP_META_OK;
    int sel_ok = in->selector <= 1;
    if (ok0 && ok1 && in->generation[0] != in->generation[1])
        out->chosen = in->generation[1] > in->generation[0];
    else if (ok0 && ok1)
        out->chosen = sel_ok ? in->selector : 0;
    else
        out->chosen = ok1 ? 1u : 0u;
    out->fallback = (out->chosen ? ok0 : ok1) ? (int32_t)(out->chosen ^ 1u) : -1;
    if (!ok0)
        out->flags |= MP_REC_META_A_DAMAGED;
    if (!ok1)
        out->flags |= MP_REC_META_B_DAMAGED;
    /* Page 0 names a copy only for the crate, which cannot read an extended
     * file: there its selector is not kept current. */
    if (!in->ext_always && in->total_pages[out->chosen] <= in->chunk_pages) {
        if (!sel_ok)
            out->flags |= MP_REC_SELECTOR_INVALID;
        else if (in->selector != out->chosen)
            out->flags |= MP_REC_SELECTOR_STALE;
        if (!in->meta_checksum_ok)
            out->flags |= MP_REC_META_CHECKSUM;
    }
    out->page0_stale = (out->flags & (MP_REC_SELECTOR_INVALID | MP_REC_SELECTOR_STALE |
                                      MP_REC_META_CHECKSUM)) != 0;
}

int mp_choose_committed(const mp_choice_in *in, mp_choice *out)
{
    if (!in || !out || in->chunk_pages == 0)
        return MP_EINVALID_ARGUMENT;
    mp_meta_header h[2];
    memset(h, 0, sizeof h);
    for (int c = 0; c < 2; c++) {
        h[c].problem = in->problem[c];
        h[c].generation = in->generation[c];
    }
    mp_choice r;
    memset(&r, 0, sizeof r);
    r.cut = cut_copy(h);
    /* Rolling back discards acknowledged commits: only when asked. */
    if (r.cut >= 0 && (!in->salvage || in->problem[r.cut ^ 1] != MP_META_OK))
        return MP_EFILE_TRUNCATED;
    if (in->problem[0] != MP_META_OK && in->problem[1] != MP_META_OK)
        return MP_ECORRUPT_METADATA;
    choose_copy(in, &r);
    if (r.cut >= 0)
        r.flags |= MP_REC_CUT_ROLLED_BACK;
    *out = r;
    return MP_OK;
}

/* Checks both metadata copies of the snapshot into the choice's input. */
static int read_copies(mp_pager *p, const uint8_t *snap, uint64_t file_len,
                       mp_open_report *rep, mp_meta_header h[2], mp_choice_in *in)
{
    mp_superblock sb;
    int rc = fmt_superblock_read(snap, MP_SB_SIZE, &sb);
    if (rc != MP_OK)
        return rc;
    if (sb.page_size_log2 != p->log2)
        return MP_ECORRUPT_SUPERBLOCK;
    p->minor = sb.version_minor >= MP_MINOR_EXTENDED ? MP_MINOR_EXTENDED : MP_MINOR_V02;
    p->ext_always = sb.ext_always;
    uint64_t max_total = p->minor == MP_MINOR_EXTENDED ? p->max_pages
                         : p->chunk_pages < p->max_pages ? p->chunk_pages : p->max_pages;
    uint64_t file_pages = file_len / p->page_size;
    rep->page_size = p->page_size;
    rep->file_bytes = file_len;
    p->file_pages = file_pages;
    memset(in, 0, sizeof *in);
    for (int c = 0; c < 2; c++) {
        check_copy(p, snap + (1 + (uint64_t)c) * p->page_size, file_pages, max_total, &h[c]);
        rep->generation[c] = h[c].generation;
        rep->meta_problem[c] = h[c].problem;
        in->problem[c] = h[c].problem;
        in->generation[c] = h[c].generation;
        in->total_pages[c] = h[c].total_pages;
    }
    rep->selector = sb.selector;
    in->selector = sb.selector;
    in->meta_checksum_ok = sb.meta_checksum == MP_CRC_RESIDUE;
    in->chunk_pages = p->chunk_pages;
    in->salvage = p->salvage;
    in->ext_always = p->ext_always;
    return MP_OK;
}

/* Chooses the committed metadata copy and loads it (with the extended
 * layout's pages its generation selects); falls back to the other copy when
 * those pages fail and the other copy is valid. */
static int choose_and_load(mp_pager *p, const uint8_t *snap, uint64_t file_len,
                           mp_open_report *rep, mp_choice *ch, uint32_t *dir_blocks)
{
    mp_meta_header h[2];
    mp_choice_in in;
    int rc = read_copies(p, snap, file_len, rep, h, &in);
    if (rc == MP_OK)
        rc = mp_choose_committed(&in, ch);
    if (rc == MP_OK || rc == MP_EFILE_TRUNCATED) {
        int cut = cut_copy(h);
        if (cut >= 0) {
            rep->cut_pages = h[cut].total_pages;
            rep->cut_generation = h[cut].generation;
        }
    }
    if (rc != MP_OK)
        return rc;
    /* A commit that carried data pages in its record (engine.c) is only as
     * good as those pages: if one missed the disk, the older copy, durable
     * before that commit began, is the state. */
    if (ch->fallback >= 0 && h[ch->chosen].generation > h[ch->fallback].generation &&
        !record_holds(p, snap + (1 + (uint64_t)ch->chosen) * p->page_size, &h[ch->chosen])) {
        rep->meta_problem[ch->chosen] = MP_META_DATA_MISSING;
        in.problem[ch->chosen] = MP_META_DATA_MISSING;
        if ((rc = mp_choose_committed(&in, ch)) != MP_OK)
            return rc;
    }
    const uint8_t *meta = snap + (1 + (uint64_t)ch->chosen) * p->page_size;
    rc = load_meta(p, meta, &h[ch->chosen], dir_blocks);
    if (rc == MP_OK)
        return MP_OK;
    rep->meta_problem[ch->chosen] = MP_META_BAD_FREE_MAP;
    if (ch->fallback < 0)
        return rc;
    /* The chosen copy's free-map pages failed: choose again without it. */
    in.problem[ch->chosen] = MP_META_BAD_FREE_MAP;
    if ((rc = mp_choose_committed(&in, ch)) != MP_OK)
        return rc;
    meta = snap + (1 + (uint64_t)ch->chosen) * p->page_size;
    rc = load_meta(p, meta, &h[ch->chosen], dir_blocks);
    if (rc != MP_OK)
        rep->meta_problem[ch->chosen] = MP_META_BAD_FREE_MAP;
    return rc;
}

/* The v0.2 layout's directory index in page 0, read or recovered from a
 * torn rewrite. */
static int read_dir_index(mp_pager *p, const uint8_t *page0, mp_open_report *rep,
                          uint32_t *count, int *page0_stale)
{
    int rc = fmt_dir_index_read(page0, p->page_size, count, p->refs);
    if (rc == MP_OK)
        return MP_OK;
    int dropped = 0;
    if (fmt_dir_index_recover(page0, p->page_size, count, p->refs, p->scratch, &dropped) !=
        MP_OK) {
        /* A zero count means no directory, whatever else the section
         * holds, as in the crate. */
        if (mp_load_u32(page0 + MP_DIR_INDEX_OFFSET) != 0)
            return rc;
        *count = 0;
        dropped = 0;
    }
    /* An interrupted append is only believable if the bitmap does not
     * count the block's pages yet (directory first, bitmap second). */
    if (dropped && !block_unfinished(p, &p->refs[*count]))
        return rc;
    if (*count > 0 || dropped) {
        rep->flags |= MP_REC_DIR_INDEX_TORN;
        *page0_stale = 1;
    }
    return MP_OK;
}

static int load_pages(mp_pager *p, const uint8_t *snap, uint64_t file_len,
                      mp_open_report *rep, int *page0_stale)
{
    mp_choice ch;
    uint32_t dir_blocks = 0;
    int rc = choose_and_load(p, snap, file_len, rep, &ch, &dir_blocks);
    if (rc != MP_OK)
        return rc;
    rep->chosen_copy = ch.chosen;
    rep->flags = ch.flags;
    *page0_stale = (int)ch.page0_stale;
    /* The other copy failed: it may have been the newer one. */
    p->meta_fell_back = ch.fallback < 0;
    p->active = ch.chosen;
    p->changed = p->index_changed = p->meta_unwritten = 0;
    /* A writer makes a salvage rollback durable: its commit overwrites the
     * copy past the end, which would otherwise stop the next open again. */
    if (ch.cut >= 0)
        p->changed = 1;
    p->hint = MP_RESERVED_PAGES;
    if (p->sum.mem)
        summary_rebuild(&p->sum, p->bits, p->pending, p->words_used);

    uint32_t count = 0;
    if (pager_extended(p)) {
        count = dir_blocks;
        p->dir_committed = count;
        p->ext_committed = 1;
        p->page0_stale = 0;
        return dir_load(p, rep, count);
    }
    if ((rc = read_dir_index(p, snap, rep, &count, page0_stale)) != MP_OK)
        return rc;
    p->page0_stale = *page0_stale;
    p->dir_committed = count;
    p->ext_committed = 0;
    /* Page 0's directory is committed apart from the bitmap, so after a
     * fallback it may be newer than the bitmap chosen: keep what it proves. */
    if (p->meta_fell_back && count > 0 && (rc = dir_adopt_current(p, rep, count)) != MP_OK)
        return rc;
    return dir_load(p, rep, count);
}

/* Replaces the in-memory state with the committed one, loaded fresh (a
 * transaction's rollback). Open writers stay open: their staged copies are
 * untouched. */
int pager_load_committed(mp_pager *p, mp_open_report *rep)
{
    mp_open_report local;
    memset(&local, 0, sizeof local);
    if (!rep)
        rep = &local;
    uint64_t open_writers = 0;
    for (uint32_t b = 0; b < p->dir_count; b++)
        for (uint32_t s = 0; s < p->epp; s++)
            open_writers += p->dirs[b].writer_open[s] == MP_WRITER_OPEN;
    uint64_t *pids = malloc(sizeof(uint64_t) * (open_writers + 1));
    if (!pids)
        return MP_ENO_MEMORY;
    uint64_t n = 0;
    for (uint32_t b = 0; b < p->dir_count; b++)
        for (uint32_t s = 0; s < p->epp; s++)
            if (p->dirs[b].writer_open[s] == MP_WRITER_OPEN)
                pids[n++] = (uint64_t)b * p->epp + s;
    int stale = p->page0_stale;
    /* The transaction's state is set aside while a fresh one loads, and
     * dropped once the load succeeds (state.c). */
    mp_committed txn;
    int rc = committed_new(p, &txn);
    if (rc == MP_OK) {
        committed_swap(p, &txn);
        rc = pager_load_state(p, p->map.mapped, rep, &stale);
        if (rc != MP_OK)
            committed_swap(p, &txn);
        committed_free(p, &txn);
    }
    if (rc != MP_OK) {
        p->poisoned = 1;
        free(pids);
        return rc;
    }
    p->page0_stale |= stale;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t b = pids[i] / p->epp, s = pids[i] % p->epp;
        if (b < p->dir_count && p->dirs[b].entries[s].in_use)
            p->dirs[b].writer_open[s] = MP_WRITER_OPEN;
    }
    free(pids);
    readers_after_reload(p);
    return MP_OK;
}
