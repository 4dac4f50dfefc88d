/*
 * os_publish.c - making a file appear whole under its name, or not at all.
 *
 * Owns: the new file of create and backup, built without a name (Linux,
 * O_TMPFILE) or under a temporary name beside its final one, and its
 * publishing: a link that never replaces a file, then the folder flushed so
 * that the name is durable.
 *
 * Invariants: nothing appears under the final name before the file is
 * complete and flushed; an existing file is never replaced (EEXIST); a file
 * without a name is published before its descriptor closes, and one that is
 * not published leaves nothing behind.
 */
#include "mp_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#include <time.h>
#include <unistd.h>

/* The temporary name keeps at most this much of the final name, so that the
 * prefix and suffix never push it past the file system's limit (255). */
#define TEMP_NAME_KEEP 200

/* The name of a file created without one: its descriptor under /proc. */
#define UNNAMED_PREFIX "/proc/self/fd/"

int os_temp_unnamed(const char *tmp)
{
    return strncmp(tmp, UNNAMED_PREFIX, sizeof UNNAMED_PREFIX - 1) == 0;
}

/* Linux: the file is made without a name (O_TMPFILE) in path's folder, and
 * *out_tmp is its /proc/self/fd name, which os_publish links to path: a
 * process killed before that leaves nothing behind, where a named temporary
 * file would stay. -ENOTSUP where the platform, the file system or a missing
 * /proc cannot do it (the caller then uses a name). */
static int create_unnamed(const char *path, size_t dir_len, char **out_tmp, int *out_fd)
{
#if defined(__linux__) && defined(O_TMPFILE)
    if (access(UNNAMED_PREFIX, X_OK) != 0)
        return -ENOTSUP;
    char *dir = malloc(dir_len + 2);
    char *tmp = malloc(sizeof UNNAMED_PREFIX + 24);
    if (!dir || !tmp) {
        free(dir);
        free(tmp);
        return MP_ENO_MEMORY;
    }
    memcpy(dir, dir_len ? path : ".", dir_len ? dir_len : 1);
    dir[dir_len ? dir_len : 1] = '\0';
    int fd;
    do {
        fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
    } while (fd < 0 && errno == EINTR);
    int e = errno;
    free(dir);
    if (fd < 0) {
        free(tmp);
        return -e;
    }
    snprintf(tmp, sizeof UNNAMED_PREFIX + 24, UNNAMED_PREFIX "%d", fd);
    *out_tmp = tmp;
    *out_fd = fd;
    return MP_OK;
#else
    (void)path;
    (void)dir_len;
    (void)out_tmp;
    (void)out_fd;
    return -ENOTSUP;
#endif
}

void os_discard_temp(const char *tmp)
{
    /* A file without a name goes away with its last descriptor. */
    if (!os_temp_unnamed(tmp))
        (void)unlink(tmp);
}

int os_create_temp(const char *path, char **out_tmp, int *out_fd)
{
    size_t n = strlen(path);
    const char *slash = strrchr(path, '/');
    size_t dir_len = slash ? (size_t)(slash - path) + 1 : 0;
    size_t base_len = n - dir_len;
    if (base_len == 0)
        return -EISDIR;
    if (create_unnamed(path, dir_len, out_tmp, out_fd) == MP_OK)
        return MP_OK;
    if (base_len > TEMP_NAME_KEEP)
        base_len = TEMP_NAME_KEEP;
    size_t cap = dir_len + base_len + 64;
    char *tmp = malloc(cap);
    if (!tmp)
        return MP_ENO_MEMORY;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* Not secret, only unlikely to collide; O_EXCL settles any collision. */
    uint64_t seed = (uint64_t)now.tv_nsec * 0x9E3779B97F4A7C15u ^ (uint64_t)now.tv_sec ^
                    (uint64_t)(uintptr_t)tmp;
    for (int attempt = 0; attempt < 100; attempt++) {
        seed = seed * 6364136223846793005u + 1442695040888963407u;
        snprintf(tmp, cap, "%.*s.%.*s.%ld.%08x.tmp", (int)dir_len, path, (int)base_len,
                 path + dir_len, (long)getpid(), (unsigned)(seed >> 32));
        int fd;
        do {
            fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        } while (fd < 0 && errno == EINTR);
        if (fd >= 0) {
            *out_tmp = tmp;
            *out_fd = fd;
            return MP_OK;
        }
        if (errno != EEXIST) {
            int e = errno;
            free(tmp);
            return -e;
        }
    }
    free(tmp);
    return -EEXIST;
}

/* link() fails with EEXIST rather than replace a file, which is what create
 * promises; a file system without hard links gets the same promise from
 * renameat2(RENAME_NOREPLACE) (renamex_np(RENAME_EXCL) on macOS). */
int os_publish(const char *tmp, const char *path)
{
    if (os_temp_unnamed(tmp)) /* linkat refuses an existing path, as link does */
        return linkat(AT_FDCWD, tmp, AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0 ? MP_OK : -errno;
    if (link(tmp, path) == 0) {
        (void)unlink(tmp);
        return MP_OK;
    }
    int e = errno;
    if (e != EPERM && e != ENOTSUP && e != EOPNOTSUPP && e != EMLINK && e != ENOSYS)
        return -e;
#if defined(__APPLE__)
    if (renamex_np(tmp, path, RENAME_EXCL) == 0)
        return MP_OK;
    return -errno;
#elif defined(SYS_renameat2)
    if (syscall(SYS_renameat2, AT_FDCWD, tmp, AT_FDCWD, path, 1 /* RENAME_NOREPLACE */) == 0)
        return MP_OK;
    return -errno;
#else
    return -e;
#endif
}

int os_sync_dir_of(const char *path)
{
    char dir[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof dir)
        return -ENAMETOOLONG;
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? MP_OK : -errno;
    close(fd);
    /* Some file systems do not support fsync on a directory; that is no error. */
    if (rc == -EINVAL || rc == -ENOTSUP)
        rc = MP_OK;
    return rc;
}
