/*
 * pager.c - the lifetime of a pager: create, open, refresh, close, stats.
 *
 * Owns: allocating and releasing an mp_pager and its maps, the public open,
 * create, refresh and close calls and the read-only accessors. Choosing the
 * committed state is recover.c's, growth grow.c's, allocation alloc.c's, and
 * how commits reach the disk commit.c's (transactions: txn.c).
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
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

/* The most of a file a pager maps: MP_MAP_LIMIT, 16 TiB (2^32 pages of 4 KiB). A process
 * has 128 TiB of address space on x86-64, so a pager does not reserve all of
 * it at once: it reserves MP_RESERVE_FACTOR times the file, at least
 * RESERVE_MIN, and moves to a larger range when the file outgrows that one
 * (os.c keeps the old range mapped, so no address handed out goes stale).
 * Reserving costs no memory; a move costs one mmap, and happens only when the
 * file has grown MP_RESERVE_FACTOR-fold. */

static const uint64_t RESERVE_MIN = (uint64_t)256 << 30;

uint8_t *pager_page_ptr(const mp_pager *p, uint64_t id)
{
    return p->map.base + id * (uint64_t)p->page_size;
}

int pager_usable(const mp_pager *p, int writing)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    mp_pager_state st = pager_state(p);
    if (st == MP_PAGER_FORGOTTEN || st == MP_PAGER_ERROR)
        return MP_EUNAVAILABLE;
    if (writing && st == MP_PAGER_READER)
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

static uint32_t log2_of(uint32_t v)
{
    uint32_t l = 0;
    while ((1u << l) < v)
        l++;
    return l;
}

/* Frees everything but the struct and its mutex: what close gives back. Safe
 * to call twice (each part is left empty). */
static void pager_shut(mp_pager *p)
{
    if (p->lk.closed)
        return; /* closed already: only the struct is left */
    readers_release(p);
    space_release(p);
    mp_committed st;
    memset(&st, 0, sizeof st);
    committed_swap(p, &st);
    committed_free(p, &st);
    os_map_release(&p->map);
    os_free_zeroed(p->dirty, p->map_bytes);
    p->dirty = NULL;
    summary_release(&p->sum);
    free(p->scratch);
    p->scratch = NULL;
    free(p->commit_page);
    p->commit_page = NULL;
    tree_release(p);
    if (p->fd >= 0)
        (void)os_close_file(p->fd);
    p->fd = p->map.fd = -1;
}

void pager_destroy(mp_pager *p)
{
    if (!p)
        return;
    pager_shut(p);
    pager_lock_destroy(p);
    free(p);
}

static int pager_new(int fd, uint32_t log2, int read_only, uint64_t need_bytes,
                     mp_io_hooks *io, mp_pager **out)
{
    mp_pager *p = calloc(1, sizeof *p);
    if (!p)
        return MP_ENO_MEMORY;
    if (pager_lock_init(p) != MP_OK) {
        free(p);
        return MP_ENO_MEMORY;
    }
    p->fd = fd;
    p->map.fd = fd;
    p->staged_lo = 1; /* empty range: hi < lo */
    p->staged_hi = 0;
    p->map.io = io;
    p->read_only = read_only;
    p->log2 = log2;
    p->page_size = 1u << log2;
    p->chunk_pages = fmt_chunk_pages(p->page_size);
    p->minor = MP_MINOR_V02;
    /* The extended layout has no cap of its own short of 2^32 chunks; what
     * caps a file is the most a pager maps. */
    uint64_t want = need_bytes > RESERVE_MIN / MP_RESERVE_FACTOR ? need_bytes * MP_RESERVE_FACTOR
                                                              : RESERVE_MIN;
    int rc = os_map_reserve(want, need_bytes, MP_MAP_LIMIT, !read_only, &p->map);
    if (rc != MP_OK) {
        p->fd = -1;
        pager_destroy(p);
        return rc;
    }
    p->max_pages = fmt_max_mapped_pages(p->page_size);
    p->map_bytes = (size_t)(bitmap_words(p->max_pages) + 1) * sizeof(uint64_t);
    p->dirty = os_alloc_zeroed(p->map_bytes);
    p->max_chunks = p->max_pages / p->chunk_pages + 1;
    p->scratch = malloc(p->page_size);
    p->commit_page = malloc(p->page_size);
    p->epp = fmt_entries_per_dir_page(p->page_size);
    /* The committed state starts empty: open loads into it, create writes it. */
    mp_committed st;
    int st_ok = committed_new(p, &st) == MP_OK;
    if (st_ok)
        committed_swap(p, &st);
    int sum_ok = read_only || summary_init(&p->sum, p->max_pages) == MP_OK;
    if (!st_ok || !p->dirty || !p->scratch || !p->commit_page || !sum_ok) {
        p->fd = -1;
        pager_destroy(p);
        return MP_ENO_MEMORY;
    }
    *out = p;
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
    if (*want_size != 0 && !fmt_valid_page_size(*want_size))
        return MP_EINVALID_PAGE_SIZE;
    return MP_OK;
}

/* Open and a reader's refresh touch a few layout pages in every chunk, which
 * lie chunk_pages apart: with the kernel's read-around each such fault reads,
 * or in a sparse file zeroes, a window of the file around it, and a cold
 * 2^27-page file took seconds to open. Meanwhile the mapping reads only the
 * pages touched (on = 1); then read-around is back for the caller's views.
 * Only a hint: not one of the hooked calls of os.c, and its failure is no
 * error. */
static void map_random(const mp_map *m, int on)
{
    if (m->mapped > 0)
        (void)posix_madvise(m->base, (size_t)m->mapped, on ? POSIX_MADV_RANDOM : POSIX_MADV_NORMAL);
}

/* Asks for every chunk's layout pages at once, before the load touches them
 * one by one: the reads go to the device together, not one fault at a time
 * (a cold open of a big file waits for one batch, not for thousands). */
static void map_prefetch_layout(const mp_pager *p)
{
    uint64_t pages = p->map.mapped / p->page_size;
    uint64_t span = (uint64_t)MP_LAYOUT_PAGES * p->page_size;
    for (uint64_t c = 1; c <= fmt_chunks_below(p->chunk_pages, pages); c++) {
        uint64_t at = fmt_chunk_start(p->chunk_pages, c) * p->page_size;
        if (at + span <= p->map.mapped)
            (void)posix_madvise(p->map.base + at, (size_t)span, POSIX_MADV_WILLNEED);
    }
}

/* A writer's open: clears what an unfinished commit left, commits the
 * repairs open made and brings page 0 in line with the chosen state. */
static int commit_repairs(mp_pager *p, mp_open_report *report)
{
    /* Copies an unfinished commit left must go before this writer's commits
     * raise the generation to theirs. */
    int rc = pager_clear_leftovers(p);
    if (rc != MP_OK)
        return rc;
    if (!(p->changed || p->page0_stale || p->index_changed || dir_any_dirty(p)))
        return MP_OK;
    /* So that the crate, which follows page 0, reads the same state. */
    if (p->changed || p->index_changed || dir_any_dirty(p))
        rc = pager_commit(p, MP_ORDER_DIR_FIRST);
    if (rc == MP_OK && p->page0_stale)
        rc = pager_write_page0(p, 1);
    if (rc == MP_OK)
        report->flags |= MP_REC_PAGE0_REWRITTEN;
    return rc;
}

int mp_pager_open(const char *path, const mp_options *opts, mp_pager **out,
                  mp_open_report *report)
{
    uint32_t want_size;
    int rc = open_checked(path, opts, &want_size);
    if (rc != MP_OK)
        return rc;
    (void)want_size; /* checked here, used by pager_open_fd */
    if (!out || !report || opts->durability < MP_DURABILITY_COMPAT ||
        opts->durability > MP_DURABILITY_NONE)
        return MP_EINVALID_ARGUMENT;
    memset(report, 0, sizeof *report);
    int fd;
    rc = os_open_file(opts->io_hooks, path, 0, opts->read_only, &fd);
    if (rc != MP_OK)
        return rc;
    /* Readers take no lock, so a reader never blocks the writer. */
    if (!opts->read_only && (rc = os_lock(opts->io_hooks, fd, opts->lock_timeout)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    return pager_open_fd(fd, opts, out, report);
}

int pager_open_fd(int fd, const mp_options *opts, mp_pager **out, mp_open_report *report)
{
    uint32_t want_size = opts->page_size;
    int rc;
    uint64_t size;
    uint8_t head[MP_SB_SIZE];
    size_t got = 0;
    mp_superblock sb;
    if ((rc = os_file_size(fd, &size)) != MP_OK ||
        (rc = os_pread_all(opts->io_hooks, fd, head, sizeof head, 0, &got)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    if ((rc = fmt_superblock_read(head, got, &sb)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    uint32_t ps = 1u << sb.page_size_log2;
    if (want_size != 0 && want_size != ps) {
        /* Said in the report, so the error can name the file's page size. */
        report->page_size = ps;
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
                        size < MP_MAP_LIMIT ? size : MP_MAP_LIMIT, opts->io_hooks, &p)) != MP_OK) {
        (void)os_close_file(fd);
        return rc;
    }
    p->salvage = opts->salvage != 0;
    uint64_t map_len = size < p->map.limit ? size : p->map.limit;
    int page0_stale = 0;
    if ((rc = os_map_extend(&p->map, map_len)) != MP_OK) {
        pager_destroy(p);
        return rc;
    }
    /* Open touches a few pages per chunk, far apart: no read-around. */
    map_random(&p->map, 1);
    map_prefetch_layout(p);
    rc = pager_load_with_retries(p, map_len, report, &page0_stale);
    p->durability = opts->durability;
    set_growth(p, opts);
    if (rc == MP_OK && !p->read_only) {
        /* No other thread can see p yet; held all the same, since every
         * commit runs with the mutex held (check.c asserts it). */
        (void)pager_enter(p);
        rc = commit_repairs(p, report);
        pager_leave(p);
    }
    if (rc != MP_OK) {
        pager_destroy(p);
        return rc;
    }
    map_random(&p->map, 0);
    *out = p;
    return MP_OK;
}

/* A file extended from creation: root page A at page 4 and index page 0's
 * copy A at page 6, both of generation 0 (copies B stay zero: invalid), the
 * pair 4-7 allocated system pages; returns the seal of generation 0, which
 * covers both, in the order open checks them (index pages, then roots). */
static int write_fresh_always(mp_pager *p, uint32_t *seal)
{
    uint32_t ps = p->page_size;
    uint8_t *buf = p->scratch;
    uint64_t roots[MP_ROOTS] = {0};
    mp_meta_tail tail = {roots, NULL, 0};
    for (uint64_t id = MP_ALWAYS_ROOTS_PAGE; id < MP_ALWAYS_PAGES; id++) {
        pager_bit_take(p, id);
        bitmap_set(p->system, id);
    }
    p->free_count = 1;
    p->system_count = MP_ALWAYS_PAGES - MP_ALWAYS_ROOTS_PAGE;
    p->roots_page = MP_ALWAYS_ROOTS_PAGE;
    p->ext_committed = 1;
    fmt_index_write(buf, ps, 0, 0, 0, NULL);
    *seal = fmt_seal_add(0, buf, ps);
    int rc = os_write_all(p->map.io, p->fd, buf, ps, (uint64_t)MP_ALWAYS_INDEX_PAGE * ps);
    if (rc != MP_OK)
        return rc;
    fmt_roots_page_write(buf, ps, 0, &tail);
    *seal = fmt_seal_add(*seal, buf, ps);
    return os_write_all(p->map.io, p->fd, buf, ps, (uint64_t)MP_ALWAYS_ROOTS_PAGE * ps);
}

/* Writes the crate's fresh file into p's file (4 pages, page 3 free, both
 * copies identical at generation 0, the selector on A, an empty sealed
 * directory index), or one extended from creation (8 pages, 4-7 its root
 * and index pages), and makes its bytes durable. */
static int write_fresh(mp_pager *p, uint64_t len)
{
    uint32_t ps = p->page_size;
    p->total_pages = p->ext_always ? MP_ALWAYS_PAGES : MP_INITIAL_PAGES;
    p->free_count = p->total_pages - MP_RESERVED_PAGES;
    p->generation = 0;
    p->active = 0;
    p->hint = MP_RESERVED_PAGES;
    pager_note_words_used(p, p->total_pages);
    for (uint64_t i = 0; i < MP_RESERVED_PAGES; i++)
        pager_bit_take(p, i);
    uint8_t *buf = p->scratch;
    int rc = os_grow_file(&p->map, 0, len, p->preallocate);
    if (rc != MP_OK)
        return rc;
    uint32_t seal = 0;
    if (p->ext_always && (rc = write_fresh_always(p, &seal)) != MP_OK)
        return rc;
    memset(buf, 0, ps);
    fmt_superblock_write(buf, p->log2, (uint8_t)p->minor, p->ext_always, 0);
    fmt_dir_index_write(buf, ps, 0, NULL);
    if ((rc = os_write_all(p->map.io, p->fd, buf, ps, 0)) != MP_OK)
        return rc;
    fmt_meta_write(buf, ps, p->total_pages, 0,
                   p->ext_always ? fmt_meta_ext_word(seal, p->roots_page) : p->free_count,
                   p->bits, NULL);
    if ((rc = os_write_all(p->map.io, p->fd, buf, ps, ps)) != MP_OK ||
        (rc = os_write_all(p->map.io, p->fd, buf, ps, 2 * (uint64_t)ps)) != MP_OK)
        return rc;
    return os_sync_file(&p->map);
}

/* The file is built whole without a name in path's folder (Linux; elsewhere
 * under a temporary name beside path), made durable, and only then given its
 * name (os_publish, which never replaces a file): a crash leaves either no
 * file at path or a complete one, never a partial file that would neither
 * open nor let create run again (and on Linux no temporary file either). The
 * lock is taken on the new file's descriptor, which stays the same file under
 * its final name. */
int mp_pager_create(const char *path, const mp_options *opts, mp_pager **out)
{
    if (!path || !opts || !out || opts->durability < MP_DURABILITY_COMPAT ||
        opts->durability > MP_DURABILITY_NONE ||
        (opts->layout != 0 && opts->layout != MP_MINOR_V02 && opts->layout != MP_MINOR_EXTENDED))
        return MP_EINVALID_ARGUMENT;
    uint32_t ps = opts->page_size;
    if (!fmt_valid_page_size(ps))
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
    int always = opts->layout == MP_MINOR_EXTENDED;
    uint64_t len = (uint64_t)(always ? MP_ALWAYS_PAGES : MP_INITIAL_PAGES) * ps;
    if ((rc = os_lock(opts->io_hooks, fd, opts->lock_timeout)) != MP_OK ||
        (rc = pager_new(fd, log2_of(ps), 0, len, opts->io_hooks, &p)) != MP_OK) {
        (void)os_close_file(fd);
        os_discard_temp(tmp);
        free(tmp);
        return rc;
    }
    p->durability = opts->durability;
    /* layout 3: the file is extended from the start (the crate refuses it),
     * at every page count: one commit point, so one flush per commit. */
    p->minor = always ? MP_MINOR_EXTENDED : MP_MINOR_V02;
    p->ext_always = always;
    set_growth(p, opts);
    if ((rc = write_fresh(p, len)) != MP_OK || (rc = os_publish(tmp, path)) != MP_OK) {
        pager_destroy(p);
        os_discard_temp(tmp);
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

int pager_close_locked(mp_pager *p)
{
    /* What a lazy durability mode deferred is written now; a caller who wants
     * to see an error from that calls mp_pager_finish first. The struct stays
     * (lock.c): a call racing this close in another thread gets MP_ECLOSED. */
    (void)mp_pager_finish_locked(p);
    pager_shut(p);
    p->lk.closed = 1;
    return MP_OK;
}

int mp_pager_refresh_locked(mp_pager *p, mp_open_report *report)
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
    /* Load into a fresh state, the old one set aside; keep the old state if
     * the file does not validate. The mapping stays as it grew. */
    mp_committed aside;
    if ((rc = committed_new(p, &aside)) != MP_OK)
        return rc;
    committed_swap(p, &aside);
    int stale = 0;
    map_random(&p->map, 1);
    map_prefetch_layout(p);
    rc = pager_load_with_retries(p, map_len, report, &stale);
    map_random(&p->map, 0);
    if (rc != MP_OK)
        committed_swap(p, &aside);
    committed_free(p, &aside);
    return rc;
}

int mp_pager_stats_locked(const mp_pager *p, mp_stats *out)
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
    out->chunk_pages = p->chunk_pages;
    out->layout_pages =
        MP_RESERVED_PAGES + MP_LAYOUT_PAGES * fmt_chunks_below(p->chunk_pages, p->total_pages);
    out->room = pager_room(p);
    return MP_OK;
}

int mp_pager_mapping_locked(const mp_pager *p, uint8_t **base, uint64_t *reserved_bytes)
{
    if (!p || !base || !reserved_bytes)
        return MP_EINVALID_ARGUMENT;
    *base = p->map.base;
    *reserved_bytes = p->map.reserved;
    return MP_OK;
}

/* The pager's descriptor, for a reader's Python layer to map the file again
 * read-only (its views come from there: see _readonly.py). */
int mp_pager_fd_locked(const mp_pager *p, int *out_fd)
{
    if (!p || !out_fd)
        return MP_EINVALID_ARGUMENT;
    if (p->fd < 0)
        return MP_EUNAVAILABLE;
    *out_fd = p->fd;
    return MP_OK;
}
