/*
 * lock.c - the pager's mutex: every public call on a pager holds it.
 *
 * Owns: the recursive mutex in each mp_pager (mp_lock, mp_lock.h), the
 * public entry points that take a pager or a sub-page allocator (each a thin
 * wrapper: pager_enter, the body <name>_locked in its own file,
 * pager_leave), mp_pager_lock/unlock (a caller's group of calls), and the
 * pager's end: close, which shuts it under the mutex, and release, which
 * frees the struct once nothing can pass its pointer any more.
 *
 * Invariants:
 *   - a pager's state is only read or changed with its mutex held; the
 *     bodies may call public functions again (the mutex is recursive), and
 *     depth counts how often the owning thread holds it;
 *   - once closed, every call but close, release, lock/unlock and forget
 *     returns MP_ECLOSED without touching the state; the struct and its mutex
 *     live on until mp_pager_release, so a call racing a close in another
 *     thread waits for the mutex and then fails cleanly;
 *   - a fork child never touches a mutex a parent's thread may have held:
 *     mp_pager_forget, the child's first call, initialises it afresh;
 *   - group commit (group.c): while a leader flushes, the mutex is free.
 *     Reads (LOCKED_READ) and alloc/free and their bulk forms (LOCKED_GROUP,
 *     which call no other entry point) go ahead; every other call
 *     (LOCKED) first waits for that flush and writes the changes waiting
 *     for one, and so does mp_pager_lock on a first hold, so a caller's
 *     group never runs beside another thread's flush.
 * The Python layer releases the GIL around every call (cffi), so a thread
 * waiting here blocks no other Python thread.
 */
#include "mp_internal.h"

#include <errno.h>
#include <stdlib.h>

int pager_lock_init(mp_pager *p)
{
    /* Also a fork child's fresh start: no flush of the parent's is in flight here. */
    p->lk.flushing = p->lk.gathering = 0;
    if (group_init(p) != MP_OK)
        return MP_ENO_MEMORY;
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init(&attr) != 0)
        return MP_ENO_MEMORY;
    int rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    if (rc == 0)
        rc = pthread_mutex_init(&p->lk.mu, &attr);
    (void)pthread_mutexattr_destroy(&attr);
    p->lk.depth = 0;
    return rc == 0 ? MP_OK : MP_ENO_MEMORY;
}

void pager_lock_destroy(mp_pager *p)
{
    group_release(p);
    (void)pthread_mutex_destroy(&p->lk.mu);
}

static void lock_raw(mp_pager *p)
{
    (void)pthread_mutex_lock(&p->lk.mu);
    p->lk.depth++;
}

/* Entry kinds: a read only reads memory; a call that may join a group
 * commit (alloc, free and their bulk forms, which call no other entry point)
 * applies its change during a flush in flight; every other call first waits
 * for that flush and writes the changes waiting for one (group.c). */
enum { ENTER_WAIT, ENTER_READ, ENTER_GROUP };

static int enter_kind(mp_pager *p, int kind)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    lock_raw(p);
    if (p->lk.closed) {
        pager_leave(p);
        return MP_ECLOSED;
    }
    if (kind == ENTER_WAIT)
        group_wait_idle(p);
    return MP_OK;
}

int pager_enter(mp_pager *p)
{
    return enter_kind(p, ENTER_WAIT);
}

int pager_enter_group(mp_pager *p)
{
    return enter_kind(p, ENTER_GROUP);
}

void pager_leave(mp_pager *p)
{
    p->lk.depth--;
    (void)pthread_mutex_unlock(&p->lk.mu);
}

/* Runs call with p's mutex held and returns its code (MP_ECLOSED after close). */
#define LOCKED_AS(kind, p, call)                                                              \
    do {                                                                                      \
        mp_pager *pp_ = (mp_pager *)(p);                                                      \
        int rc_ = enter_kind(pp_, kind);                                                      \
        if (rc_ != MP_OK)                                                                     \
            return rc_;                                                                       \
        rc_ = (call);                                                                         \
        pager_leave(pp_);                                                                     \
        return rc_;                                                                           \
    } while (0)
#define LOCKED(p, call) LOCKED_AS(ENTER_WAIT, p, call)
#define LOCKED_READ(p, call) LOCKED_AS(ENTER_READ, p, call)
#define LOCKED_GROUP(p, call) LOCKED_AS(ENTER_GROUP, p, call)

/* ------------------------------------------------------- lock, close, end */

int mp_pager_lock(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    /* Also on a closed pager: a group may end in a close, or find it closed. */
    lock_raw(p);
    /* No flush of another thread's is in flight while a caller holds a group
     * (group.c): its calls are never interleaved with others'. */
    while (p->lk.depth == 1 && p->lk.flushing)
        group_wait_idle(p);
    return MP_OK;
}

int mp_pager_lock_brief(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    lock_raw(p);
    return MP_OK;
}

int mp_pager_unlock(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    /* trylock succeeds for the owner (the mutex is recursive) and for no one
     * else while it is held; depth, read with the mutex held, then counts the
     * caller's own earlier holds: none means the caller did not hold it. */
    if (pthread_mutex_trylock(&p->lk.mu) != 0)
        return MP_EINVALID_ARGUMENT;
    if (p->lk.depth == 0) {
        (void)pthread_mutex_unlock(&p->lk.mu);
        return MP_EINVALID_ARGUMENT;
    }
    p->lk.depth--;
    (void)pthread_mutex_unlock(&p->lk.mu);
    (void)pthread_mutex_unlock(&p->lk.mu);
    return MP_OK;
}

/* Shuts the pager: settles what a lazy mode deferred, gives back the file,
 * its lock and the mapping, and frees the state. The caller (the Python
 * layer) has made sure no view of the mapping is left. */
int mp_pager_close(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    lock_raw(p);
    if (!p->lk.closed)
        group_wait_idle(p);
    int rc = p->lk.closed ? MP_OK : pager_close_locked(p);
    pager_leave(p);
    return rc;
}

/* The last reference is gone: close if that was not done, then free. */
int mp_pager_release(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    (void)mp_pager_close(p);
    pager_destroy(p);
    return MP_OK;
}

int mp_pager_forget(mp_pager *p)
{
    if (!p)
        return MP_EINVALID_ARGUMENT;
    /* The fork child's only thread: a parent's thread may have held the
     * mutex at fork time, and will never release it here. */
    int rc = pager_lock_init(p);
    if (rc != MP_OK)
        return rc;
    return pager_forget_locked(p);
}

/* ------------------------------------------------------ the entry points */

int mp_pager_refresh(mp_pager *p, mp_open_report *report)
{
    LOCKED(p, mp_pager_refresh_locked(p, report));
}

int mp_pager_stats(const mp_pager *p, mp_stats *out)
{
    LOCKED_READ(p, mp_pager_stats_locked(p, out));
}

int mp_pager_mapping(const mp_pager *p, uint8_t **base, uint64_t *reserved_bytes)
{
    LOCKED_READ(p, mp_pager_mapping_locked(p, base, reserved_bytes));
}

int mp_pager_fd(const mp_pager *p, int *out_fd)
{
    LOCKED_READ(p, mp_pager_fd_locked(p, out_fd));
}

int mp_pager_alloc(mp_pager *p, int zero, uint64_t *out_id)
{
    LOCKED_GROUP(p, mp_pager_alloc_locked(p, zero, out_id));
}

int mp_pager_free(mp_pager *p, uint64_t id)
{
    LOCKED_GROUP(p, mp_pager_free_locked(p, id));
}

int mp_pager_alloc_bulk(mp_pager *p, uint64_t n, int zero, uint64_t *out_ids)
{
    LOCKED_GROUP(p, mp_pager_alloc_bulk_locked(p, n, zero, out_ids));
}

int mp_pager_alloc_runs(mp_pager *p, uint64_t n, uint64_t min_run, int zero, uint64_t *out_ids)
{
    LOCKED_GROUP(p, mp_pager_alloc_runs_locked(p, n, min_run, zero, out_ids));
}

int mp_pager_free_bulk(mp_pager *p, const uint64_t *ids, uint64_t n)
{
    LOCKED_GROUP(p, mp_pager_free_bulk_locked(p, ids, n));
}

int mp_pager_check_page(const mp_pager *p, uint64_t id)
{
    LOCKED_READ(p, mp_pager_check_page_locked(p, id));
}

int mp_pager_list_pages(const mp_pager *p, int kind, uint64_t start, uint64_t *out_ids,
                        uint64_t capacity, uint64_t *out_n)
{
    LOCKED_READ(p, mp_pager_list_pages_locked(p, kind, start, out_ids, capacity, out_n));
}

int mp_pager_sync(mp_pager *p)
{
    LOCKED(p, mp_pager_sync_locked(p));
}

int mp_pager_finish(mp_pager *p)
{
    LOCKED(p, mp_pager_finish_locked(p));
}

int mp_txn_begin(mp_pager *p)
{
    LOCKED(p, mp_txn_begin_locked(p));
}

int mp_txn_commit(mp_pager *p)
{
    LOCKED(p, mp_txn_commit_locked(p));
}

int mp_txn_abort(mp_pager *p)
{
    LOCKED(p, mp_txn_abort_locked(p));
}

int mp_pager_roots(const mp_pager *p, uint64_t *out_roots8)
{
    LOCKED_READ(p, mp_pager_roots_locked(p, out_roots8));
}

int mp_pager_set_root(mp_pager *p, uint32_t slot, uint64_t value)
{
    LOCKED(p, mp_pager_set_root_locked(p, slot, value));
}

int mp_txn_mark_dirty(mp_pager *p, uint64_t first, uint64_t count)
{
    LOCKED(p, mp_txn_mark_dirty_locked(p, first, count));
}

int mp_txn_dirty_count(const mp_pager *p, uint64_t *out)
{
    LOCKED_READ(p, mp_txn_dirty_count_locked(p, out));
}

int mp_txn_write(mp_pager *p, uint64_t first, uint64_t offset, const uint8_t *buf, uint64_t len)
{
    LOCKED(p, mp_txn_write_locked(p, first, offset, buf, len));
}

int mp_txn_write_pages(mp_pager *p, const uint64_t *ids, uint64_t n, const uint8_t *buf,
                       uint64_t len)
{
    LOCKED(p, mp_txn_write_pages_locked(p, ids, n, buf, len));
}

int mp_tree_apply(mp_pager *p, uint64_t root, const uint8_t *changes, uint64_t len,
                  uint64_t *out_root, int64_t *out_delta)
{
    LOCKED(p, mp_tree_apply_locked(p, root, changes, len, out_root, out_delta));
}

int mp_tree_get(const mp_pager *p, uint64_t root, const uint8_t *key, uint32_t klen,
                uint8_t *buf, uint32_t cap, uint32_t *out_len, int *out_found)
{
    LOCKED_READ(p, mp_tree_get_locked(p, root, key, klen, buf, cap, out_len, out_found));
}

int mp_tree_scan(const mp_pager *p, uint64_t root, const uint8_t *lo, uint32_t lo_len,
                 const uint8_t *hi, uint32_t hi_len, uint32_t flags, uint8_t *buf, uint64_t cap,
                 uint64_t *out_used, int *out_more)
{
    LOCKED_READ(p, mp_tree_scan_locked(p, root, lo, lo_len, hi, hi_len, flags, buf, cap,
                                       out_used, out_more));
}

int mp_pager_root_pages(const mp_pager *p, uint64_t *out_page_a)
{
    LOCKED_READ(p, mp_pager_root_pages_locked(p, out_page_a));
}

int mp_pager_sync_run(mp_pager *p, uint64_t first, uint64_t count)
{
    LOCKED(p, mp_pager_sync_run_locked(p, first, count));
}

int mp_protected_alloc(mp_pager *p, uint64_t *out_pid)
{
    LOCKED(p, mp_protected_alloc_locked(p, out_pid));
}

int mp_protected_free(mp_pager *p, uint64_t pid)
{
    LOCKED(p, mp_protected_free_locked(p, pid));
}

int mp_protected_free_bulk(mp_pager *p, const uint64_t *pids, uint64_t n)
{
    LOCKED(p, mp_protected_free_bulk_locked(p, pids, n));
}

int mp_protected_page(const mp_pager *p, uint64_t pid, uint64_t *out_page)
{
    LOCKED_READ(p, mp_protected_page_locked(p, pid, out_page));
}

int mp_protected_begin(mp_pager *p, uint64_t pid, uint64_t *out_staged_page)
{
    LOCKED(p, mp_protected_begin_locked(p, pid, out_staged_page));
}

int mp_protected_commit(mp_pager *p, uint64_t pid)
{
    LOCKED(p, mp_protected_commit_locked(p, pid));
}

int mp_protected_commit_bytes(mp_pager *p, uint64_t pid, const uint8_t *buf, uint64_t len)
{
    LOCKED(p, mp_protected_commit_bytes_locked(p, pid, buf, len));
}

int mp_protected_discard(mp_pager *p, uint64_t pid)
{
    LOCKED(p, mp_protected_discard_locked(p, pid));
}

int mp_protected_verify(const mp_pager *p, uint64_t pid, int *out_ok)
{
    LOCKED_READ(p, mp_protected_verify_locked(p, pid, out_ok));
}

int mp_protected_backing(const mp_pager *p, uint64_t pid, uint64_t *out_page_a,
                         uint64_t *out_page_b)
{
    LOCKED_READ(p, mp_protected_backing_locked(p, pid, out_page_a, out_page_b));
}

int mp_pager_dir_block_pages(const mp_pager *p, uint64_t block, uint64_t *out_page_a,
                             uint64_t *out_page_b)
{
    LOCKED_READ(p, mp_pager_dir_block_pages_locked(p, block, out_page_a, out_page_b));
}

int mp_protected_list(const mp_pager *p, uint64_t start, uint64_t *out_pids, uint64_t capacity,
                      uint64_t *out_n)
{
    LOCKED_READ(p, mp_protected_list_locked(p, start, out_pids, capacity, out_n));
}

int mp_subpage_new(mp_pager *p, uint32_t sub_size, mp_subpage **out)
{
    LOCKED(p, mp_subpage_new_locked(p, sub_size, out));
}

int mp_subpage_alloc(mp_subpage *s, uint64_t *out_id)
{
    LOCKED(subpage_pager(s), mp_subpage_alloc_locked(s, out_id));
}

int mp_subpage_free(mp_subpage *s, uint64_t id)
{
    LOCKED(subpage_pager(s), mp_subpage_free_locked(s, id));
}

int mp_subpage_alloc_bulk(mp_subpage *s, uint64_t n, uint64_t *out_ids)
{
    LOCKED(subpage_pager(s), mp_subpage_alloc_bulk_locked(s, n, out_ids));
}

int mp_subpage_free_bulk(mp_subpage *s, const uint64_t *ids, uint64_t n)
{
    LOCKED(subpage_pager(s), mp_subpage_free_bulk_locked(s, ids, n));
}

int mp_subpage_restore(mp_subpage *s, const uint64_t *ids, uint64_t n)
{
    LOCKED(subpage_pager(s), mp_subpage_restore_locked(s, ids, n));
}

int mp_subpage_clear(mp_subpage *s)
{
    LOCKED(subpage_pager(s), mp_subpage_clear_locked(s));
}

int mp_subpage_check(const mp_subpage *s, uint64_t id, uint64_t *out_offset)
{
    LOCKED_READ(subpage_pager(s), mp_subpage_check_locked(s, id, out_offset));
}

int mp_subpage_stats(const mp_subpage *s, mp_sub_stats *out)
{
    LOCKED_READ(subpage_pager(s), mp_subpage_stats_locked(s, out));
}

int mp_subpage_list(const mp_subpage *s, uint64_t *out_pages, uint64_t *out_masks,
                    uint64_t capacity, uint64_t *out_n)
{
    LOCKED_READ(subpage_pager(s), mp_subpage_list_locked(s, out_pages, out_masks, capacity, out_n));
}

int mp_subpage_find_held(const mp_subpage *s, const uint64_t *pages, uint64_t n,
                         uint64_t *out_index)
{
    LOCKED_READ(subpage_pager(s), mp_subpage_find_held_locked(s, pages, n, out_index));
}

int mp_readers_attach(mp_pager *p, const char *table_path, int64_t max_readers)
{
    LOCKED(p, mp_readers_attach_locked(p, table_path, max_readers));
}

int mp_readers_pinned(mp_pager *p, uint64_t *out_count)
{
    LOCKED(p, mp_readers_pinned_locked(p, out_count));
}

int mp_readers_scans(const mp_pager *p, uint64_t *out_count)
{
    LOCKED_READ(p, mp_readers_scans_locked(p, out_count));
}

int mp_reader_register(mp_pager *p, const char *table_path, mp_open_report *report)
{
    LOCKED(p, mp_reader_register_locked(p, table_path, report));
}

int mp_reader_slot(const mp_pager *p, int64_t *out_slot)
{
    LOCKED_READ(p, mp_reader_slot_locked(p, out_slot));
}

int mp_reader_refresh(mp_pager *p, mp_open_report *report, int *out_changed)
{
    LOCKED(p, mp_reader_refresh_locked(p, report, out_changed));
}

int mp_readers_list(mp_pager *p, uint64_t *out_pids, uint64_t *out_gens, uint64_t *out_pages,
                    uint64_t *out_start_ns, uint64_t capacity, uint64_t *out_n)
{
    LOCKED(p, mp_readers_list_locked(p, out_pids, out_gens, out_pages, out_start_ns, capacity,
                                     out_n));
}

int mp_pager_snapshot(mp_pager *p, const char *table_path, mp_pager **out, mp_open_report *report)
{
    LOCKED(p, mp_pager_snapshot_locked(p, table_path, out, report));
}

int mp_protected_crc(const mp_pager *p, uint64_t pid, uint32_t *out_crc)
{
    LOCKED_READ(p, mp_protected_crc_locked(p, pid, out_crc));
}

int mp_pager_trim(mp_pager *p, uint64_t *out_pages)
{
    LOCKED(p, mp_pager_trim_locked(p, out_pages));
}

int mp_pager_punch_free(mp_pager *p, uint64_t *out_bytes, int *out_unsupported)
{
    LOCKED(p, mp_pager_punch_free_locked(p, out_bytes, out_unsupported));
}

int mp_pager_set_punch_on_free(mp_pager *p, int on)
{
    LOCKED(p, mp_pager_set_punch_on_free_locked(p, on));
}

int mp_pager_punched(const mp_pager *p, uint64_t *out_count)
{
    LOCKED_READ(p, mp_pager_punched_locked(p, out_count));
}

int mp_pager_backup(mp_pager *p, const char *table_path, const char *dest,
                    const uint64_t *over_pages, const uint8_t *over_data, uint64_t over_n,
                    uint64_t *progress, uint64_t *out_bytes)
{
    LOCKED(p, mp_pager_backup_locked(p, table_path, dest, over_pages, over_data, over_n,
                                     progress, out_bytes));
}
