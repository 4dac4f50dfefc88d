/*
 * pager.c - the page allocator: open, create, grow, alloc, free, commit.
 *
 * Owns: the lifetime of an mp_pager, choosing the committed state on open,
 * growth, and the allocation calls. How commits reach the disk is commit.c's.
 *
 * Crash safety rests on three rules, each kept next to the code it governs:
 *   1. The committed metadata copy is never written in place. A commit writes
 *      the whole new state into the other copy, with generation + 1, and only
 *      then touches page 0 (commit.c).
 *   2. Open trusts generations, not page 0: among the copies that pass their
 *      CRC and consistency checks it takes the newest, so a crash between the
 *      two flushes of a commit, or a damaged selector, loses nothing that was
 *      acknowledged (load_state).
 *   3. The file is grown, preallocated and its size made durable before any
 *      committed metadata counts the new pages (grow_to).
 * In the extended layout (format.c) rule 2 reaches further: each chunk's
 * free-map page and each directory-index page is also read from the copy with
 * the highest generation not above the chosen metadata copy's (load_chunks,
 * load_index_pages), so a metadata copy and the pages it relies on are chosen
 * together, and falling back to the older copy falls back with them.
 * A flush that fails leaves the on-disk state unknown, and retrying msync or
 * fsync after a failure is not safe (the kernel may have dropped the dirty
 * pages), so the pager is poisoned: every later call but close fails.
 */
#include "mp_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* The most of a file a pager maps: 16 TiB (2^32 pages of 4 KiB). A process
 * has 128 TiB of address space on x86-64, so a pager does not reserve all of
 * it at once: it reserves RESERVE_FACTOR times the file, at least
 * RESERVE_MIN, and moves to a larger range when the file outgrows that one
 * (os.c keeps the old range mapped, so no address handed out goes stale).
 * Reserving costs no memory; a move costs one mmap, and happens only when the
 * file has grown RESERVE_FACTOR-fold. */
static const uint64_t MAP_LIMIT = (uint64_t)1 << 44;
static const uint64_t RESERVE_MIN = (uint64_t)256 << 30;
static const uint64_t RESERVE_FACTOR = 8;

uint8_t *pager_page_ptr(const mp_pager *p, uint64_t id)
{
    return p->map.base + id * (uint64_t)p->page_size;
}

int pager_usable(const mp_pager *p, int writing)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    if (p->poisoned)
        return MP_EUNAVAILABLE;
    if (writing && p->read_only)
        return MP_EREAD_ONLY;
    /* A commit must raise the generation; at its maximum it would wrap to 0
     * and the next open would prefer the older copy. Refuse before changing
     * anything (a hostile or absurdly old file; 2^64 commits otherwise). */
    if (writing && p->generation == UINT64_MAX)
        return MP_EFILE_FULL;
    return MP_OK;
}

int pager_flush_page(mp_pager *p, uint64_t id)
{
    int rc = os_flush_range(&p->map, id * (uint64_t)p->page_size, p->page_size);
    if (rc != MP_OK)
        p->poisoned = 1;
    return rc;
}

static int valid_page_size(uint32_t page_size)
{
    return page_size >= (1u << MP_MIN_LOG2) && page_size <= (1u << MP_MAX_LOG2) &&
           (page_size & (page_size - 1)) == 0;
}

static uint32_t log2_of(uint32_t v)
{
    uint32_t l = 0;
    while ((1u << l) < v)
        l++;
    return l;
}

static void pager_destroy(mp_pager *p)
{
    if (!p)
        return;
    dir_release(p);
    os_map_release(&p->map);
    os_free_zeroed(p->bits, p->map_bytes);
    os_free_zeroed(p->system, p->map_bytes);
    os_free_zeroed(p->pending, p->map_bytes);
    os_free_zeroed(p->dirty, p->map_bytes);
    summary_release(&p->sum);
    free(p->chunk_dirty);
    free(p->chunk_active);
    free(p->index_dirty);
    free(p->index_active);
    free(p->scratch);
    free(p->dirs);
    free(p->refs);
    if (p->fd >= 0)
        (void)os_close_file(p->fd);
    free(p);
}

static int pager_new(int fd, uint32_t log2, int read_only, uint64_t need_bytes,
                     mp_io_hooks *io, mp_pager **out)
{
    mp_pager *p = calloc(1, sizeof *p);
    if (!p)
        return MP_ENO_MEMORY;
    p->fd = fd;
    p->map.fd = fd;
    p->staged_lo = 1; /* empty range: hi < lo */
    p->staged_hi = 0;
    p->map.io = io;
    p->read_only = read_only;
    p->log2 = log2;
    p->page_size = 1u << log2;
    p->chunk = fmt_chunk_pages(p->page_size);
    p->minor = MP_MINOR_V02;
    /* The extended layout has no cap of its own short of 2^32 chunks; what
     * caps a file is the most a pager maps. */
    uint64_t want = need_bytes > RESERVE_MIN / RESERVE_FACTOR ? need_bytes * RESERVE_FACTOR
                                                              : RESERVE_MIN;
    int rc = os_map_reserve(want, need_bytes, MAP_LIMIT, !read_only, &p->map);
    if (rc != MP_OK) {
        p->fd = -1;
        pager_destroy(p);
        return rc;
    }
    p->max_pages = MAP_LIMIT / p->page_size;
    if (p->max_pages > p->chunk && p->max_pages % p->chunk < MP_LAYOUT_PAGES)
        p->max_pages -= p->max_pages % p->chunk;
    p->map_bytes = (size_t)(bitmap_words(p->max_pages) + 1) * sizeof(uint64_t);
    p->bits = os_alloc_zeroed(p->map_bytes);
    p->system = os_alloc_zeroed(p->map_bytes);
    p->pending = os_alloc_zeroed(p->map_bytes);
    p->dirty = os_alloc_zeroed(p->map_bytes);
    p->max_chunks = p->max_pages / p->chunk + 1;
    size_t chunk_words = (size_t)bitmap_words(p->max_chunks) + 1;
    p->chunk_dirty = calloc(chunk_words, sizeof(uint64_t));
    p->chunk_active = calloc(chunk_words, sizeof(uint64_t));
    p->index_dirty = calloc(chunk_words, sizeof(uint64_t));
    p->index_active = calloc(chunk_words, sizeof(uint64_t));
    p->scratch = malloc(p->page_size);
    p->dir_capacity = fmt_max_dir_blocks(p->page_size);
    p->epp = fmt_entries_per_dir_page(p->page_size);
    p->dirs = calloc(p->dir_capacity, sizeof(mp_dir_block));
    p->refs = calloc(p->dir_capacity + 1u, sizeof(mp_dir_ref));
    int sum_ok = read_only || summary_init(&p->sum, p->max_pages) == MP_OK;
    if (!p->bits || !p->system || !p->pending || !p->dirty || !p->scratch || !p->dirs || !p->refs ||
        !p->chunk_dirty || !p->chunk_active || !p->index_dirty || !p->index_active || !sum_ok) {
        p->fd = -1;
        pager_destroy(p);
        return MP_ENO_MEMORY;
    }
    *out = p;
    return MP_OK;
}

static void note_words_used(mp_pager *p, uint64_t total)
{
    uint64_t w = bitmap_words(total) + 1;
    if (w > p->words_used)
        p->words_used = w;
}

/* Word w of bits or pending changed: keep the summary and the dirty free-map
 * pages in step. */
static void map_changed(mp_pager *p, uint64_t id)
{
    uint64_t w = id >> 6;
    if (p->sum.mem)
        summary_update(&p->sum, w, p->bits[w] | p->pending[w]);
    bitmap_set(p->chunk_dirty, id / p->chunk);
}

static void bit_take(mp_pager *p, uint64_t id)
{
    bitmap_set(p->bits, id);
    map_changed(p, id);
}

static void bit_give(mp_pager *p, uint64_t id)
{
    bitmap_clear(p->bits, id);
    map_changed(p, id);
}

/* Chunks (past chunk 0) that start below `total` pages. */
static uint64_t chunks_below(const mp_pager *p, uint64_t total)
{
    return total > p->chunk ? (total - 1) / p->chunk : 0;
}

/* A growth target the layout accepts: never a chunk without its layout
 * pages, never past the cap. */
static uint64_t fit_total(const mp_pager *p, uint64_t t)
{
    uint64_t rem = t % p->chunk;
    if (t > p->chunk && rem != 0 && rem < MP_LAYOUT_PAGES)
        t += MP_LAYOUT_PAGES - rem;
    return t > p->max_pages ? p->max_pages : t;
}

/* Make the file hold new_total pages: preallocate, make the size durable, map.
 * Nothing refers to the new pages until a later metadata commit counts them,
 * so a crash anywhere in here leaves only a longer file, which open accepts. */
static int grow_to(mp_pager *p, uint64_t new_total)
{
    uint64_t ps = p->page_size;
    /* Roots live beside the v0.2 bitmap (format.c): a state that holds
     * roots cannot outgrow the room the bitmap leaves them. */
    if (!fmt_meta_has_tail(p->page_size, new_total))
        for (uint32_t r = 0; r < MP_ROOTS; r++)
            if (p->roots[r] != 0)
                return MP_EFILE_FULL;
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
    uint64_t first = chunks_below(p, p->total_pages) + 1;
    uint64_t last = chunks_below(p, new_total);
    note_words_used(p, new_total);
    p->free_count += new_total - p->total_pages;
    p->total_pages = new_total;
    for (uint64_t c = first; c <= last; c++) {
        uint64_t at = c * p->chunk;
        for (uint64_t i = 0; i < MP_LAYOUT_PAGES; i++)
            bit_take(p, at + i);
        p->free_count -= MP_LAYOUT_PAGES;
        bitmap_set(p->chunk_active, c);
        bitmap_set(p->index_active, c - 1);
        if ((at + 1) * ps < old_size) {
            memset(pager_page_ptr(p, at + 1), 0, 3 * (size_t)ps);
            if ((rc = os_flush_range(&p->map, (at + 1) * ps, 3 * ps)) != MP_OK) {
                p->poisoned = 1;
                return rc;
            }
        }
    }
    p->changed = 1;
    return MP_OK;
}

/* Pages the file gains by growing to t, net of new chunks' layout pages. */
static uint64_t gained(const mp_pager *p, uint64_t t)
{
    return (t - p->total_pages) -
           MP_LAYOUT_PAGES * (chunks_below(p, t) - chunks_below(p, p->total_pages));
}

/* The next size: double until the step, then add the step. A v0.2 file
 * stops once at the v0.2 cap, so it leaves the crate's layout only when it
 * must. */
static uint64_t next_total(const mp_pager *p, uint64_t t)
{
    uint64_t add = t < p->grow_step ? t : p->grow_step;
    uint64_t n = t + (add ? add : 1);
    if (t < p->chunk && n > p->chunk)
        n = p->chunk;
    return fit_total(p, n);
}

uint64_t pager_room(const mp_pager *p)
{
    return p->free_count - p->pending_count + gained(p, p->max_pages);
}

uint64_t pager_dir_block_limit(const mp_pager *p)
{
    uint64_t per = fmt_max_dir_blocks(p->page_size);
    /* Index page k lives in chunk k + 1. */
    return pager_extended(p) ? per * chunks_below(p, p->total_pages) : per;
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
    /* Pages freed by a commit that is not durable yet are not reusable. */
    uint64_t usable = p->free_count - p->pending_count;
    if (usable >= n)
        return MP_OK;
    if (p->pending_count > 0 && p->txn_depth == 0) {
        /* Rather than grow the file, make those frees durable (one flushed
         * commit of the deferred state) so their pages can be reused. */
        int rc = pager_bring_page0_up_to_date(p);
        if (rc != MP_OK)
            return rc;
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

/* Lowest page at or above start that is free and not pending; the summary
 * makes this a few word reads however full the file is. */
static uint64_t find_allocatable(const mp_pager *p, uint64_t start)
{
    return summary_find_free(&p->sum, p->bits, p->pending, start, p->total_pages);
}

int pager_take_lowest(mp_pager *p, uint64_t *out_id)
{
    int rc = pager_ensure_free(p, 1);
    if (rc != MP_OK)
        return rc;
    uint64_t id = find_allocatable(p, p->hint);
    if (id >= p->total_pages) {
        /* The hint is only a lower bound; fall back to a full search. */
        id = find_allocatable(p, MP_RESERVED_PAGES);
        if (id >= p->total_pages)
            return MP_ECORRUPT_METADATA;
    }
    bit_take(p, id);
    p->free_count--;
    p->hint = id + 1;
    p->changed = 1;
    *out_id = id;
    return MP_OK;
}

void pager_release_bit(mp_pager *p, uint64_t id)
{
    bitmap_clear(p->bits, id);
    p->free_count++;
    p->changed = 1;
    if (p->txn_depth > 0 || p->durability == MP_DURABILITY_NONE) {
        /* Until the free is durable the page belongs to the durable state; a
         * new owner's writes must not reach it before then. */
        if (!bitmap_get(p->pending, id)) {
            bitmap_set(p->pending, id);
            uint64_t w = id >> 6;
            if (p->pending_count == 0 || w < p->pending_lo)
                p->pending_lo = w;
            if (p->pending_count == 0 || w > p->pending_hi)
                p->pending_hi = w;
            p->pending_count++;
        }
    }
    map_changed(p, id);
    if (id < p->hint)
        p->hint = id;
}

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
static int reader_saw_a_commit(const mp_pager *p, const uint8_t *snap, int loaded)
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
static int load_state(mp_pager *p, uint64_t file_len, mp_open_report *rep, int *page0_stale)
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
        if (reader_saw_a_commit(p, snap, rc == MP_OK)) {
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
    uint64_t last = chunks_below(p, total);
    for (uint64_t c = 1; c <= last; c++) {
        mp_chunk_header h[2];
        for (int w = 0; w < 2; w++)
            fmt_chunk_check(pager_page_ptr(p, c * p->chunk + (uint64_t)w), p->page_size, c,
                            total, gen, &h[w]);
        int pick = pick_copy(h[0].generation, h[0].valid, h[1].generation, h[1].valid);
        if (pick < 0)
            return MP_ECORRUPT_METADATA;
        if (pick)
            bitmap_set(p->chunk_active, c);
        else
            bitmap_clear(p->chunk_active, c);
        const uint8_t *page = pager_page_ptr(p, c * p->chunk + (uint64_t)pick);
        /* The maps grow with the chunks that check out, never with the
         * claimed total: a hostile total costs only what the file holds. */
        note_words_used(p, (c + 1) * p->chunk < total ? (c + 1) * p->chunk : total);
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
 * pages (each read from a private copy: a writer may be rewriting one). */
static int load_index_pages(mp_pager *p, uint32_t count, uint64_t gen, uint32_t *seal)
{
    uint32_t per = fmt_max_dir_blocks(p->page_size);
    if (count > pager_dir_block_limit(p))
        return MP_ECORRUPT_DIRECTORY_INDEX;
    /* Room for whole index pages: a copy read before its count is checked
     * may hold up to `per` references. */
    int rc = dir_reserve(p, ((uint64_t)count + per - 1) / per * per);
    if (rc != MP_OK)
        return rc;
    for (uint64_t k = 0; (uint64_t)k * per < count; k++) {
        uint64_t at = (k + 1) * p->chunk + 2;
        if (at + 1 >= p->total_pages)
            return MP_ECORRUPT_DIRECTORY_INDEX;
        uint64_t g[2] = {0, 0};
        uint32_t n[2] = {0, 0};
        int ok[2];
        for (int w = 0; w < 2; w++) {
            memcpy(p->scratch, pager_page_ptr(p, at + (uint64_t)w), p->page_size);
            ok[w] = fmt_index_read(p->scratch, p->page_size, k, gen, &g[w], &n[w],
                                   p->refs + k * per) == MP_OK;
        }
        int pick = pick_copy(g[0], ok[0], g[1], ok[1]);
        uint32_t want = count - (uint32_t)(k * per) < per ? count - (uint32_t)(k * per) : per;
        if (pick < 0 || n[pick] != want)
            return MP_ECORRUPT_DIRECTORY_INDEX;
        /* The last read filled refs from copy B; reread the pick if it is A. */
        memcpy(p->scratch, pager_page_ptr(p, at + (uint64_t)pick), p->page_size);
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
    uint64_t in0 = p->total_pages < p->chunk ? p->total_pages : p->chunk;
    note_words_used(p, in0);
    fmt_meta_load_bits(meta, in0, p->bits);
    fmt_meta_tail_read(meta, p->page_size, p->total_pages, p->roots, p->rec, &p->rec_n);
    *dir_blocks = 0;
    if (p->total_pages <= p->chunk)
        return MP_OK;
    /* Extended: the commit wrote its free-map and index pages and this copy
     * with one flush, so any of them may have missed the disk; the seal says
     * whether every page copy the commit wrote is the one selected now. */
    uint64_t free = in0 - bitmap_count_set(p->bits, in0);
    uint32_t seal = 0;
    int rc = load_chunks(p, p->total_pages, p->generation, &free, &seal, dir_blocks);
    if (rc == MP_OK)
        rc = load_index_pages(p, *dir_blocks, p->generation, &seal);
    if (rc != MP_OK)
        return rc;
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
    fmt_meta_check(page, p->page_size, max_total, max_total, h);
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

static int record_holds(mp_pager *p, const uint8_t *meta, const mp_meta_header *h)
{
    uint64_t roots[MP_ROOTS];
    uint32_t n;
    fmt_meta_tail_read(meta, p->page_size, h->total_pages, roots, p->rec, &n);
    return n == 0 || txn_record_holds(p, p->rec, n);
}

void pager_claim_bit(mp_pager *p, uint64_t id)
{
    bit_take(p, id);
    p->free_count--;
    p->changed = 1;
}

void pager_count_pages(mp_pager *p, uint64_t total)
{
    if (total <= p->total_pages)
        return;
    note_words_used(p, total);
    p->free_count += total - p->total_pages;
    p->total_pages = total;
    p->changed = 1;
}

static int load_pages(mp_pager *p, const uint8_t *snap, uint64_t file_len,
                      mp_open_report *rep, int *page0_stale)
{
    const uint8_t *page0 = snap;
    mp_superblock sb;
    int rc = fmt_superblock_read(page0, MP_SB_SIZE, &sb);
    if (rc != MP_OK)
        return rc;
    if (sb.page_size_log2 != p->log2)
        return MP_ECORRUPT_SUPERBLOCK;
    p->minor = sb.version_minor >= MP_MINOR_EXTENDED ? MP_MINOR_EXTENDED : MP_MINOR_V02;
    uint64_t max_total = p->minor == MP_MINOR_EXTENDED ? p->max_pages
                         : p->chunk < p->max_pages ? p->chunk : p->max_pages;
    uint64_t file_pages = file_len / p->page_size;
    rep->page_size = p->page_size;
    rep->file_bytes = file_len;
    p->file_pages = file_pages;
    mp_meta_header h[2];
    for (int c = 0; c < 2; c++) {
        check_copy(p, snap + (1 + (uint64_t)c) * p->page_size, file_pages, max_total, &h[c]);
        rep->generation[c] = h[c].generation;
        rep->meta_problem[c] = h[c].problem;
    }
    int ok0 = h[0].problem == MP_META_OK, ok1 = h[1].problem == MP_META_OK;
    int cut = cut_copy(h);
    if (cut >= 0) {
        rep->cut_pages = h[cut].total_pages;
        rep->cut_generation = h[cut].generation;
        /* Rolling back discards acknowledged commits: only when asked. */
        if (!p->salvage || h[cut ^ 1].problem != MP_META_OK)
            return MP_EFILE_TRUNCATED;
    }
    if (!ok0 && !ok1)
        return MP_ECORRUPT_METADATA;
    rep->selector = sb.selector;
    int sel_ok = sb.selector <= 1;
    uint32_t chosen;
    if (ok0 && ok1) {
        if (h[0].generation != h[1].generation)
            chosen = h[1].generation > h[0].generation;
        else
            chosen = sel_ok ? sb.selector : 0;
    } else {
        chosen = ok1 ? 1u : 0u;
    }
    /* A commit that carried data pages in its record (engine.c) is only as
     * good as those pages: if one missed the disk, the older copy, durable
     * before that commit began, is the state. */
    if (ok0 && ok1 && h[chosen].generation > h[chosen ^ 1u].generation &&
        !record_holds(p, snap + (1 + (uint64_t)chosen) * p->page_size, &h[chosen])) {
        rep->meta_problem[chosen] = MP_META_DATA_MISSING;
        if (chosen)
            ok1 = 0;
        else
            ok0 = 0;
        chosen ^= 1u;
    }
    /* In the extended layout a copy is only as good as the free-map pages
     * its generation selects: if they fail, the other copy is tried. */
    uint32_t dir_blocks = 0;
    rc = load_meta(p, snap + (1 + (uint64_t)chosen) * p->page_size, &h[chosen], &dir_blocks);
    if (rc != MP_OK) {
        rep->meta_problem[chosen] = MP_META_BAD_FREE_MAP;
        if (chosen ? !ok0 : !ok1)
            return rc;
        if (chosen)
            ok1 = 0;
        else
            ok0 = 0;
        chosen ^= 1u;
        rc = load_meta(p, snap + (1 + (uint64_t)chosen) * p->page_size, &h[chosen], &dir_blocks);
        if (rc != MP_OK) {
            rep->meta_problem[chosen] = MP_META_BAD_FREE_MAP;
            return rc;
        }
    }
    rep->chosen_copy = chosen;
    rep->flags = 0;
    if (!ok0)
        rep->flags |= MP_REC_META_A_DAMAGED;
    if (!ok1)
        rep->flags |= MP_REC_META_B_DAMAGED;
    if (cut >= 0)
        rep->flags |= MP_REC_CUT_ROLLED_BACK;
    /* The other copy failed: it may have been the newer one. */
    p->meta_fell_back = chosen ? !ok0 : !ok1;
    int extended = p->total_pages > p->chunk;
    /* Page 0 names a copy only for the crate, which cannot read an extended
     * file: there its selector is not kept current. */
    if (!extended) {
        if (!sel_ok)
            rep->flags |= MP_REC_SELECTOR_INVALID;
        else if (sb.selector != chosen)
            rep->flags |= MP_REC_SELECTOR_STALE;
        if (sb.meta_checksum != MP_CRC_RESIDUE)
            rep->flags |= MP_REC_META_CHECKSUM;
    }
    *page0_stale = (rep->flags & (MP_REC_SELECTOR_INVALID | MP_REC_SELECTOR_STALE |
                                  MP_REC_META_CHECKSUM)) != 0;

    p->active = chosen;
    p->changed = p->index_changed = p->meta_unwritten = 0;
    /* A writer makes a salvage rollback durable: its commit overwrites the
     * copy past the end, which would otherwise stop the next open again. */
    if (cut >= 0)
        p->changed = 1;
    p->hint = MP_RESERVED_PAGES;
    if (p->sum.mem)
        summary_rebuild(&p->sum, p->bits, p->pending, p->words_used);

    uint32_t count = 0;
    if (extended) {
        count = dir_blocks;
        p->dir_committed = count;
        p->ext_committed = 1;
        p->page0_stale = 0;
        return dir_load(p, rep, count);
    }
    if ((rc = fmt_dir_index_read(page0, p->page_size, &count, p->refs)) != MP_OK) {
        int dropped = 0;
        if (fmt_dir_index_recover(page0, p->page_size, &count, p->refs, p->scratch,
                                  &dropped) != MP_OK) {
            /* A zero count means no directory, whatever else the section
             * holds, as in the crate. */
            if (mp_load_u32(page0 + MP_DIR_INDEX_OFFSET) != 0)
                return rc;
            count = 0;
            dropped = 0;
        }
        /* An interrupted append is only believable if the bitmap does not
         * count the block's pages yet (directory first, bitmap second). */
        if (dropped && !block_unfinished(p, &p->refs[count]))
            return rc;
        if (count > 0 || dropped) {
            rep->flags |= MP_REC_DIR_INDEX_TORN;
            *page0_stale = 1;
        }
    }
    p->page0_stale = *page0_stale;
    p->dir_committed = count;
    p->ext_committed = 0;
    /* Page 0's directory is committed apart from the bitmap, so after a
     * fallback it may be newer than the bitmap chosen: keep what it proves. */
    if (p->meta_fell_back && count > 0 && (rc = dir_adopt_current(p, rep, count)) != MP_OK)
        return rc;
    return dir_load(p, rep, count);
}

/* Reloads the committed state over the in-memory one (a transaction's
 * rollback). Open writers stay open: their staged copies are untouched. */
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
    dir_release(p);
    int rc = load_state(p, p->map.mapped, rep, &stale);
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
    return MP_OK;
}

static void set_growth(mp_pager *p, const mp_options *opts)
{
    uint64_t step = opts->grow_step ? opts->grow_step : (uint64_t)1 << 30;
    p->grow_step = step / p->page_size ? step / p->page_size : 1;
    p->preallocate = !opts->sparse;
}

static int open_checked(const char *path, const mp_options *opts, uint32_t *want_size)
{
    if (!path || !opts)
        return MP_EINVALID_ARGUMENT;
    *want_size = opts->page_size;
    if (*want_size != 0 && !valid_page_size(*want_size))
        return MP_EINVALID_PAGE_SIZE;
    return MP_OK;
}

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
static int load_with_retries(mp_pager *p, uint64_t file_len, mp_open_report *rep,
                             int *page0_stale)
{
    int rc = headers_refuse(p, rep);
    if (rc != MP_OK)
        return rc;
    rc = load_state(p, file_len, rep, page0_stale);
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
        rc = load_state(p, file_len, rep, page0_stale);
        uint64_t now = rep->generation[0] > rep->generation[1] ? rep->generation[0]
                                                               : rep->generation[1];
        if (now != seen && limit < MAX_READER_ATTEMPTS)
            limit = attempt + 1 + quiet < MAX_READER_ATTEMPTS ? attempt + 1 + quiet
                                                              : MAX_READER_ATTEMPTS;
        seen = now;
    }
    return rc;
}

int mp_pager_open(const char *path, const mp_options *opts, mp_pager **out,
                  mp_open_report *report)
{
    uint32_t want_size;
    int rc = open_checked(path, opts, &want_size);
    if (rc != MP_OK)
        return rc;
    if (!out || !report || opts->durability < MP_DURABILITY_COMPAT ||
        opts->durability > MP_DURABILITY_NONE)
        return MP_EINVALID_ARGUMENT;
    memset(report, 0, sizeof *report);
    int fd;
    rc = os_open_file(path, 0, opts->read_only, &fd);
    if (rc != MP_OK)
        return rc;
    /* Readers take no lock, so a reader never blocks the writer. */
    if (!opts->read_only && (rc = os_lock(fd, opts->lock_timeout)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    uint64_t size;
    uint8_t head[MP_SB_SIZE];
    size_t got = 0;
    mp_superblock sb;
    if ((rc = os_file_size(fd, &size)) != MP_OK ||
        (rc = os_pread_all(fd, head, sizeof head, 0, &got)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    if ((rc = fmt_superblock_read(head, got, &sb)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    uint32_t ps = 1u << sb.page_size_log2;
    if (want_size != 0 && want_size != ps) {
        (void)os_close_file(fd);
        return MP_EINVALID_PAGE_SIZE;
    }
    /* Every file has at least the superblock, both copies and one data page;
     * a shorter one is truncated (the crate opens it and faults later). */
    if (size < (uint64_t)MP_INITIAL_PAGES * ps) {
        (void)os_close_file(fd);
        return MP_ECORRUPT_SUPERBLOCK;
    }
    mp_pager *p;
    if ((rc = pager_new(fd, sb.page_size_log2, opts->read_only,
                        size < MAP_LIMIT ? size : MAP_LIMIT, opts->io_hooks, &p)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    p->salvage = opts->salvage != 0;
    uint64_t map_len = size < p->map.limit ? size : p->map.limit;
    int page0_stale = 0;
    if ((rc = os_map_extend(&p->map, map_len)) != MP_OK ||
        (rc = load_with_retries(p, map_len, report, &page0_stale)) != MP_OK) {
        pager_destroy(p);
        return rc;
    }
    p->durability = opts->durability;
    set_growth(p, opts);
    /* Copies an unfinished commit left must go before this writer's commits
     * raise the generation to theirs. */
    if (!p->read_only && (rc = pager_clear_leftovers(p)) != MP_OK) {
        pager_destroy(p);
        return rc;
    }
    if (!p->read_only && (p->changed || p->page0_stale || p->index_changed || dir_any_dirty(p))) {
        /* A writer commits the repairs open made to the directory, and brings
         * page 0 in line with the chosen state, so that the crate, which
         * follows page 0, reads the same state. */
        if (p->changed || p->index_changed || dir_any_dirty(p))
            rc = pager_commit(p, MP_ORDER_DIR_FIRST);
        if (rc == MP_OK && p->page0_stale)
            rc = pager_write_page0(p, 1);
        if (rc != MP_OK) {
            pager_destroy(p);
            return rc;
        }
        report->flags |= MP_REC_PAGE0_REWRITTEN;
    }
    *out = p;
    return MP_OK;
}

/* Writes the crate's fresh file into p's file (4 pages, page 3 free, both
 * copies identical at generation 0, the selector on A, an empty sealed
 * directory index) and makes its bytes durable. */
static int write_fresh(mp_pager *p, uint64_t len)
{
    uint32_t ps = p->page_size;
    p->total_pages = MP_INITIAL_PAGES;
    p->free_count = 1;
    p->generation = 0;
    p->active = 0;
    p->hint = MP_RESERVED_PAGES;
    note_words_used(p, p->total_pages);
    for (uint64_t i = 0; i < MP_RESERVED_PAGES; i++)
        bit_take(p, i);
    uint8_t *buf = p->scratch;
    int rc = os_grow_file(&p->map, 0, len, p->preallocate);
    if (rc != MP_OK)
        return rc;
    memset(buf, 0, ps);
    fmt_superblock_write(buf, p->log2, (uint8_t)p->minor, 0);
    fmt_dir_index_write(buf, ps, 0, NULL);
    if ((rc = os_write_all(p->fd, buf, ps, 0)) != MP_OK)
        return rc;
    fmt_meta_write(buf, ps, p->total_pages, 0, p->free_count, p->bits, NULL);
    if ((rc = os_write_all(p->fd, buf, ps, ps)) != MP_OK ||
        (rc = os_write_all(p->fd, buf, ps, 2 * (uint64_t)ps)) != MP_OK)
        return rc;
    return os_sync_file(&p->map);
}

/* The file is built whole under a temporary name beside path, made durable,
 * and only then given its name (os_publish, which never replaces a file): a
 * crash leaves either no file at path or a complete one, never a partial
 * file that would neither open nor let create run again. The lock is taken
 * on the temporary file's descriptor, which stays the same file under its
 * final name. */
int mp_pager_create(const char *path, const mp_options *opts, mp_pager **out)
{
    if (!path || !opts || !out || opts->durability < MP_DURABILITY_COMPAT ||
        opts->durability > MP_DURABILITY_NONE ||
        (opts->layout != 0 && opts->layout != MP_MINOR_V02 && opts->layout != MP_MINOR_EXTENDED))
        return MP_EINVALID_ARGUMENT;
    uint32_t ps = opts->page_size;
    if (!valid_page_size(ps))
        return MP_EINVALID_PAGE_SIZE;
    /* An early answer for the common case; os_publish gives the final one. */
    struct stat st;
    if (lstat(path, &st) == 0)
        return -EEXIST;
    char *tmp;
    int fd;
    int rc = os_create_temp(path, &tmp, &fd);
    if (rc != MP_OK)
        return rc;
    mp_pager *p = NULL;
    uint64_t len = (uint64_t)MP_INITIAL_PAGES * ps;
    if ((rc = os_lock(fd, opts->lock_timeout)) != MP_OK ||
        (rc = pager_new(fd, log2_of(ps), 0, len, opts->io_hooks, &p)) != MP_OK) {
        (void)os_close_file(fd);
        (void)os_unlink(tmp);
        free(tmp);
        return rc;
    }
    p->durability = opts->durability;
    /* layout 3: the file says "extended" from the start (the crate refuses
     * it), so no commit needs page 0 for the crate's sake. */
    p->minor = opts->layout == MP_MINOR_EXTENDED ? MP_MINOR_EXTENDED : MP_MINOR_V02;
    set_growth(p, opts);
    if ((rc = write_fresh(p, len)) != MP_OK || (rc = os_publish(tmp, path)) != MP_OK) {
        pager_destroy(p);
        (void)os_unlink(tmp);
        free(tmp);
        return rc;
    }
    free(tmp);
    /* The name must be durable before create returns, or a crash could
     * leave no file behind a successful create. */
    if ((rc = os_sync_dir_of(path)) != MP_OK || (rc = os_map_extend(&p->map, len)) != MP_OK) {
        pager_destroy(p);
        (void)os_unlink(path);
        return rc;
    }
    *out = p;
    return MP_OK;
}

int mp_pager_close(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    /* What a lazy durability mode deferred is written now; a caller who wants
     * to see an error from that calls mp_pager_finish first. */
    (void)mp_pager_finish(p);
    pager_destroy(p);
    return MP_OK;
}

int mp_pager_refresh(mp_pager *p, mp_open_report *report)
{
    if (!p || !report)
        return MP_EINVALID_ARGUMENT;
    if (!p->read_only)
        return MP_EINVALID_ARGUMENT;
    memset(report, 0, sizeof *report);
    uint64_t size;
    int rc = os_file_size(p->fd, &size);
    if (rc != MP_OK)
        return rc;
    uint64_t map_len = size < p->map.limit ? size : p->map.limit;
    /* The mapping only grows: a view handed out earlier stays valid even if
     * the file shrank behind our back (its pages then read as zero or fault,
     * which no reader can prevent for a file it does not own). */
    if (map_len > p->map.mapped && (rc = os_map_extend(&p->map, map_len)) != MP_OK)
        return rc;
    if (map_len < p->map.mapped)
        map_len = p->map.mapped;
    /* Load into fresh buffers; keep the old state if the file does not validate. */
    mp_pager saved = *p;
    p->bits = os_alloc_zeroed(p->map_bytes);
    p->system = os_alloc_zeroed(p->map_bytes);
    p->dirs = calloc(p->dir_capacity, sizeof(mp_dir_block));
    p->refs = calloc(p->dir_capacity + 1u, sizeof(mp_dir_ref));
    p->dir_count = 0;
    if (!p->bits || !p->system || !p->dirs || !p->refs) {
        rc = MP_ENO_MEMORY;
    } else {
        int stale = 0;
        rc = load_with_retries(p, map_len, report, &stale);
    }
    if (rc != MP_OK) {
        dir_release(p);
        os_free_zeroed(p->bits, p->map_bytes);
        os_free_zeroed(p->system, p->map_bytes);
        free(p->dirs);
        free(p->refs);
        mp_map map = p->map;
        uint64_t words_used = p->words_used;
        *p = saved;
        p->map = map;
        p->words_used = words_used > p->words_used ? words_used : p->words_used;
        return rc;
    }
    mp_pager old = saved;
    dir_release(&old);
    os_free_zeroed(old.bits, old.map_bytes);
    os_free_zeroed(old.system, old.map_bytes);
    free(old.dirs);
    free(old.refs);
    return MP_OK;
}

int mp_pager_stats(const mp_pager *p, mp_stats *out)
{
    if (!p || !out)
        return MP_EINVALID_ARGUMENT;
    out->page_size = p->page_size;
    out->read_only = (uint32_t)p->read_only;
    out->page_count = p->total_pages;
    out->free_count = p->free_count;
    out->generation = p->generation;
    out->max_pages = p->max_pages;
    out->protected_count = p->protected_count;
    out->dir_blocks = p->dir_count;
    out->system_pages = p->system_count;
    /* The layout of the state in memory: what the next commit writes. */
    out->format_minor = pager_extended(p) ? MP_MINOR_EXTENDED : p->minor;
    out->chunk_pages = p->chunk;
    out->layout_pages = MP_RESERVED_PAGES + MP_LAYOUT_PAGES * chunks_below(p, p->total_pages);
    out->room = pager_room(p);
    return MP_OK;
}

int mp_pager_mapping(const mp_pager *p, uint8_t **base, uint64_t *reserved_bytes)
{
    if (!p || !base || !reserved_bytes)
        return MP_EINVALID_ARGUMENT;
    *base = p->map.base;
    *reserved_bytes = p->map.reserved;
    return MP_OK;
}

/* The pager's descriptor, for a reader's Python layer to map the file again
 * read-only (its views come from there: see _readonly.py). */
int mp_pager_fd(const mp_pager *p, int *out_fd)
{
    if (!p || !out_fd)
        return MP_EINVALID_ARGUMENT;
    if (p->fd < 0)
        return MP_EUNAVAILABLE;
    *out_fd = p->fd;
    return MP_OK;
}

/* ------------------------------------------------------------ alloc/free */

static void zero_pages(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        memset(pager_page_ptr(p, ids[i]), 0, p->page_size);
}

int mp_pager_alloc(mp_pager *p, int zero, uint64_t *out_id)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (!out_id)
        return MP_EINVALID_ARGUMENT;
    uint64_t id;
    if ((rc = pager_take_lowest(p, &id)) != MP_OK)
        return rc;
    if (zero)
        zero_pages(p, &id, 1);
    if ((rc = pager_commit(p, MP_ORDER_DIR_FIRST)) != MP_OK)
        return rc;
    *out_id = id;
    return MP_OK;
}

/* A private array of n ids, or NULL when n ids do not fit in memory. */
static uint64_t *id_list_new(uint64_t n)
{
    if (n > SIZE_MAX / sizeof(uint64_t))
        return NULL;
    return malloc((size_t)n * sizeof(uint64_t));
}

int mp_pager_alloc_bulk(mp_pager *p, uint64_t n, int zero, uint64_t *out_ids)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!out_ids)
        return MP_EINVALID_ARGUMENT;
    if (n > p->max_pages)
        return MP_EFILE_FULL;
    /* The ids live in the core's own list until the commit is done: the
     * caller's buffer may change under us (another thread; or it is a view
     * of a page this very call hands out and zeroes), so nothing is ever read
     * back from it. It is written last, only on success. */
    uint64_t *ids = id_list_new(n);
    if (!ids)
        return MP_ENO_MEMORY;
    /* All the growth happens first, so nothing below can fail before the
     * commit: either every page is taken in one commit or none is. */
    if ((rc = pager_ensure_free(p, n)) != MP_OK) {
        free(ids);
        return rc;
    }
    uint64_t at = p->hint;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id = find_allocatable(p, at);
        if (id >= p->total_pages) {
            /* The hint is only a lower bound; ensure_free counted the pages. */
            id = find_allocatable(p, MP_RESERVED_PAGES);
            if (id >= p->total_pages) {
                for (uint64_t j = 0; j < i; j++)
                    bit_give(p, ids[j]);
                free(ids);
                return MP_ECORRUPT_METADATA;
            }
        }
        bit_take(p, id);
        ids[i] = id;
        at = id + 1;
    }
    p->free_count -= n;
    p->hint = at;
    p->changed = 1;
    if (zero)
        zero_pages(p, ids, n);
    rc = pager_commit(p, MP_ORDER_DIR_FIRST);
    if (rc == MP_OK)
        memcpy(out_ids, ids, (size_t)n * sizeof(uint64_t));
    free(ids);
    return rc;
}

/* Why a page may not be freed (or viewed), in the order the checks apply. */
static int check_freeable(const mp_pager *p, uint64_t id)
{
    if (id < MP_RESERVED_PAGES)
        return MP_ERESERVED_PAGE;
    if (id >= p->total_pages)
        return MP_EOUT_OF_BOUNDS;
    if (pager_is_layout_page(p, id) || bitmap_get(p->system, id))
        return MP_ERESERVED_PAGE;
    if (!bitmap_get(p->bits, id))
        return MP_EDOUBLE_FREE;
    return MP_OK;
}

int mp_pager_free(mp_pager *p, uint64_t id)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if ((rc = check_freeable(p, id)) != MP_OK)
        return rc;
    pager_release_bit(p, id);
    return pager_commit(p, MP_ORDER_META_FIRST);
}

int mp_pager_free_bulk(mp_pager *p, const uint64_t *caller_ids, uint64_t n)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (n == 0)
        return MP_OK;
    if (!caller_ids)
        return MP_EINVALID_ARGUMENT;
    /* One read of the caller's buffer, into memory the core owns: another
     * thread may change that buffer at any moment (the GIL is released), and
     * ids checked in one read and applied from a second would let it free a
     * reserved page or set a bit far past the bitmap. */
    uint64_t *ids = id_list_new(n);
    if (!ids)
        return MP_ENO_MEMORY;
    memcpy(ids, caller_ids, (size_t)n * sizeof(uint64_t));
    /* Clearing each bit as it is checked makes a repeated id fail as a double
     * free; on any failure the bits cleared so far are set again. */
    for (uint64_t i = 0; i < n; i++) {
        rc = check_freeable(p, ids[i]);
        if (rc != MP_OK) {
            for (uint64_t j = 0; j < i; j++)
                bitmap_set(p->bits, ids[j]);
            free(ids);
            return rc;
        }
        bitmap_clear(p->bits, ids[i]);
    }
    /* Validated: set the bits again and release them the one way there is. */
    for (uint64_t i = 0; i < n; i++) {
        bitmap_set(p->bits, ids[i]);
        pager_release_bit(p, ids[i]);
    }
    free(ids);
    return pager_commit(p, MP_ORDER_META_FIRST);
}

int mp_pager_check_page(const mp_pager *p, uint64_t id)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (id < MP_RESERVED_PAGES)
        return MP_ERESERVED_PAGE;
    if (id >= p->total_pages)
        return MP_EOUT_OF_BOUNDS;
    if (pager_is_layout_page(p, id) || bitmap_get(p->system, id))
        return MP_ERESERVED_PAGE;
    return MP_OK;
}

int mp_pager_list_pages(const mp_pager *p, int kind, uint64_t start, uint64_t *out_ids,
                        uint64_t capacity, uint64_t *out_n)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!out_ids || !out_n || (kind != MP_KIND_ALLOCATED && kind != MP_KIND_SYSTEM))
        return MP_EINVALID_ARGUMENT;
    uint64_t n = 0;
    uint64_t at = start < MP_RESERVED_PAGES ? MP_RESERVED_PAGES : start;
    while (n < capacity) {
        uint64_t id = kind == MP_KIND_ALLOCATED
                          ? bitmap_find_set(p->bits, p->system, at, p->total_pages)
                          : bitmap_find_set(p->system, NULL, at, p->total_pages);
        if (id >= p->total_pages)
            break;
        at = id + 1;
        if (kind == MP_KIND_ALLOCATED && pager_is_layout_page(p, id))
            continue;
        out_ids[n++] = id;
    }
    *out_n = n;
    return MP_OK;
}
