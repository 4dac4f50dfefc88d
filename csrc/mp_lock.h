/*
 * mp_lock.h - the pager's mutex and the entry points it guards; not public.
 *
 * Owns: the prototypes of lock.c and of the unlocked bodies of the public
 * entry points. Every public function of mappedpages.h that takes an mp_pager
 * (or an mp_subpage, whose pager it locks) is a thin wrapper in lock.c:
 * pager_enter, the body named <public name>_locked, pager_leave. A body runs
 * with the mutex held and may call other public functions (the mutex is
 * recursive). Not locked: create and open (no other thread can see the pager
 * yet), mp_subpage_destroy (touches only the allocator's own memory),
 * mp_readers_inspect (no pager), mp_pager_forget (a fork child, alone).
 *
 * Invariant: a pager's state is only read or changed with its mutex held.
 */
#ifndef MP_LOCK_H
#define MP_LOCK_H

#include <pthread.h>

/* The lock fields of mp_pager, and group commit's (group.c). Every field is
 * read and written with mu held. */
typedef struct {
    pthread_mutex_t mu;      /* recursive: a body may call a public function */
    uint32_t depth;          /* times the owning thread holds mu (owner only) */
    int closed;              /* mp_pager_close ran: every later call is MP_ECLOSED */
    /* group commit: one flush carries every change ready when it starts */
    pthread_cond_t done;     /* a flush finished (or failed) */
    int flushing;            /* a leader flushes, mu released */
    int gathering;           /* a leader waits briefly for more changes */
    uint64_t change_seq;     /* tickets: changes applied that wait for a group flush */
    uint64_t durable_seq;    /* tickets up to this one are durable */
    uint64_t failed_seq;     /* tickets up to this one had their flush fail */
    int flush_rc;            /* that flush's error */
    uint64_t last_group;     /* changes the last group flush carried */
    uint64_t last_behind;    /* changes waiting for the next flush when it ended */
    uint64_t last_flush_ns;  /* how long it took */
    uint8_t *page0;          /* page 0 of the flush in flight (v0.2 "compat") */
    uint64_t *later;         /* frees made while a flush is in flight: not in it */
    uint64_t later_count, later_lo, later_hi, later_pins;
} mp_lock;

/* What a commit point's flush covers (commit.c). */
typedef struct {
    int whole_file;          /* fdatasync: the copy selects other pages, or a record */
    uint64_t offset, len;    /* else an msync of the metadata copy */
} mp_flush;
/* commit.c, for group.c: write the copy and make it active in memory; flush
 * it (reads only m and f); release the frees it carried. */
int commit_write_copy(mp_pager *p, mp_flush *f);
int commit_flush(const mp_map *m, const mp_flush *f);
void commit_release_pending(mp_pager *p);
/* Page 0 as the state names it, built under the mutex; its write (reads only m). */
void commit_page0_build(const mp_pager *p, uint8_t *next);
int commit_page0_write(const mp_map *m, uint32_t page_size, const uint8_t *next);

int pager_lock_init(mp_pager *p);
/* Frees made while a flush is in flight are noted here (group.c). */
int group_init(mp_pager *p);
void group_release(mp_pager *p);
/* Waits until no flush is in flight (mu released meanwhile). */
void group_wait_idle(mp_pager *p);
/* An allocation-only commit that may share a flush: the leader/follower
 * protocol (group.c); commit.c decides eligibility (group_eligible). */
int group_eligible(const mp_pager *p);
int group_commit(mp_pager *p);
/* A free not carried by the flush in flight (alloc.c, while flushing). */
void group_note_later(mp_pager *p, uint64_t id, int pinned);
/* Takes p's mutex for a call that may join a group commit: it does not wait
 * for a flush in flight (pager_enter does, on a first hold). */
int pager_enter_group(mp_pager *p);
void pager_lock_destroy(mp_pager *p);
/* Takes p's mutex; MP_ECLOSED (mutex not held) once the pager is closed. */
int pager_enter(mp_pager *p);
void pager_leave(mp_pager *p);
/* The pager an allocator splits pages of (subpage.c). */
mp_pager *subpage_pager(const mp_subpage *s);
/* pager.c: close without the mutex (lock.c holds it), and the last free. */
int pager_close_locked(mp_pager *p);
void pager_destroy(mp_pager *p);
int pager_forget_locked(mp_pager *p);

int mp_pager_refresh_locked(mp_pager *p, mp_open_report *report);
int mp_pager_stats_locked(const mp_pager *p, mp_stats *out);
int mp_pager_mapping_locked(const mp_pager *p, uint8_t **base, uint64_t *reserved_bytes);
int mp_pager_fd_locked(const mp_pager *p, int *out_fd);
int mp_pager_alloc_locked(mp_pager *p, int zero, uint64_t *out_id);
int mp_pager_free_locked(mp_pager *p, uint64_t id);
int mp_pager_alloc_bulk_locked(mp_pager *p, uint64_t n, int zero, uint64_t *out_ids);
int mp_pager_alloc_runs_locked(mp_pager *p, uint64_t n, uint64_t min_run, int zero,
                               uint64_t *out_ids);
int mp_pager_free_bulk_locked(mp_pager *p, const uint64_t *ids, uint64_t n);
int mp_pager_check_page_locked(const mp_pager *p, uint64_t id);
int mp_pager_list_pages_locked(const mp_pager *p, int kind, uint64_t start, uint64_t *out_ids,
                               uint64_t capacity, uint64_t *out_n);
int mp_pager_sync_locked(mp_pager *p);
int mp_pager_finish_locked(mp_pager *p);
int mp_txn_begin_locked(mp_pager *p);
int mp_txn_commit_locked(mp_pager *p);
int mp_txn_abort_locked(mp_pager *p);
int mp_pager_roots_locked(const mp_pager *p, uint64_t *out_roots8);
int mp_pager_root_pages_locked(const mp_pager *p, uint64_t *out_page_a);
int mp_txn_write_pages_locked(mp_pager *p, const uint64_t *ids, uint64_t n, const uint8_t *buf,
                              uint64_t len);
int mp_pager_set_root_locked(mp_pager *p, uint32_t slot, uint64_t value);
int mp_txn_mark_dirty_locked(mp_pager *p, uint64_t first, uint64_t count);
int mp_txn_dirty_count_locked(const mp_pager *p, uint64_t *out);
int mp_txn_write_locked(mp_pager *p, uint64_t first, uint64_t offset, const uint8_t *buf,
                        uint64_t len);
int mp_pager_sync_run_locked(mp_pager *p, uint64_t first, uint64_t count);
int mp_tree_apply_locked(mp_pager *p, uint64_t root, const uint8_t *changes, uint64_t len,
                         uint64_t *out_root, int64_t *out_delta);
int mp_tree_get_locked(const mp_pager *p, uint64_t root, const uint8_t *key, uint32_t klen,
                       uint8_t *buf, uint32_t cap, uint32_t *out_len, int *out_found);
int mp_tree_scan_locked(const mp_pager *p, uint64_t root, const uint8_t *lo, uint32_t lo_len,
                        const uint8_t *hi, uint32_t hi_len, uint32_t flags, uint8_t *buf,
                        uint64_t cap, uint64_t *out_used, int *out_more);
int mp_protected_alloc_locked(mp_pager *p, uint64_t *out_pid);
int mp_protected_free_locked(mp_pager *p, uint64_t pid);
int mp_protected_free_bulk_locked(mp_pager *p, const uint64_t *pids, uint64_t n);
int mp_protected_page_locked(const mp_pager *p, uint64_t pid, uint64_t *out_page);
int mp_protected_begin_locked(mp_pager *p, uint64_t pid, uint64_t *out_staged_page);
int mp_protected_commit_locked(mp_pager *p, uint64_t pid);
int mp_protected_commit_bytes_locked(mp_pager *p, uint64_t pid, const uint8_t *buf, uint64_t len);
int mp_protected_discard_locked(mp_pager *p, uint64_t pid);
int mp_protected_verify_locked(const mp_pager *p, uint64_t pid, int *out_ok);
int mp_protected_backing_locked(const mp_pager *p, uint64_t pid, uint64_t *out_page_a,
                                uint64_t *out_page_b);
int mp_pager_dir_block_pages_locked(const mp_pager *p, uint64_t block, uint64_t *out_page_a,
                                    uint64_t *out_page_b);
int mp_protected_list_locked(const mp_pager *p, uint64_t start, uint64_t *out_pids,
                             uint64_t capacity, uint64_t *out_n);
int mp_subpage_new_locked(mp_pager *p, uint32_t sub_size, mp_subpage **out);
int mp_subpage_alloc_locked(mp_subpage *s, uint64_t *out_id);
int mp_subpage_free_locked(mp_subpage *s, uint64_t id);
int mp_subpage_alloc_bulk_locked(mp_subpage *s, uint64_t n, uint64_t *out_ids);
int mp_subpage_free_bulk_locked(mp_subpage *s, const uint64_t *ids, uint64_t n);
int mp_subpage_clear_locked(mp_subpage *s);
int mp_subpage_restore_locked(mp_subpage *s, const uint64_t *ids, uint64_t n);
int mp_subpage_check_locked(const mp_subpage *s, uint64_t id, uint64_t *out_offset);
int mp_subpage_stats_locked(const mp_subpage *s, mp_sub_stats *out);
int mp_subpage_list_locked(const mp_subpage *s, uint64_t *out_pages, uint64_t *out_masks,
                           uint64_t capacity, uint64_t *out_n);
int mp_subpage_find_held_locked(const mp_subpage *s, const uint64_t *pages, uint64_t n,
                                uint64_t *out_index);
int mp_readers_attach_locked(mp_pager *p, const char *table_path, int64_t max_readers);
int mp_readers_pinned_locked(mp_pager *p, uint64_t *out_count);
int mp_readers_scans_locked(const mp_pager *p, uint64_t *out_count);
int mp_reader_register_locked(mp_pager *p, const char *table_path, mp_open_report *report);
int mp_reader_slot_locked(const mp_pager *p, int64_t *out_slot);
int mp_reader_refresh_locked(mp_pager *p, mp_open_report *report, int *out_changed);
int mp_readers_list_locked(mp_pager *p, uint64_t *out_pids, uint64_t *out_gens,
                           uint64_t *out_pages, uint64_t *out_start_ns, uint64_t capacity,
                           uint64_t *out_n);
int mp_pager_snapshot_locked(mp_pager *p, const char *table_path, mp_pager **out,
                             mp_open_report *report);
int mp_protected_crc_locked(const mp_pager *p, uint64_t pid, uint32_t *out_crc);
int mp_pager_trim_locked(mp_pager *p, uint64_t *out_pages);
int mp_pager_punch_free_locked(mp_pager *p, uint64_t *out_bytes, int *out_unsupported);
int mp_pager_set_punch_on_free_locked(mp_pager *p, int on);
int mp_pager_punched_locked(const mp_pager *p, uint64_t *out_count);
int mp_pager_backup_locked(mp_pager *p, const char *table_path, const char *dest,
                           const uint64_t *over_pages, const uint8_t *over_data,
                           uint64_t over_n, uint64_t *progress, uint64_t *out_bytes);

#endif /* MP_LOCK_H */
