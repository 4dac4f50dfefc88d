/*
 * os.c - every system call the core makes on the file or on its mapping.
 *
 * Owns: opening and locking the file, reserving address space and mapping
 * the file into it, growing the file, and the durability barriers. Creating
 * a file whole and publishing it under its name is os_publish.c's.
 * Keeping them in one file keeps the platform differences (Linux, macOS) side
 * by side, one comment per difference, and gives fault injection a single
 * place to hook.
 *
 * Invariants: [base, base + mapped) is always a MAP_SHARED mapping of the
 * file, writable for a writer and PROT_READ for a reader (so no store through
 * a reader's mapping can reach the file, or land in a private copy that stops
 * following it); the rest of the reserved range is PROT_NONE, so a stray
 * access faults instead of touching another object. Growth replaces part of
 * the PROT_NONE range with MAP_FIXED, which swaps the pages atomically. When
 * the file outgrows its range (address space is finite: a range is reserved
 * for a multiple of the file, not for the largest file), it is mapped whole
 * into a new, larger range, and the old range stays mapped until the pager is
 * released: every address handed out stays valid, and both ranges show the
 * same pages of the page cache. In a fork child every range is mapped again
 * read-only from a new open file description (os_map_share_read_only).
 */
#include "mp_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Every hooked call asks here first: 0 to go ahead, or the errno to fail with. */
static int io_gate(mp_io_hooks *h, int kind)
{
    if (!h)
        return 0;
    uint64_t n = ++h->calls[kind];
    uint64_t at = h->fail_at[kind];
    if (at && (n == at || (h->fail_persistent[kind] && n > at)))
        return h->fail_errno[kind] ? h->fail_errno[kind] : EIO;
    return 0;
}

static void io_barrier(mp_io_hooks *h, int kind, uint64_t offset, uint64_t len)
{
    if (h && h->on_barrier)
        (void)h->on_barrier(h->ctx, kind, offset, len);
}

uint64_t os_page_size(void)
{
    long v = sysconf(_SC_PAGESIZE);
    return v > 0 ? (uint64_t)v : 4096u;
}

int os_open_file(mp_io_hooks *io, const char *path, int create, int read_only, int *out_fd)
{
    int injected = io_gate(io, MP_IO_OPEN);
    if (injected)
        return -injected;
    int flags = O_CLOEXEC | O_NONBLOCK;
    if (create)
        flags |= O_RDWR | O_CREAT | O_EXCL;
    else
        flags |= read_only ? O_RDONLY : O_RDWR;
    int fd;
    do {
        fd = open(path, flags, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -errno;
    /* O_NONBLOCK only kept open() from hanging on a FIFO; clear it. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return -EISDIR;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return MP_ECORRUPT_SUPERBLOCK;
    }
    *out_fd = fd;
    return MP_OK;
}

int os_close_file(int fd)
{
    return close(fd) == 0 ? MP_OK : -errno;
}

int os_unlink(const char *path)
{
    return unlink(path) == 0 ? MP_OK : -errno;
}

int os_file_size(int fd, uint64_t *out)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    *out = st.st_size < 0 ? 0 : (uint64_t)st.st_size;
    return MP_OK;
}

/* flock locks belong to the open file description, so a second open of the
 * same file conflicts even inside one process, and the lock goes away with the
 * process however it dies. */
int os_lock(mp_io_hooks *io, int fd, double timeout)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        /* An injected EWOULDBLOCK acts as a held lock (waits, then
         * MP_ELOCKED); any other injected errno fails at once. */
        int injected = io_gate(io, MP_IO_FLOCK);
        if (injected && injected != EWOULDBLOCK)
            return -injected;
        if (injected)
            errno = EWOULDBLOCK;
        else if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return MP_OK;
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK)
            return -errno;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double waited = (double)(now.tv_sec - start.tv_sec) +
                        (double)(now.tv_nsec - start.tv_nsec) / 1e9;
        if (!(timeout > waited))
            return MP_ELOCKED;
        struct timespec nap = {0, 5 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
}

/* Address space only: PROT_NONE and MAP_NORESERVE cost no memory and no
 * commit charge. Halves the request if the address space is short. */
static int reserve_range(uint64_t want, uint64_t need, uint8_t **base, uint64_t *got)
{
    uint64_t ps = os_page_size();
    if (need > want)
        want = need;
    want = (want + ps - 1) & ~(ps - 1);
    for (;;) {
        void *b = mmap(NULL, (size_t)want, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (b != MAP_FAILED) {
            *base = b;
            *got = want;
            return MP_OK;
        }
        if (want / 2 < need || want <= ps)
            return -ENOMEM;
        want = (want / 2 + ps - 1) & ~(ps - 1);
    }
}

int os_map_reserve(uint64_t want, uint64_t need, uint64_t limit, int writable, mp_map *m)
{
    int injected = io_gate(m->io, MP_IO_MMAP);
    if (injected)
        return -injected;
    if (want > limit)
        want = limit;
    int rc = reserve_range(want, need, &m->base, &m->reserved);
    if (rc != MP_OK)
        return rc;
    m->mapped = 0;
    m->limit = limit;
    m->writable = writable;
    return MP_OK;
}

static int map_file_at(const mp_map *m, uint8_t *at, uint64_t start, uint64_t end)
{
    /* A reader maps without PROT_WRITE: the Python layer hands out its pages
     * only through read-only buffers, so nothing can store through it. */
    int prot = m->writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void *got = mmap(at + start, (size_t)(end - start), prot, MAP_SHARED | MAP_FIXED, m->fd,
                     (off_t)start);
    return got == MAP_FAILED ? -errno : MP_OK;
}

/* The file outgrew its range: map it whole into a new range MP_RESERVE_FACTOR
 * times its size (or what the address space allows), and retire the old one. */
static int relocate(mp_map *m, uint64_t new_len)
{
    uint64_t ps = os_page_size();
    uint64_t want =
        new_len > m->limit / MP_RESERVE_FACTOR ? m->limit : new_len * MP_RESERVE_FACTOR;
    uint8_t *base;
    uint64_t got;
    int rc = reserve_range(want, new_len, &base, &got);
    if (rc != MP_OK)
        return rc;
    mp_region *list = realloc(m->retired, sizeof *list * (m->retired_count + 1u));
    if (!list || (rc = map_file_at(m, base, 0, new_len)) != MP_OK) {
        if (list)
            m->retired = list;
        munmap(base, (size_t)got);
        return list ? rc : MP_ENO_MEMORY;
    }
    m->retired = list;
    /* The old range keeps what is mapped (views may point there); its
     * reserved tail goes back to the address space. */
    uint64_t keep = (m->mapped + ps - 1) & ~(ps - 1);
    if (keep < m->reserved)
        munmap(m->base + keep, (size_t)(m->reserved - keep));
    if (keep > 0)
        m->retired[m->retired_count++] = (mp_region){m->base, keep};
    else
        munmap(m->base, (size_t)m->reserved);
    m->base = base;
    m->reserved = got;
    m->mapped = new_len;
    return MP_OK;
}

int os_map_extend(mp_map *m, uint64_t new_len)
{
    if (new_len <= m->mapped)
        return MP_OK;
    if (new_len > m->limit)
        return MP_EFILE_FULL;
    int injected = io_gate(m->io, MP_IO_MMAP);
    if (injected)
        return -injected;
    if (new_len > m->reserved)
        return relocate(m, new_len);
    uint64_t ps = os_page_size();
    int rc = map_file_at(m, m->base, m->mapped & ~(ps - 1), new_len);
    if (rc != MP_OK)
        return rc;
    m->mapped = new_len;
    return MP_OK;
}

/* Replaces a range with anonymous zero memory at the same addresses: the
 * fallback when the file cannot be mapped again, so that no address a view
 * may hold is ever left unmapped. */
static int detach_range(uint8_t *base, uint64_t len)
{
    void *got = mmap(base, (size_t)len, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    return got == MAP_FAILED ? -errno : MP_OK;
}

/* A new open file description of the file behind fd, read-only. It is opened
 * through the descriptor (not the path, which may name another file by now,
 * or none) and checked to be the same file. */
static int reopen_read_only(int fd, int *out_fd)
{
    struct stat was, now;
    if (fd < 0 || fstat(fd, &was) != 0)
        return -EBADF;
    int nfd = -1;
#if defined(__APPLE__)
    char path[PATH_MAX];
    if (fcntl(fd, F_GETPATH, path) != -1)
        nfd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
#else
    char path[64];
    (void)snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    nfd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
#endif
    if (nfd < 0)
        return errno ? -errno : -ENOENT;
    if (fstat(nfd, &now) != 0 || now.st_dev != was.st_dev || now.st_ino != was.st_ino) {
        close(nfd);
        return -ESTALE;
    }
    *out_fd = nfd;
    return MP_OK;
}

/* Maps [base, base + len) to the file from offset 0 again, read-only, from
 * fd; on failure the range becomes zero memory instead. */
static int share_range(uint8_t *base, uint64_t len, int fd)
{
    void *got = MAP_FAILED;
    if (fd >= 0)
        got = mmap(base, (size_t)len, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0);
    if (got != MAP_FAILED)
        return MP_OK;
    int rc = fd >= 0 ? -errno : -EBADF;
    (void)detach_range(base, len);
    return rc;
}

/* A fork child inherits the writer's descriptor and mapping, and both hold a
 * reference to the open file description that carries the writer lock (an
 * flock). Here every range the file is mapped at is mapped again, read-only
 * and shared, from a new open file description that holds no lock, at the
 * same addresses: views the child inherited keep showing the file, including
 * what the parent writes later, and once the caller closes the inherited
 * descriptor the child holds nothing of the locked description. Should the
 * file not open again (no /proc, no permission), the ranges become zero
 * memory; either way no address is left unmapped. */
int os_map_share_read_only(mp_map *m)
{
    int fd = -1;
    int rc = reopen_read_only(m->fd, &fd);
    for (uint32_t i = 0; i < m->retired_count; i++) {
        int r = share_range(m->retired[i].base, m->retired[i].len, fd);
        if (r != MP_OK && rc == MP_OK)
            rc = r;
    }
    if (m->base && m->mapped > 0) {
        uint64_t ps = os_page_size();
        int r = share_range(m->base, (m->mapped + ps - 1) & ~(ps - 1), fd);
        if (r != MP_OK && rc == MP_OK)
            rc = r;
    }
    /* The mappings hold their own reference to the new description. */
    if (fd >= 0)
        close(fd);
    m->writable = 0;
    return rc;
}

void os_map_release(mp_map *m)
{
    /* An injected munmap failure is counted but cannot be honoured: leaving
     * the range mapped would leak it, and nothing can be reported from here. */
    (void)io_gate(m->io, MP_IO_MUNMAP);
    if (m->base)
        munmap(m->base, (size_t)m->reserved);
    for (uint32_t i = 0; i < m->retired_count; i++)
        munmap(m->retired[i].base, (size_t)m->retired[i].len);
    free(m->retired);
    m->retired = NULL;
    m->retired_count = 0;
    m->base = NULL;
    m->reserved = m->mapped = 0;
}

/* Durability of the mapped range [offset, offset + len). msync needs an
 * address aligned to the OS page, so the range is rounded out to OS pages
 * (with 1 KiB pager pages a flush also writes back its neighbours, which is
 * harmless: they hold either committed state or user data). */
int os_flush_range(const mp_map *m, uint64_t offset, uint64_t len)
{
    uint64_t ps = os_page_size();
    uint64_t start = offset & ~(ps - 1);
    uint64_t end = (offset + len + ps - 1) & ~(ps - 1);
    if (end > m->mapped)
        end = (m->mapped + ps - 1) & ~(ps - 1);
    if (end <= start)
        return MP_OK;
    int injected = io_gate(m->io, MP_IO_MSYNC);
    if (injected)
        return -injected;
    if (m->io && m->io->skip_msync_at && m->io->calls[MP_IO_MSYNC] == m->io->skip_msync_at)
        return MP_OK;
    if (msync(m->base + start, (size_t)(end - start), MS_SYNC) != 0)
        return -errno;
    io_barrier(m->io, MP_IO_MSYNC, start, end - start);
#if defined(__APPLE__)
    /* macOS: msync hands the pages to the drive but the drive may keep them
     * in its cache; only F_FULLFSYNC asks it to write them to the medium. */
    return os_sync_file(m);
#else
    return MP_OK;
#endif
}

static int sync_fd(int fd)
{
#if defined(__APPLE__)
    if (fcntl(fd, F_FULLFSYNC) == 0)
        return MP_OK;
    /* Some file systems (network, FUSE) refuse F_FULLFSYNC: fsync is the best left. */
    return fsync(fd) == 0 ? MP_OK : -errno;
#else
    /* fdatasync also writes the metadata needed to read the data back, which
     * includes the file's size: that is all growth needs to be durable. */
    return fdatasync(fd) == 0 ? MP_OK : -errno;
#endif
}

int os_sync_file(const mp_map *m)
{
    int injected = io_gate(m->io, MP_IO_FSYNC);
    if (injected)
        return -injected;
    int rc = sync_fd(m->fd);
    if (rc == MP_OK)
        io_barrier(m->io, MP_IO_FSYNC, 0, UINT64_MAX);
    return rc;
}

/* Starts writing [offset, offset + len) of the file to the device without
 * waiting (Linux: sync_file_range(SYNC_FILE_RANGE_WRITE)); elsewhere nothing.
 * A hint, not a barrier: the flush that follows still makes the pages durable
 * and reports any error, so a failure here is ignored. Started as soon as a
 * commit's pages are written, their I/O overlaps the rest of the commit's work
 * (its record sums, its metadata, the caller's code) instead of starting at the
 * flush: a hundred-page transaction's flush waits about 40% less here. */
void os_start_writeback(const mp_map *m, uint64_t offset, uint64_t len)
{
    if (io_gate(m->io, MP_IO_WRITEBACK))
        return;
#if defined(__linux__)
    (void)sync_file_range(m->fd, (off_t)offset, (off_t)len, SYNC_FILE_RANGE_WRITE);
#else
    (void)offset;
    (void)len;
#endif
}

/* Give the file real blocks for [old_len, new_len). A sparse hole in a shared
 * mapping is only backed when first written, and if the disk is full then the
 * write kills the process with SIGBUS; preallocating turns that into ENOSPC
 * here, where it can be reported. On failure the size goes back to old_len
 * (a failed posix_fallocate may leave some blocks allocated). */
static int truncate_to(const mp_map *m, uint64_t len)
{
    int injected = io_gate(m->io, MP_IO_FTRUNCATE);
    if (injected)
        return injected;
    int rc;
    do {
        rc = ftruncate(m->fd, (off_t)len);
    } while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : errno;
}

int os_grow_file(const mp_map *m, uint64_t old_len, uint64_t new_len, int preallocate)
{
    int fd = m->fd;
    int err;
    if (!preallocate) {
        /* Sparse on request: blocks come with the first write to a page, and
         * that write is where a full disk shows up, as SIGBUS. */
        err = truncate_to(m, new_len);
        if (err == 0)
            return MP_OK;
        goto failed;
    }
    err = io_gate(m->io, MP_IO_FALLOCATE);
    if (err != 0)
        goto failed;
#if defined(__APPLE__)
    /* macOS has no posix_fallocate: F_PREALLOCATE reserves the blocks (first
     * contiguously, then anywhere), and ftruncate moves the end of file. */
    fstore_t fs = {F_ALLOCATECONTIG | F_ALLOCATEALL, F_PEOFPOSMODE, 0,
                   (off_t)(new_len - old_len), 0};
    if (fcntl(fd, F_PREALLOCATE, &fs) == -1) {
        fs.fst_flags = F_ALLOCATEALL;
        if (fcntl(fd, F_PREALLOCATE, &fs) == -1 && errno != ENOTSUP)
            err = errno;
    }
    if (err == 0)
        err = truncate_to(m, new_len);
#else
    err = posix_fallocate(fd, (off_t)old_len, (off_t)(new_len - old_len));
    if (err == EOPNOTSUPP || err == EINVAL || err == ENOSYS) {
        /* The file system cannot preallocate: grow sparsely. */
        err = truncate_to(m, new_len);
    }
#endif
    if (err == 0)
        return MP_OK;
failed:
    (void)truncate_to(m, old_len);
    return -err;
}

void *os_alloc_zeroed(size_t len)
{
    if (len == 0)
        len = 1;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void os_free_zeroed(void *mem, size_t len)
{
    if (mem)
        munmap(mem, len ? len : 1);
}

int os_shrink_file(const mp_map *m, uint64_t len)
{
    int err = truncate_to(m, len);
    return err ? -err : MP_OK;
}

int os_pread_all(mp_io_hooks *io, int fd, uint8_t *buf, size_t len, uint64_t offset,
                 size_t *got)
{
    size_t done = 0;
    while (done < len) {
        int injected = io_gate(io, MP_IO_PREAD);
        if (injected)
            return -injected;
        ssize_t r = pread(fd, buf + done, len - done, (off_t)(offset + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    *got = done;
    return MP_OK;
}

int os_write_all(mp_io_hooks *io, int fd, const uint8_t *buf, size_t len, uint64_t offset)
{
    size_t done = 0;
    while (done < len) {
        int injected = io_gate(io, MP_IO_PWRITE);
        if (injected)
            return -injected;
        ssize_t r = pwrite(fd, buf + done, len - done, (off_t)(offset + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)r;
    }
    return MP_OK;
}

/* ---------------------------------------------- giving space back (space.c) */

/* Deallocates the disk blocks of [offset, offset + len), keeping the size: the
 * range reads as zeros afterwards. -EOPNOTSUPP where the file system (or the
 * platform) cannot punch holes (ENOSYS and EINVAL are reported as that). */
int os_punch_range(const mp_map *m, uint64_t offset, uint64_t len)
{
    /* Routed through the fallocate hook (tests inject EOPNOTSUPP there). */
    int err = io_gate(m->io, MP_IO_FALLOCATE);
    if (err != 0)
        return -err;
#if defined(__linux__) && defined(FALLOC_FL_PUNCH_HOLE)
    int rc;
    do {
        rc = fallocate(m->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
                       (off_t)len);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0)
        return MP_OK;
    return (errno == ENOSYS || errno == EINVAL) ? -EOPNOTSUPP : -errno;
#else
    (void)m;
    (void)offset;
    (void)len;
    return -EOPNOTSUPP;
#endif
}

/* Gives [offset, offset + len) of the file real blocks again (a punched page
 * about to be handed out), routed through the fallocate hook: a full disk is
 * an error here, never SIGBUS at a later write through a view. */
int os_fill_range(const mp_map *m, uint64_t offset, uint64_t len)
{
    int err = io_gate(m->io, MP_IO_FALLOCATE);
    if (err != 0)
        return -err;
#if defined(__APPLE__)
    (void)offset;
    (void)len;
    return MP_OK; /* no holes are punched on macOS (os_punch_range) */
#else
    err = posix_fallocate(m->fd, (off_t)offset, (off_t)len);
    if (err == EOPNOTSUPP || err == EINVAL || err == ENOSYS)
        return MP_OK; /* cannot preallocate: as when the file grows */
    return err ? -err : MP_OK;
#endif
}

/* Before the file is cut to len bytes: every address of the mapping (and of
 * the ranges it outgrew) past len is replaced with anonymous zero memory, so
 * a view of a cut page reads zeros instead of faulting. A later growth maps
 * the file over that memory again (os_map_extend starts at `mapped`). */
int os_map_detach_tail(mp_map *m, uint64_t len)
{
    uint64_t ps = os_page_size();
    uint64_t from = (len + ps - 1) & ~(ps - 1);
    for (uint32_t i = 0; i < m->retired_count; i++) {
        if (m->retired[i].len > from) {
            int rc = detach_range(m->retired[i].base + from, m->retired[i].len - from);
            if (rc != MP_OK)
                return rc;
        }
    }
    uint64_t end = (m->mapped + ps - 1) & ~(ps - 1);
    if (m->base && end > from) {
        int rc = detach_range(m->base + from, end - from);
        if (rc != MP_OK)
            return rc;
    }
    if (m->mapped > len)
        m->mapped = len;
    return MP_OK;
}
