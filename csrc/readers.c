/*
 * readers.c - reader snapshots: the reader table beside the file, a reader's
 * slot in it, and what a reader compares to refresh cheaply.
 *
 * Owns: the file "<path>-readers" (its layout is FORMAT.md's "Reader table"),
 * a reader's slot in it, and a reader's fingerprint of the state it loaded
 * (what makes an idle refresh cheap). The writer's side, the pages it holds
 * back for readers, is pins.c's.
 *
 * The table: a 64-byte header, then `capacity` slots of 64 bytes. A slot is
 * held by one reader for its life, under an fcntl lock on the slot's bytes
 * (an open-file-description lock where the system has them, so it belongs to
 * the reader's own descriptor: other readers in the same process, threads
 * and fork children do not disturb it). The lock is the only proof of life:
 * a slot whose bytes say "used" but whose lock can be taken belonged to a
 * process that died, and whoever takes the lock clears it.
 *
 * Invariants, and the reasoning behind them:
 *   - A page freed while the writer's newest written generation was C was
 *     allocated in generations <= C only. It is handed out again only once
 *     its free is durable and every live slot holds a generation > C.
 *   - A slot's generation is never above the generation of the state its
 *     reader holds: a reader claims its slot with generation 0 (pins all)
 *     before it checks that the state it loaded is still the newest, and
 *     publishes a newer generation only after loading it. So a lower slot
 *     value only ever pins more.
 *   - Writer: it stores its commit (the metadata copy), then scans; reader:
 *     it stores its slot, then checks the commit. A full fence on each side
 *     (and the system calls around them) means one of them sees the other:
 *     either the scan sees the slot (and pins), or the reader sees the newer
 *     commit (and loads it). Hence the bound the writer caches, the least of
 *     the live slots' generations and its own at the time of the scan, stays
 *     a bound on every reader that registers later, and the table is read
 *     only when a pinned page would be released and that bound forbids it.
 *   - Nothing read from the table is trusted beyond its own slot: sizes are
 *     clamped, and a slot with a wild generation only pins more pages.
 * The table's reads and writes bypass the I/O hooks (NULL): the hooks count
 * and fail the data file's system calls, and the table is not part of it.
 */
#include "mp_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define RD_MAGIC "MPREADRS"
#define RD_VERSION 1u
#define RD_DEFAULT_MAX 126u

/* ---------------------------------------------------------------- locks */

#if defined(F_OFD_SETLK)
#define RD_SETLK F_OFD_SETLK
#define RD_SETLKW F_OFD_SETLKW
#define RD_OFD 1
#else
/* Classic fcntl locks belong to the process, not the descriptor: a second
 * reader in the same process could take a slot the first holds, and closing
 * any descriptor of the table drops all of the process's locks. So without
 * open-file-description locks a slot whose pid is this process is treated
 * as live whatever its lock says (see slot_dead). */
#define RD_SETLK F_SETLK
#define RD_SETLKW F_SETLKW
#define RD_OFD 0
#endif

static int range_lock(int fd, short type, uint64_t off, uint64_t len, int wait)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)off;
    fl.l_len = (off_t)len;
    for (;;) {
        if (fcntl(fd, wait ? RD_SETLKW : RD_SETLK, &fl) == 0)
            return MP_OK;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EACCES)
            return MP_ELOCKED;
        return -errno;
    }
}

static uint64_t slot_off(uint64_t i)
{
    return RD_HEADER + i * RD_SLOT;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* ---------------------------------------------------------------- table */

mp_readers *readers_get(mp_pager *p)
{
    if (!p->rd) {
        p->rd = calloc(1, sizeof *p->rd);
        if (p->rd) {
            p->rd->fd = -1;
            p->rd->slot = -1;
        }
    }
    return p->rd;
}

/* The header's capacity and limit, from its `got` bytes read and the file's
 * size: never trusted past what the file holds. */
static int header_parse(const uint8_t *h, size_t got, uint64_t size, uint32_t *capacity,
                        uint32_t *limit)
{
    if (got < RD_HEADER || memcmp(h, RD_MAGIC, 8) != 0 || mp_load_u32(h + 8) != RD_VERSION)
        return MP_EINVALID_ARGUMENT;
    uint32_t cap = mp_load_u32(h + 12), lim = mp_load_u32(h + 16);
    uint64_t fits = size < RD_HEADER ? 0 : (size - RD_HEADER) / RD_SLOT;
    if (cap > fits)
        cap = (uint32_t)fits;
    if (cap > RD_MAX_SLOTS)
        cap = RD_MAX_SLOTS;
    *capacity = cap;
    *limit = lim < cap ? lim : cap;
    return MP_OK;
}

/* Slots in use may be read up to `capacity`; readers take them below limit. */
static int table_header(int fd, uint32_t *capacity, uint32_t *limit)
{
    uint8_t h[RD_HEADER];
    size_t got = 0;
    int rc = os_pread_all(NULL, fd, h, sizeof h, 0, &got);
    if (rc != MP_OK)
        return rc;
    uint64_t size;
    if ((rc = os_file_size(fd, &size)) != MP_OK)
        return rc;
    return header_parse(h, got, size, capacity, limit);
}

static int table_write_header(int fd, uint32_t capacity, uint32_t limit)
{
    uint8_t h[RD_HEADER];
    memset(h, 0, sizeof h);
    memcpy(h, RD_MAGIC, 8);
    mp_store_u32(h + 8, RD_VERSION);
    mp_store_u32(h + 12, capacity);
    mp_store_u32(h + 16, limit);
    return os_write_all(NULL, fd, h, sizeof h, 0);
}

/* Opens (creating it with the data file's permission bits) the table, and
 * makes sure it has a header. `want` >= 0: a writer's max_readers, which
 * becomes the limit (and the capacity, if larger); -1: a reader's default. */
int readers_table_open(const mp_pager *p, const char *path, int64_t want, int *out_fd)
{
    struct stat st;
    if (p->fd < 0 || fstat(p->fd, &st) != 0)
        return p->fd < 0 ? MP_EUNAVAILABLE : -errno;
    mode_t mode = st.st_mode & 0666;
    int created = 1;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0 && errno == EEXIST) {
        created = 0;
        fd = open(path, O_RDWR | O_CLOEXEC);
    }
    if (fd < 0)
        return -errno;
    /* The umask must not narrow what the data file's readers may do. */
    if (created)
        (void)fchmod(fd, mode);
    int rc = range_lock(fd, F_WRLCK, 0, RD_HEADER, 1);
    if (rc != MP_OK) {
        close(fd);
        return rc;
    }
    uint32_t cap = 0, lim = 0;
    int have = table_header(fd, &cap, &lim) == MP_OK;
    uint32_t w = want < 0 ? RD_DEFAULT_MAX : (uint32_t)want;
    if (!have || (want >= 0 && (w > cap || w != lim))) {
        uint32_t ncap = have && cap > w ? cap : w;
        if (ftruncate(fd, (off_t)slot_off(ncap)) != 0 && (rc = -errno) != MP_OK)
            goto out;
        rc = table_write_header(fd, ncap, want < 0 && have ? lim : w);
    }
out:
    (void)range_lock(fd, F_UNLCK, 0, RD_HEADER, 0);
    if (rc != MP_OK) {
        close(fd);
        return rc;
    }
    *out_fd = fd;
    return MP_OK;
}

/* A slot that says "used" and whose lock we just took: its holder is gone. */
static int slot_clear(int fd, uint64_t i)
{
    uint8_t z[RD_SLOT];
    memset(z, 0, sizeof z);
    return os_write_all(NULL, fd, z, sizeof z, slot_off(i));
}

/* Slot i's holder is gone (and the slot is cleared), or it lives. */
static int slot_dead(int fd, uint64_t i, uint64_t pid)
{
    if (!RD_OFD && pid == (uint64_t)getpid())
        return 0;
    if (range_lock(fd, F_WRLCK, slot_off(i), RD_SLOT, 0) != MP_OK)
        return 0;
    (void)slot_clear(fd, i);
    (void)range_lock(fd, F_UNLCK, slot_off(i), RD_SLOT, 0);
    return 1;
}

/* The slots of a table of up to the default capacity are read with the
 * header, in one system call of exactly that table's length: a commit that
 * frees pages scans the table. A read that stops short has met the end of the
 * file, which bounds the header's capacity as the file's size does; a full
 * one holds every slot the header can name. A larger table: the header, the
 * file's size, then the slots. *slots points at the first slot, *got counts
 * the bytes of slots read, *heap is for the caller to free. */
#define RD_SCAN_SLOTS RD_DEFAULT_MAX

static int table_slots(int fd, uint8_t *stack, size_t stack_len, const uint8_t **slots,
                       size_t *got, uint8_t **heap)
{
    size_t n = 0;
    uint32_t capacity, limit;
    *heap = NULL;
    int rc = os_pread_all(NULL, fd, stack, stack_len, 0, &n);
    if (rc == MP_OK)
        rc = header_parse(stack, n, n < stack_len ? n : UINT64_MAX, &capacity, &limit);
    if (rc != MP_OK)
        return rc;
    if (RD_HEADER + (size_t)capacity * RD_SLOT <= stack_len) {
        *slots = stack + RD_HEADER;
        *got = (size_t)capacity * RD_SLOT;
        return MP_OK;
    }
    if ((rc = table_header(fd, &capacity, &limit)) != MP_OK)
        return rc;
    size_t len = (size_t)capacity * RD_SLOT;
    if (!(*heap = malloc(len)))
        return MP_ENO_MEMORY;
    *slots = *heap;
    return os_pread_all(NULL, fd, *heap, len, RD_HEADER, got);
}

/* Reads the live slots (clearing dead ones) into out[0..*n), at most cap. */
int readers_table_scan(int fd, int64_t own, int check_live, rd_entry *out, uint64_t cap,
                       uint64_t *n, uint64_t *oldest)
{
    uint8_t stack[RD_HEADER + RD_SLOT * RD_SCAN_SLOTS];
    const uint8_t *buf = NULL;
    uint8_t *heap = NULL;
    size_t got = 0;
    int rc = table_slots(fd, stack, sizeof stack, &buf, &got, &heap);
    uint64_t k = 0, low = UINT64_MAX;
    for (uint64_t i = 0; rc == MP_OK && i < got / RD_SLOT; i++) {
        const uint8_t *s = buf + i * RD_SLOT;
        uint64_t pid = mp_load_u64(s);
        /* Our own slot: its lock is ours, so taking it would succeed. */
        if (pid == 0 || (check_live && (int64_t)i != own && slot_dead(fd, i, pid)))
            continue;
        uint64_t gen = mp_load_u64(s + 8);
        if (gen < low)
            low = gen;
        if (out && k < cap) {
            out[k].pid = pid;
            out[k].gen = gen;
            out[k].pages = mp_load_u64(s + 16);
            out[k].start = mp_load_u64(s + 24);
        }
        k++;
    }
    free(heap);
    if (rc == MP_OK) {
        if (n)
            *n = k < cap ? k : cap;
        if (oldest)
            *oldest = low;
    }
    return rc;
}

/* ------------------------------------------------------ reader: its slot */

static int slot_write(int fd, int64_t slot, uint64_t gen, uint64_t pages, uint64_t start)
{
    uint8_t s[RD_SLOT];
    memset(s, 0, sizeof s);
    mp_store_u64(s, (uint64_t)getpid());
    mp_store_u64(s + 8, gen);
    mp_store_u64(s + 16, pages);
    mp_store_u64(s + 24, start);
    return os_write_all(NULL, fd, s, sizeof s, slot_off((uint64_t)slot));
}

static int publish(mp_pager *p)
{
    mp_readers *rd = p->rd;
    if (!rd || rd->slot < 0)
        return MP_OK;
    /* The whole slot again: another process that wrote over it (the table is
     * writable by all the file's readers) is corrected at the next refresh.
     * Its page count is the most pages the reader has mapped, not only its
     * state's: its views of an older, longer state must not run past a
     * trimmed file (space.c). */
    uint64_t mapped = p->map.mapped / p->page_size;
    return slot_write(rd->fd, rd->slot, p->generation,
                      mapped > p->total_pages ? mapped : p->total_pages, rd->started);
}

void readers_note_loaded(mp_pager *p, const uint8_t *snap)
{
    if (!p->read_only)
        return;
    mp_readers *rd = readers_get(p);
    if (!rd)
        return;
    size_t bytes = (size_t)p->page_size * MP_RESERVED_PAGES;
    if (!rd->fingerprint && !(rd->fingerprint = malloc(bytes))) {
        rd->fp_valid = 0;
        return;
    }
    memcpy(rd->fingerprint, snap, bytes);
    rd->fp_valid = 1;
}

/* The writer committed nothing since the reader's state was loaded. */
static int unchanged(const mp_pager *p)
{
    return p->rd && p->rd->fp_valid && !pager_reader_saw_a_commit(p, p->rd->fingerprint, 1);
}

/* A digest of what a reader's state names: a different one is a new commit
 * (in the v0.2 layout a protected write commits through page 0 alone, with
 * no new metadata generation). */
static uint32_t state_digest(const mp_pager *p)
{
    uint8_t g[16];
    mp_store_u64(g, p->generation);
    mp_store_u64(g + 8, p->total_pages);
    uint32_t c = mp_crc32(g, sizeof g);
    for (uint32_t i = 0; i < p->dir_count; i++) {
        uint8_t r[21];
        mp_store_u64(r, p->refs[i].page_a);
        mp_store_u64(r + 8, p->refs[i].page_b);
        r[16] = p->refs[i].active;
        mp_store_u32(r + 17, p->dirs[i].read_crc);
        c = mp_crc32_update(c, r, sizeof r);
    }
    return c;
}

int mp_reader_refresh_locked(mp_pager *p, mp_open_report *report, int *out_changed)
{
    if (!p || !report || !out_changed)
        return MP_EINVALID_ARGUMENT;
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!p->read_only)
        return MP_EINVALID_ARGUMENT;
    if (unchanged(p)) {
        memset(report, 0, sizeof *report);
        *out_changed = 0;
        return MP_OK;
    }
    uint32_t before = state_digest(p);
    if ((rc = mp_pager_refresh(p, report)) != MP_OK) {
        /* The reader keeps its state, but a look that loaded and then gave
         * up may have replaced the fingerprint: the next refresh loads. */
        if (p->rd)
            p->rd->fp_valid = 0;
        return rc;
    }
    /* Published only now: until here the slot's older generation held the
     * pages of both states. */
    (void)publish(p);
    *out_changed = state_digest(p) != before;
    return MP_OK;
}

int mp_reader_register_locked(mp_pager *p, const char *table_path, mp_open_report *report)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!table_path || !report || !p->read_only)
        return MP_EINVALID_ARGUMENT;
    mp_readers *rd = readers_get(p);
    if (!rd)
        return MP_ENO_MEMORY;
    if (rd->slot >= 0)
        return MP_OK;
    int fd;
    if ((rc = readers_table_open(p, table_path, -1, &fd)) != MP_OK)
        return rc;
    uint32_t capacity, limit;
    if ((rc = table_header(fd, &capacity, &limit)) != MP_OK) {
        close(fd);
        return rc;
    }
    int64_t slot = -1;
    for (uint32_t i = 0; i < limit && slot < 0; i++) {
        if (range_lock(fd, F_WRLCK, slot_off(i), RD_SLOT, 0) != MP_OK)
            continue;
        uint8_t s[8];
        size_t got = 0;
        if (os_pread_all(NULL, fd, s, sizeof s, slot_off(i), &got) == MP_OK && got == sizeof s &&
            mp_load_u64(s) != 0 && !RD_OFD && mp_load_u64(s) == (uint64_t)getpid()) {
            /* Without descriptor locks our own process's slots look free. */
            continue;
        }
        /* Generation 0 pins everything until the state is known current. */
        rd->started = now_ns();
        if (slot_write(fd, i, 0, p->total_pages, rd->started) != MP_OK) {
            (void)range_lock(fd, F_UNLCK, slot_off(i), RD_SLOT, 0);
            continue;
        }
        slot = i;
    }
    if (slot < 0) {
        close(fd);
        return MP_EREADERS_FULL;
    }
    rd->fd = fd;
    rd->slot = slot;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!unchanged(p)) {
        /* The writer committed after our load and may have reused pages of
         * that state before it could see the slot: load again (and report
         * what this load found, not the first's). */
        mp_open_report again;
        if ((rc = mp_pager_refresh(p, &again)) != MP_OK) {
            readers_forget(p, 1);
            return rc;
        }
        *report = again;
    }
    (void)publish(p);
    return MP_OK;
}

int mp_reader_slot_locked(const mp_pager *p, int64_t *out_slot)
{
    if (!p || !out_slot)
        return MP_EINVALID_ARGUMENT;
    *out_slot = p->rd ? p->rd->slot : -1;
    return MP_OK;
}

int mp_readers_list_locked(mp_pager *p, uint64_t *out_pids, uint64_t *out_gens, uint64_t *out_pages,
                    uint64_t *out_start_ns, uint64_t capacity, uint64_t *out_n)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!out_pids || !out_gens || !out_pages || !out_start_ns || !out_n)
        return MP_EINVALID_ARGUMENT;
    if (!p->rd || p->rd->fd < 0) {
        *out_n = 0;
        return MP_OK;
    }
    rd_entry *e = capacity ? calloc((size_t)capacity, sizeof *e) : NULL;
    if (capacity && !e)
        return MP_ENO_MEMORY;
    uint64_t n = 0;
    rc = readers_table_scan(p->rd->fd, p->rd->slot, 1, e, capacity, &n, NULL);
    if (rc == MP_OK) {
        for (uint64_t i = 0; i < n; i++) {
            out_pids[i] = e[i].pid;
            out_gens[i] = e[i].gen;
            out_pages[i] = e[i].pages;
            out_start_ns[i] = e[i].start;
        }
        *out_n = n;
    }
    free(e);
    return rc;
}

void readers_forget(mp_pager *p, int clear)
{
    mp_readers *rd = p->rd;
    if (!rd)
        return;
    if (rd->fd >= 0) {
        /* A fork child closes its copy of the descriptor without clearing:
         * the slot and its lock are the parent's (the lock lives on while
         * the parent's descriptor does). */
        if (clear && rd->slot >= 0)
            (void)slot_clear(rd->fd, (uint64_t)rd->slot);
        close(rd->fd);
        rd->fd = -1;
    }
    rd->slot = -1;
}

void readers_release(mp_pager *p)
{
    if (!p->rd)
        return;
    pins_release(p);
    readers_forget(p, !p->no_io);
    free(p->rd->fingerprint);
    free(p->rd);
    p->rd = NULL;
}

int mp_pager_snapshot_locked(mp_pager *p, const char *table_path, mp_pager **out,
                      mp_open_report *report)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if (!table_path || !out || !report)
        return MP_EINVALID_ARGUMENT;
    /* "none" mode keeps its commits in memory: write them, so the snapshot
     * is of the commit the writer's caller last made. */
    if (!p->read_only && p->txn_depth == 0 && p->meta_unwritten &&
        (rc = pager_settle_deferred(p)) != MP_OK)
        return rc;
    int fd = fcntl(p->fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    mp_options opts;
    memset(&opts, 0, sizeof opts);
    opts.read_only = 1;
    opts.io_hooks = p->map.io;
    mp_pager *r;
    if ((rc = pager_open_fd(fd, &opts, &r, report)) != MP_OK)
        return rc; /* pager_open_fd closed fd */
    if ((rc = mp_reader_register(r, table_path, report)) != MP_OK) {
        (void)mp_pager_release(r);
        return rc;
    }
    *out = r;
    return MP_OK;
}

int mp_readers_inspect(const char *table_path, uint64_t *out_pids, uint64_t *out_gens,
                       uint64_t *out_pages, uint64_t *out_start_ns, uint64_t capacity,
                       uint64_t *out_n, uint64_t *out_pinned, uint64_t *out_writer_pid)
{
    if (!table_path || !out_pids || !out_gens || !out_pages || !out_start_ns || !out_n ||
        !out_pinned || !out_writer_pid)
        return MP_EINVALID_ARGUMENT;
    int fd = open(table_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    uint32_t cap, limit;
    uint8_t h[RD_HEADER];
    size_t got = 0;
    int rc = table_header(fd, &cap, &limit);
    if (rc == MP_OK)
        rc = os_pread_all(NULL, fd, h, sizeof h, 0, &got);
    uint64_t k = 0;
    for (uint32_t i = 0; rc == MP_OK && i < cap && k < capacity; i++) {
        uint8_t s[RD_SLOT];
        if ((rc = os_pread_all(NULL, fd, s, sizeof s, slot_off(i), &got)) != MP_OK || got < RD_SLOT)
            break;
        if (mp_load_u64(s) == 0)
            continue;
        /* Only look: a slot no lock holds is dead, and is left for a
         * process that may write the table to clear. */
        struct flock fl;
        memset(&fl, 0, sizeof fl);
        fl.l_type = F_RDLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = (off_t)slot_off(i);
        fl.l_len = RD_SLOT;
#if RD_OFD
        int cmd = F_OFD_GETLK;
#else
        int cmd = F_GETLK;
#endif
        if (fcntl(fd, cmd, &fl) == 0 && fl.l_type == F_UNLCK)
            continue;
        out_pids[k] = mp_load_u64(s);
        out_gens[k] = mp_load_u64(s + 8);
        out_pages[k] = mp_load_u64(s + 16);
        out_start_ns[k] = mp_load_u64(s + 24);
        k++;
    }
    if (rc == MP_OK) {
        *out_n = k;
        *out_pinned = mp_load_u64(h + RD_HEAD_PINNED);
        *out_writer_pid = mp_load_u64(h + RD_HEAD_WRITER);
    }
    close(fd);
    return rc;
}
