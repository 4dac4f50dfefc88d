/*
 * backup.c - online backup: a copy of one commit of a live file.
 *
 * Owns: mp_pager_backup, which writes a new file holding exactly one commit
 * (a writer's latest, through a registered snapshot of its own; a reader's
 * own state) while the writer goes on committing.
 *
 * How, and why it is safe:
 *   - The source is a reader registered in the reader table for the whole
 *     copy, so the writer never hands out a page its commit has allocated:
 *     the content of every allocated page stays that page's (it is live, as
 *     for any reader).
 *   - Pages 0-2 come from the reader's fingerprint, the bytes its state was
 *     loaded from; directory pages are written from the entries it loaded;
 *     protected pages from the copies a snapshot reader took at load (passed
 *     in, checked against the recorded CRC). The rest of the commit's
 *     structure (the committed free-map and index copies of the extended
 *     layout, protected pages without a copy) is read from the file and
 *     checked page by page (copy_checked): the writer may have rewritten one
 *     of them since (two commits later). A writer's backup then takes a new
 *     snapshot and tries again; a reader's gives up with MP_ESNAPSHOT_MOVED.
 *   - Only the pages the commit needs are written, at their offsets, into a
 *     file made the full size with ftruncate: free pages and the inactive
 *     copies are holes, so the copy costs the time and space of live pages.
 *   - The copy is written as a file without a name in dest's folder (Linux;
 *     elsewhere under a temporary name beside dest), fsync'd, then published
 *     without replacing anything (os_publish) and the directory fsync'd: a
 *     crash never leaves a partial file at dest, and on Linux no file at all.
 */
#include "mp_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BK_ATTEMPTS 64

typedef struct {
    mp_pager *s;             /* the source: a registered reader */
    int fd;                  /* the copy */
    uint64_t *progress;      /* the caller's two words, or NULL */
    uint64_t done;           /* bytes written */
    int use_cfr;             /* copy_file_range works between these files */
    uint64_t *over_pages;    /* the caller's protected copies: page ids, sorted, */
    uint8_t *over_data;      /* and their bytes, in core-owned memory */
    uint64_t over_n;
    uint8_t *page;           /* page_size bytes of scratch */
    mp_dir_ref *refs;        /* an index page's references, for its check */
} bk_copy;

static void note_progress(bk_copy *b, uint64_t bytes)
{
    b->done += bytes;
    if (b->progress)
        __atomic_store_n(&b->progress[0], b->done, __ATOMIC_RELAXED);
}

/* Pages [a, b) of the source into the copy, at the same offset. */
static int copy_run(bk_copy *b, uint64_t a, uint64_t e)
{
    uint64_t ps = b->s->page_size;
    uint64_t off = a * ps, len = (e - a) * ps;
#if defined(__linux__)
    while (b->use_cfr && len > 0) {
        loff_t in = (loff_t)off, out = (loff_t)off;
        ssize_t n = copy_file_range(b->s->fd, &in, b->fd, &out, (size_t)len, 0);
        if (n > 0) {
            off += (uint64_t)n;
            len -= (uint64_t)n;
            note_progress(b, (uint64_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || errno == EXDEV || errno == ENOSYS || errno == EINVAL ||
            errno == EOPNOTSUPP || errno == EBADF)
            b->use_cfr = 0; /* fall back to writing from the mapping */
        else
            return -errno;
    }
#endif
    if (len == 0)
        return MP_OK;
    /* From the mapping: the reader maps every page below its total. */
    int rc = os_write_all(NULL, b->fd, pager_page_ptr(b->s, off / ps), (size_t)len, off);
    if (rc == MP_OK)
        note_progress(b, len);
    return rc;
}

static int write_page(bk_copy *b, uint64_t id, const uint8_t *bytes)
{
    uint64_t ps = b->s->page_size;
    int rc = os_write_all(NULL, b->fd, bytes, (size_t)ps, id * ps);
    if (rc == MP_OK)
        note_progress(b, ps);
    return rc;
}

/* The caller's copy of page id when it holds the content the commit
 * records (its CRC), else NULL. */
static const uint8_t *override_of(const bk_copy *b, uint64_t id, uint32_t crc)
{
    uint64_t lo = 0, hi = b->over_n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (b->over_pages[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= b->over_n || b->over_pages[lo] != id)
        return NULL;
    const uint8_t *data = b->over_data + (size_t)lo * b->s->page_size;
    return mp_crc32(data, b->s->page_size) == crc ? data : NULL;
}

/* Reads page id of the source into b->page. */
static int read_page(bk_copy *b, uint64_t id)
{
    size_t got = 0;
    uint64_t ps = b->s->page_size;
    int rc = os_pread_all(NULL, b->s->fd, b->page, (size_t)ps, id * ps, &got);
    return rc == MP_OK && got != ps ? MP_ECORRUPT_METADATA : rc;
}

/* Copies a page the writer rewrites in place two commits later, checking
 * that it is still the commit's: a valid copy (CRC) of a generation not
 * above the commit's can only be the one the commit selected, since each
 * rewrite goes to the other copy with a newer generation. kind: 0 a chunk's
 * free-map page (arg: the chunk), 1 a directory-index page (arg: its
 * number), 2 a protected page (arg: its CRC), 3 the root pages (extended
 * layout). *ok = 0 when it is not. */
static int copy_checked(bk_copy *b, uint64_t id, int kind, uint64_t arg, int *ok)
{
    const mp_pager *s = b->s;
    int rc = read_page(b, id);
    if (rc != MP_OK)
        return rc;
    if (kind == 0) {
        mp_chunk_header h;
        fmt_chunk_check(b->page, s->page_size, arg, s->total_pages, s->generation, &h);
        *ok = h.valid;
    } else if (kind == 1) {
        uint64_t gen;
        uint32_t count;
        *ok = fmt_index_read(b->page, s->page_size, arg, s->generation, &gen, &count,
                             b->refs) == MP_OK;
    } else if (kind == 3) {
        uint64_t gen, roots[MP_ROOTS];
        uint32_t n;
        *ok = fmt_roots_page_read(b->page, s->page_size, s->generation, &gen, roots, NULL, &n) ==
              MP_OK;
    } else {
        *ok = mp_crc32(b->page, s->page_size) == (uint32_t)arg;
    }
    return *ok ? write_page(b, id, b->page) : MP_OK;
}

static int copy_directory(bk_copy *b, uint64_t *copied, int *ok);

/* The extended layout's root pages: the copy the commit uses. */
static int copy_roots(bk_copy *b, uint64_t *copied, int *ok)
{
    const mp_pager *s = b->s;
    *ok = 1;
    if (!pager_extended(s) || s->roots_page == 0)
        return MP_OK;
    uint64_t id = s->roots_page + s->roots_active;
    bitmap_set(copied, id);
    return copy_checked(b, id, 3, 0, ok);
}

/* The commit's structure: pages 0-2, each chunk's committed free-map copy,
 * the index pages in use, the directory's current copies, and each
 * protected page's current copy. Sets copied[] for them. */
static int copy_structure(bk_copy *b, uint64_t *copied, int *ok)
{
    mp_pager *s = b->s;
    uint64_t ps = s->page_size;
    const uint8_t *head = s->rd && s->rd->fp_valid ? s->rd->fingerprint : pager_page_ptr(s, 0);
    uint8_t *buf = malloc((size_t)(MP_RESERVED_PAGES * ps));
    if (!buf)
        return MP_ENO_MEMORY;
    memcpy(buf, head, (size_t)(MP_RESERVED_PAGES * ps));
    /* Page 0 names the commit copied, as a "compat" commit leaves it (a
     * "fast" writer's page 0 may still name the older copy, which the crate
     * would read): the selector, and in v0.2 the directory index. */
    fmt_superblock_write(buf, s->log2, (uint8_t)s->minor, s->ext_always, (uint8_t)s->active);
    if (!pager_extended(s)) {
        fmt_dir_index_write(buf, s->page_size, s->dir_count, s->refs);
        /* The older metadata copy: the same state one generation back, so a
         * fallback to it finds the pages this copy holds (and no copy counts
         * pages past the copy's end). */
        if (s->generation > 0) {
            /* With the commit's roots (and no record of data pages). */
            mp_meta_tail tail = {s->roots, NULL, 0};
            fmt_meta_write(buf + (size_t)(1u + (s->active ^ 1u)) * ps, s->page_size,
                           s->total_pages, s->generation - 1, s->free_count, s->bits, &tail);
        }
    }
    int rc = os_write_all(NULL, b->fd, buf, (size_t)(MP_RESERVED_PAGES * ps), 0);
    free(buf);
    if (rc != MP_OK)
        return rc;
    note_progress(b, MP_RESERVED_PAGES * ps);
    for (uint64_t id = 0; id < MP_RESERVED_PAGES; id++)
        bitmap_set(copied, id);
    uint64_t chunks = fmt_chunks_below(s->chunk_pages, s->total_pages);
    for (uint64_t c = 1; c <= chunks; c++) {
        uint64_t id = fmt_free_map_page(s->chunk_pages, c, (uint32_t)bitmap_get(s->chunk_active, c));
        bitmap_set(copied, id);
        if ((rc = copy_checked(b, id, 0, c, ok)) != MP_OK || !*ok)
            return rc;
    }
    uint64_t per = fmt_max_dir_blocks(s->page_size);
    /* A file extended from creation has index page 0 even with no block. */
    uint64_t index_pages = s->dir_count > 0 && per > 0 ? (s->dir_count - 1u) / per + 1 : 0;
    if (s->ext_always && index_pages == 0)
        index_pages = 1;
    if (pager_extended(s)) {
        for (uint64_t k = 0; k < index_pages; k++) {
            uint64_t id = pager_index_page(s, k, (uint32_t)bitmap_get(s->index_active, k));
            bitmap_set(copied, id);
            if ((rc = copy_checked(b, id, 1, k, ok)) != MP_OK || !*ok)
                return rc;
        }
    }
    if ((rc = copy_roots(b, copied, ok)) != MP_OK || !*ok)
        return rc;
    return copy_directory(b, copied, ok);
}

/* The directory's current copies, and each protected page's current copy. */
static int copy_directory(bk_copy *b, uint64_t *copied, int *ok)
{
    mp_pager *s = b->s;
    int rc;
    for (uint32_t d = 0; d < s->dir_count; d++) {
        const mp_dir_ref *r = &s->refs[d];
        uint64_t id = r->active ? r->page_b : r->page_a;
        if (id >= s->total_pages)
            return MP_ECORRUPT_DIRECTORY_INDEX;
        bitmap_set(copied, id);
        const mp_dir_entry *e = s->dirs[d].entries;
        if (!e)
            return MP_ECORRUPT_PROTECTED_DIRECTORY;
        /* Written from the entries the reader loaded, not read from the
         * file, where the writer may have reused this copy since. */
        fmt_dir_page_write(b->page, s->page_size, e);
        if ((rc = write_page(b, id, b->page)) != MP_OK)
            return rc;
        for (uint32_t i = 0; i < s->epp; i++) {
            if (!e[i].in_use)
                continue;
            uint64_t pid = e[i].active_slot ? e[i].page_b : e[i].page_a;
            if (pid >= s->total_pages)
                return MP_ECORRUPT_PROTECTED_DIRECTORY;
            bitmap_set(copied, pid);
            const uint8_t *mine = override_of(b, pid, e[i].crc);
            rc = mine ? write_page(b, pid, mine) : copy_checked(b, pid, 2, e[i].crc, ok);
            if (rc != MP_OK || !*ok)
                return rc;
        }
    }
    /* The other copies of system and layout pages stay holes: the data
     * pass skips system and layout pages. */
    return MP_OK;
}

/* Every allocated page not written yet: the regular data pages. */
static int copy_data(bk_copy *b, uint64_t *copied)
{
    mp_pager *s = b->s;
    uint64_t words = bitmap_words(s->total_pages);
    uint64_t run = 0, in_run = 0;
    for (uint64_t w = 0; w < words; w++) {
        uint64_t v = s->bits[w] & ~s->system[w] & ~copied[w];
        if (v == 0 && !in_run)
            continue;
        for (uint64_t i = 0; i < 64; i++) {
            uint64_t id = (w << 6) + i;
            int want = id < s->total_pages && ((v >> i) & 1u) && !pager_is_layout_page(s, id);
            if (want && !in_run) {
                run = id;
                in_run = 1;
            } else if (!want && in_run) {
                int rc = copy_run(b, run, id);
                if (rc != MP_OK)
                    return rc;
                in_run = 0;
            }
        }
    }
    return in_run ? copy_run(b, run, s->total_pages) : MP_OK;
}

/* One attempt: the whole copy at tmp (created, empty). 1 = it matched. */
static int copy_once(bk_copy *b, uint64_t *copied, int *matched)
{
    mp_pager *s = b->s;
    uint64_t ps = s->page_size;
    /* The map is sized for the largest file: only the words below the
     * commit's pages are used, and cleared again when the attempt fails. */
    size_t used = (size_t)bitmap_words(s->total_pages) * sizeof(uint64_t);
    b->done = 0;
    if (ftruncate(b->fd, (off_t)(s->total_pages * ps)) != 0)
        return -errno;
    if (b->progress) {
        uint64_t live = (s->total_pages - s->free_count) * ps;
        __atomic_store_n(&b->progress[1], live, __ATOMIC_RELAXED);
    }
    *matched = 1;
    int rc = copy_structure(b, copied, matched);
    if (rc != MP_OK || !*matched) {
        memset(copied, 0, used);
        return rc;
    }
    if ((rc = copy_data(b, copied)) != MP_OK)
        return rc;
    return fsync(b->fd) == 0 ? MP_OK : -errno;
}

/* The caller's overrides, read once into core-owned memory, sorted by page. */
static int take_overrides(bk_copy *b, const mp_pager *p, const uint64_t *pages,
                          const uint8_t *data, uint64_t n)
{
    if (n == 0)
        return MP_OK;
    if (!pages || !data || n > p->max_pages || n > SIZE_MAX / p->page_size)
        return MP_EINVALID_ARGUMENT;
    b->over_pages = pager_ids_copy(pages, n);
    b->over_data = malloc((size_t)n * p->page_size);
    if (!b->over_pages || !b->over_data)
        return MP_ENO_MEMORY;
    memcpy(b->over_data, data, (size_t)n * p->page_size);
    b->over_n = n;
    /* Insertion sort of (page, bytes) pairs: a reader's protected pages. */
    for (uint64_t i = 1; i < n; i++) {
        for (uint64_t j = i; j > 0 && b->over_pages[j - 1] > b->over_pages[j]; j--) {
            uint64_t t = b->over_pages[j];
            b->over_pages[j] = b->over_pages[j - 1];
            b->over_pages[j - 1] = t;
            uint8_t *x = b->over_data + (size_t)j * p->page_size;
            memcpy(b->page, x, p->page_size);
            memcpy(x, x - p->page_size, p->page_size);
            memcpy(x - p->page_size, b->page, p->page_size);
        }
    }
    return MP_OK;
}

int mp_pager_backup_locked(mp_pager *p, const char *table_path, const char *dest,
                    const uint64_t *over_pages, const uint8_t *over_data, uint64_t over_n,
                    uint64_t *progress, uint64_t *out_bytes)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!dest || !out_bytes || (!p->read_only && !table_path))
        return MP_EINVALID_ARGUMENT;
    struct stat st;
    if (lstat(dest, &st) == 0)
        return -EEXIST;
    bk_copy b;
    memset(&b, 0, sizeof b);
    b.progress = progress;
    b.page = malloc(p->page_size);
    b.refs = malloc(sizeof *b.refs * (fmt_max_dir_blocks(p->page_size) + 1u));
    uint64_t *copied = os_alloc_zeroed(p->map_bytes);
    if (!copied || !b.page || !b.refs ||
        (rc = take_overrides(&b, p, over_pages, over_data, over_n)) != MP_OK) {
        os_free_zeroed(copied, p->map_bytes);
        free(b.page);
        free(b.refs);
        free(b.over_pages);
        free(b.over_data);
        return copied && b.page && b.refs ? rc : MP_ENO_MEMORY;
    }
    int matched = 0;
    for (int attempt = 0; attempt < BK_ATTEMPTS && !matched; attempt++) {
        mp_pager *s = p;
        if (!p->read_only) {
            mp_open_report rep;
            if ((rc = mp_pager_snapshot(p, table_path, &s, &rep)) != MP_OK)
                break;
        }
        char *tmp = NULL;
        if ((rc = os_create_temp(dest, &tmp, &b.fd)) == MP_OK) {
            b.s = s;
            b.use_cfr = 1;
            rc = copy_once(&b, copied, &matched);
            /* Published before the descriptor closes: a file without a name
             * (os_create_temp) goes with its last descriptor. */
            if (rc == MP_OK && matched) {
                rc = os_publish(tmp, dest);
                if (rc == MP_OK)
                    rc = os_sync_dir_of(dest);
            }
            if (rc != MP_OK || !matched)
                os_discard_temp(tmp);
            (void)close(b.fd);
            free(tmp);
        }
        if (s != p)
            (void)mp_pager_release(s);

        /* A reader cannot load its commit again: its structure is gone. */
        if (rc != MP_OK || (p->read_only && !matched && attempt >= 3))
            break;
    }
    os_free_zeroed(copied, p->map_bytes);
    free(b.page);
    free(b.refs);
    free(b.over_pages);
    free(b.over_data);
    if (rc != MP_OK)
        return rc;
    if (!matched)
        return MP_ESNAPSHOT_MOVED;
    *out_bytes = b.done;
    return MP_OK;
}
