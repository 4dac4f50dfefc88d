/*
 * mp_internal.h - structures shared by the C files of the core; not public.
 *
 * Owns: the in-memory state of an open pager and the prototypes that connect
 * format.c (bytes on disk), bitmap.c (the free map in memory), os.c (system
 * calls and the mapping), pager.c, state.c, recover.c, grow.c, alloc.c, commit.c,
 * txn.c, directory.c, protected.c and subpage.c.
 *
 * Invariants of an open writable pager, kept between calls (check.c checks
 * the in-memory ones after every commit in check builds):
 *   - free_count is total_pages minus the pages set in bits[]; pages 0-2 and
 *     each chunk's layout pages are set; system[] lies within bits[] and
 *     pending[] outside it; the summary matches bits | pending (all modes,
 *     both layouts);
 *   - outside a transaction, in "compat" and "fast", bits[], total_pages and
 *     generation equal the committed metadata copy `active` (with the chunks'
 *     committed free-map pages in the extended layout); in "none" they may be
 *     ahead of it until sync or close (meta_unwritten), and inside a
 *     transaction they are ahead of it until the transaction commits;
 *   - page 0 on disk names `active` in "compat" once each call returns; in
 *     "fast" it may name the older copy (page0_stale) until sync, close or
 *     the next directory commit; in the extended layout its selector is not
 *     kept current at all (the crate cannot read such a file); in the v0.2
 *     layout page 0 holds the directory index of `dirs` once a directory
 *     commit returns, in the extended layout the index pages do;
 *   - every page below total_pages is mapped at base + id * page_size; base
 *     changes only when the file outgrows its reserved range, and the old
 *     range stays mapped until the pager is released (os.c), so no address
 *     handed out goes stale;
 *   - system[] has a bit for each directory page and protected backing page;
 *     each such page is also set in bits[].
 */
#ifndef MP_INTERNAL_H
#define MP_INTERNAL_H

#if defined(__APPLE__)
#define _DARWIN_C_SOURCE 1
#else
#define _GNU_SOURCE 1
#endif

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

#include "mappedpages.h"

#include "mp_format.h"

/* ---- bitmap.c: the free map in memory (bit set = allocated) ---- */

static inline int bitmap_get(const uint64_t *bits, uint64_t i)
{
    return (int)((bits[i >> 6] >> (i & 63)) & 1u);
}
static inline void bitmap_set(uint64_t *bits, uint64_t i)
{
    bits[i >> 6] |= (uint64_t)1 << (i & 63);
}
static inline void bitmap_clear(uint64_t *bits, uint64_t i)
{
    bits[i >> 6] &= ~((uint64_t)1 << (i & 63));
}
static inline uint64_t bitmap_words(uint64_t nbits)
{
    return (nbits + 63) >> 6;
}
/* Lowest set bit in [start, limit) of bits & ~mask (mask may be NULL). */
uint64_t bitmap_find_set(const uint64_t *bits, const uint64_t *mask, uint64_t start,
                         uint64_t limit);
uint64_t bitmap_count_set(const uint64_t *bits, uint64_t limit);

/* A summary over a free map, so a search skips full regions without reading
 * them: level 1 has a bit per 64-bit word of the map, set when every page in
 * the word is taken (allocated, or masked as pending); each next level has a
 * bit per word of the level below, set when that word is all ones. */
#define MP_SUM_LEVELS 4
typedef struct {
    uint64_t *lvl[MP_SUM_LEVELS];
    uint64_t nbits[MP_SUM_LEVELS];
    uint64_t map_words;
    int depth;
    void *mem;
    size_t mem_len;
} mp_summary;
int summary_init(mp_summary *s, uint64_t map_bits);
void summary_release(mp_summary *s);
/* Word w of the map (bits | mask) is now v. */
void summary_update(mp_summary *s, uint64_t w, uint64_t v);
/* Clears the summary of map words [0, words) and rebuilds it from the map. */
void summary_rebuild(mp_summary *s, const uint64_t *bits, const uint64_t *mask, uint64_t words);
/* Lowest bit in [start, limit) clear in bits and mask, or limit. */
uint64_t summary_find_free(const mp_summary *s, const uint64_t *bits, const uint64_t *mask,
                           uint64_t start, uint64_t limit);

/* ---- os.c: every system call that touches the file or the mapping ---- */

/* A range the file was mapped at before it outgrew it: still mapped, so that
 * views handed out there stay valid, until the pager is released. */
typedef struct {
    uint8_t *base;
    uint64_t len;
} mp_region;

/* The file's mapping and the I/O context every system call on it goes through. */
typedef struct {
    uint8_t *base;
    uint64_t reserved;       /* bytes of address space reserved at base */
    uint64_t mapped;         /* bytes of the file mapped at base */
    uint64_t limit;          /* the most bytes of the file ever mapped */
    mp_region *retired;      /* earlier ranges, still mapped */
    uint32_t retired_count;
    int writable;
    int fd;
    mp_io_hooks *io;         /* test hooks, or NULL */
} mp_map;

/* The calls taking io route through the test hooks (NULL: none). */
int os_open_file(mp_io_hooks *io, const char *path, int create, int read_only, int *out_fd);
int os_close_file(int fd);
int os_file_size(int fd, uint64_t *out);
int os_lock(mp_io_hooks *io, int fd, double timeout);
/* Reserves address space for the file: want bytes (less if the address space
 * is short, never less than need), for a file that may reach limit bytes. */
int os_map_reserve(uint64_t want, uint64_t need, uint64_t limit, int writable, mp_map *m);
int os_map_extend(mp_map *m, uint64_t new_len);
void os_map_release(mp_map *m);
/* Fork child: maps every range of the file again, read-only, from a new open
 * file description (zero memory if the file cannot be opened again). */
int os_map_share_read_only(mp_map *m);
int os_flush_range(const mp_map *m, uint64_t offset, uint64_t len);
int os_sync_file(const mp_map *m);
void os_start_writeback(const mp_map *m, uint64_t offset, uint64_t len);
int os_sync_dir_of(const char *path);
int os_grow_file(const mp_map *m, uint64_t old_len, uint64_t new_len, int preallocate);
/* Zeroed memory that costs nothing until touched (the in-memory maps are
 * sized for the largest file, used for the file at hand). */
void *os_alloc_zeroed(size_t len);
void os_free_zeroed(void *mem, size_t len);
int os_shrink_file(const mp_map *m, uint64_t len);
int os_pread_all(mp_io_hooks *io, int fd, uint8_t *buf, size_t len, uint64_t off, size_t *got);
int os_write_all(mp_io_hooks *io, int fd, const uint8_t *buf, size_t len, uint64_t offset);
int os_unlink(const char *path);
/* A new, empty file in path's folder, for a file that must appear whole or
 * not at all: without a name on Linux (O_TMPFILE; *out_tmp is then its
 * /proc/self/fd name, and it must be published before its descriptor is
 * closed), else under a name of its own (".<name>.<pid>.<random>.tmp").
 * *out_tmp is malloc'd; the caller discards (os_discard_temp) and frees it. */
int os_create_temp(const char *path, char **out_tmp, int *out_fd);
/* Whether a temporary file from os_create_temp has no name (Linux O_TMPFILE). */
int os_temp_unnamed(const char *tmp);
/* Removes a temporary file that was not published (one without a name goes
 * with its last descriptor). */
void os_discard_temp(const char *tmp);
/* Gives the file at tmp the name path, failing with -EEXIST (and changing
 * nothing) if path exists; tmp is gone afterwards on success. */
int os_publish(const char *tmp, const char *path);
uint64_t os_page_size(void);
/* space.c's system calls: punch a hole (-EOPNOTSUPP when the file system
 * cannot), give a range blocks again, and replace the mapping past len with
 * zero memory before the file is cut there. */
int os_punch_range(const mp_map *m, uint64_t offset, uint64_t len);
int os_fill_range(const mp_map *m, uint64_t offset, uint64_t len);
int os_map_detach_tail(mp_map *m, uint64_t len);

/* ---- pager.c (lifetime), recover.c (open), grow.c, alloc.c ---- */

/* The pager's named states (state.c derives one from the flags: pager_state),
 * in the spirit of SQLite's PAGER_OPEN ... PAGER_ERROR. Checked in this order:
 *
 *   state               flags                     calls allowed
 *   FORGOTTEN           no_io (and poisoned)      close; views keep reading
 *   ERROR               poisoned                  close (finish is a no-op)
 *   READER              read_only                 reads, stats, refresh, close
 *   WRITER_TXN          txn_depth > 0             every call; txn commit/abort
 *   WRITER_DEFERRED     meta_unwritten,           every call; sync/close
 *                       page0_stale or pending      settle what was deferred
 *   WRITER_IDLE         none of the above         every call
 *
 * Invariants by state (pager_check asserts them after each commit):
 *   - READER: no transaction, no summary, nothing deferred (a reader never
 *     writes), no pending frees;
 *   - every writer state has a summary and no_io clear; FORGOTTEN has
 *     poisoned set too;
 *   - outside a transaction (WRITER_DEFERRED, WRITER_IDLE), once a commit
 *     returns: changed is clear; meta_unwritten and pending frees only in
 *     "none" (and frees pinned for live readers, pins.c); page0_stale
 *     never in "compat" (in "fast" and "none" it may be set until sync or
 *     close; a commit in the extended layout clears it,
 *     since page 0's selector is not kept current there);
 *   - WRITER_TXN: bits[] is ahead of every copy on disk and pending[] holds
 *     the frees of the transaction, in every mode and layout.
 * The invariants of the maps and the directory hold in every state but ERROR
 * and FORGOTTEN (see the list at the top of this file and check.c). */
typedef enum {
    MP_PAGER_FORGOTTEN,
    MP_PAGER_ERROR,
    MP_PAGER_READER,
    MP_PAGER_WRITER_TXN,
    MP_PAGER_WRITER_DEFERRED,
    MP_PAGER_WRITER_IDLE
} mp_pager_state;

/* writer_open values: no writer, a writer open, written in this transaction. */
#define MP_WRITER_NONE 0u
#define MP_WRITER_OPEN 1u
#define MP_WRITER_DONE_IN_TXN 2u

typedef struct {
    mp_dir_entry *entries;   /* entries_per_page entries */
    uint8_t *writer_open;    /* one MP_WRITER_* value per slot */
    int dirty;               /* in-memory entries differ from the active copy */
    uint32_t read_crc;       /* stored CRC of the copy last read: a reader checks
                                it did not change under it (recover.c) */
} mp_dir_block;

/* The order of the two commits of a change to both the bitmap (metadata
 * copies) and the directory (page 0): see protected.c. */
#define MP_ORDER_DIR_FIRST 0
#define MP_ORDER_META_FIRST 1

#include "mp_lock.h"

struct mp_pager {
    mp_lock lk;              /* the mutex every public call holds (lock.c) */
    int fd;
    int read_only;
    int poisoned;
    uint32_t page_size;
    uint32_t log2;
    mp_map map;
    uint64_t max_pages;      /* the most pages a pager maps: the extended layout's cap */
    uint64_t total_pages;
    uint64_t free_count;
    uint64_t generation;
    uint32_t active;         /* committed metadata copy: 0 = A, 1 = B */
    uint64_t hint;           /* no free page below this id */
    uint64_t *bits;          /* bitmap_words(max_pages) words */
    uint64_t *system;        /* same size: directory and backing pages */
    uint64_t *pending;       /* same size: freed by a commit that is not durable yet */
    uint64_t pending_count;
    int durability;          /* mp_durability */
    int page0_stale;         /* page 0 does not describe the newest commit yet */
    int meta_unwritten;      /* the in-memory state is newer than both copies */
    int data_unwritten;      /* "none": transactions wrote pages not flushed since */
    int changed;             /* state changed since the last commit */
    int index_changed;       /* the directory index (count or a flip) changed */
    int no_io;               /* inherited across fork: never write again */
    uint32_t txn_depth;
    uint64_t staged_lo;      /* staged copies committed in the transaction and */
    uint64_t staged_hi;      /* not yet flushed: pages [lo, hi], when hi >= lo */
    uint32_t dir_count;
    uint32_t dir_capacity;   /* max_dir_blocks */
    uint32_t epp;            /* entries per directory page */
    mp_dir_block *dirs;      /* dir_capacity blocks, dir_count in use */
    mp_dir_ref *refs;        /* page 0's block references, dir_count in use */
    uint64_t protected_count;
    uint64_t system_count;
    uint8_t *scratch;        /* page_size bytes */
    uint8_t *commit_page;    /* page_size bytes: a page a commit builds aside (commit.c) */
    struct tree_work *tree_work; /* tree.c's work memory, kept between calls (or NULL) */
    /* The extended layout (format.c): chunk i >= 1 of chunk_pages pages keeps its
     * free-map page and a directory-index page in its first 4 pages. */
    uint64_t chunk_pages;    /* pages per chunk, the v0.2 cap (a count; `chunk`
                                parameters elsewhere are chunk indices) */
    uint32_t minor;          /* page 0's minor version: 2, or 3 once extended */
    int ext_always;          /* extended from creation (the EXA mark): the state
                                is extended at every page count */
    uint64_t grow_step;      /* pages added per growth once past doubling */
    int preallocate;
    size_t map_bytes;        /* bytes of each of bits, system, pending */
    uint64_t words_used;     /* words of those maps that may be non-zero */
    uint64_t pending_lo;     /* word range of pending bits, when pending_count */
    uint64_t pending_hi;
    mp_summary sum;          /* over bits | pending; writers only */
    uint64_t max_chunks;
    uint64_t *chunk_dirty;   /* free-map pages changed since the last commit */
    uint64_t *chunk_active;  /* 1 = copy B holds the committed free-map page */
    uint64_t *index_dirty;   /* directory-index pages changed */
    uint64_t *index_active;  /* 1 = copy B holds the committed index page */
    uint32_t dir_committed;  /* directory blocks in the committed state */
    int ext_committed;       /* the committed state is past v0.2's cap */
    int salvage;             /* open may discard acknowledged state it cannot keep */
    int meta_fell_back;      /* open chose the older metadata copy: the newer one failed */
    uint64_t file_pages;     /* whole pages in the file as open found it */
    struct mp_readers *rd;   /* reader table and pins (readers.c), or NULL */
    /* Engine transactions (engine.c): the roots of the in-memory state, the
     * pages a transaction marked dirty, and the record of the committed
     * copy (the data pages its commit vouches for). */
    uint64_t roots[MP_ROOTS];
    uint64_t *dirty;         /* map_bytes: pages dirtied in the transaction */
    uint64_t dirty_count;
    uint64_t dirty_lo;       /* page range holding the dirty bits, when dirty_count */
    uint64_t dirty_hi;
    uint32_t rec_n;          /* entries in the committed copy's record, or, with
                                rec_new, in the record of the commit under way */
    int rec_new;
    /* Extended layout: the root pages (format_tail.c), copy A's page id or 0,
     * which copy the committed state uses, and whether the next commit must
     * write them (the roots changed, or the pair is new). */
    uint64_t roots_page;
    uint32_t roots_active;
    int roots_dirty;
    /* Staged protected copies of the commit under way, for its record (the
     * extended layout's one-flush commit); staged_n past MP_MAX_RECORD means
     * they do not fit it. Reset with staged_lo/hi. */
    uint64_t staged_ids[MP_MAX_RECORD];
    uint32_t staged_n;
    /* "none" mode: the state a transaction started from when it was not
     * written yet (rollback restores it; see engine.c). */
    uint64_t *snap;          /* bits, then pending: 2 * snap_words words */
    uint64_t snap_words;
    uint64_t snap_total, snap_free, snap_pending_count, snap_pending_lo, snap_pending_hi;
    uint64_t snap_roots[MP_ROOTS];
    uint64_t snap_roots_page;   /* roots_page: a pair the unwritten state claimed */
    mp_rec rec[MP_MAX_RECORD];
    struct mp_space *sp;     /* punched pages and punch_on_free (space.c), or NULL */
};

#include "mp_state.h"

/* Pages that belong to the layout: 0-2, and each chunk's first four. */
static inline int pager_is_layout_page(const mp_pager *p, uint64_t id)
{
    return fmt_is_layout_page(p->chunk_pages, id);
}
/* The in-memory state is in the extended layout: past v0.2's cap, or in a
 * file extended from creation. */
static inline int pager_extended(const mp_pager *p)
{
    return p->ext_always || p->total_pages > p->chunk_pages;
}
/* Copy `copy` of directory-index page k of p's file. */
static inline uint64_t pager_index_page(const mp_pager *p, uint64_t k, uint32_t copy)
{
    return fmt_index_page(p->chunk_pages, p->ext_always, k, copy);
}
/* Whether chunk c's index slots hold index page c - 1 (not so for chunk 1
 * of a file extended from creation, whose index page 0 is at pages 6-7). */
static inline int pager_chunk_holds_index(const mp_pager *p, uint64_t c)
{
    return pager_index_page(p, c - 1, 0) == fmt_chunk_start(p->chunk_pages, c) + 2;
}
/* Directory-index pages p's state has room for: one per chunk past chunk 0,
 * and index page 0 at pages 6-7 in a file extended from creation. */
static inline uint64_t pager_index_pages(const mp_pager *p)
{
    uint64_t n = fmt_chunks_below(p->chunk_pages, p->total_pages);
    return p->ext_always && n == 0 ? 1 : n;
}

/* pager.c: lifetime */
uint8_t *pager_page_ptr(const mp_pager *p, uint64_t id);
int pager_flush_page(mp_pager *p, uint64_t id);
/* A metadata page built aside (commit.c): a copy of page id to change, then
 * written with pwrite to page id (poisoning the pager if that fails). */
uint8_t *commit_page_from(mp_pager *p, uint64_t id);
int commit_page_write(mp_pager *p, uint64_t id);
int pager_usable(const mp_pager *p, int writing);

/* alloc.c */
/* A copy of the caller's n ids in memory the core owns (malloc'd), or NULL:
 * a caller's buffer is read once, since another thread may change it while
 * the core validates and applies it (the GIL is released). */
uint64_t *pager_ids_copy(const uint64_t *caller_ids, uint64_t n);
/* MP_OK for an id a caller may hold (view, free, write, a tree node); else
 * MP_ERESERVED_PAGE (0-2, layout, system pages) or MP_EOUT_OF_BOUNDS. */
int pager_check_page_id(const mp_pager *p, uint64_t id);
/* mp_pager_alloc_runs; where free runs of min_run are lacking, grow_for_runs 0
 * takes the lowest free pages instead of growing the file for them. */
int pager_alloc_pages(mp_pager *p, uint64_t n, uint64_t min_run, int grow_for_runs, int zero,
                      uint64_t *out_ids);
int pager_take_lowest(mp_pager *p, uint64_t *out_id);
void pager_release_bit(mp_pager *p, uint64_t id);
/* Gives back tree.c's work memory (close). */
void tree_release(mp_pager *p);
/* Empties the staged range and list of the commit under way (protected.c). */
void pager_staged_forget(mp_pager *p);

/* recover.c */
int pager_load_committed(mp_pager *p, mp_open_report *rep);
/* Loads the committed state into p, a reader retrying while a writer
 * commits under it. */
/* One look at the committed state: pages 0-2 copied aside, then loaded
 * (recover.c). */
int pager_load_state(mp_pager *p, uint64_t file_len, mp_open_report *rep, int *page0_stale);
int pager_load_with_retries(mp_pager *p, uint64_t file_len, mp_open_report *rep,
                            int *page0_stale);

/* grow.c */
int pager_ensure_free(mp_pager *p, uint64_t n);
/* The in-memory maps cover pages below total. */
void pager_note_words_used(mp_pager *p, uint64_t total);
/* Page id's word of bits or pending changed: keep the summary and the dirty
 * free-map pages in step. */
void pager_map_changed(mp_pager *p, uint64_t id);
/* Marks id allocated (or free) in bits[], keeping those in step. */
void pager_bit_take(mp_pager *p, uint64_t id);
void pager_bit_give(mp_pager *p, uint64_t id);
/* Grows the file to at least `pages` pages (the directory's need in the
 * extended layout); FileFull past the cap. */
int pager_grow_at_least(mp_pager *p, uint64_t pages);
/* The most directory blocks the layout can name with the file as it is. */
uint64_t pager_dir_block_limit(const mp_pager *p);
/* Pages allocation can still hand out: free ones (not pending) plus what
 * growth up to max_pages adds, net of new chunks' layout pages. */
uint64_t pager_room(const mp_pager *p);
/* Marks a free page allocated (open's repairs). */
void pager_claim_bit(mp_pager *p, uint64_t id);
/* Counts the file's pages up to total (v0.2 layout, open's repairs): the
 * pages were in the file already, and come in free. */
void pager_count_pages(mp_pager *p, uint64_t total);

/* ---- check.c ---- */

/* Checks the pager's invariants (check.c); on a violation poisons the pager
 * and returns MP_EINTERNAL. A no-op unless MAPPEDPAGES_CHECK is defined. */
#ifdef MAPPEDPAGES_CHECK
int pager_check(mp_pager *p);
#else
static inline int pager_check(mp_pager *p)
{
    (void)p;
    return MP_OK;
}
#endif

/* ---- commit.c, txn.c ---- */

int pager_commit(mp_pager *p, int order);
int pager_write_page0(mp_pager *p, int flush);
/* Makes durable everything a lazier durability mode deferred: the metadata
 * copy of "none", page 0 of "fast", and the pending frees. */
int pager_settle_deferred(mp_pager *p);
/* Before a directory commit through page 0: settles the deferred metadata of
 * "none" mode, so page 0 never pairs a new directory with old allocations. */
int pager_prepare_dir_commit(mp_pager *p);
/* Zeroes copies left by a commit that never reached its commit point. */
int pager_clear_leftovers(mp_pager *p);

/* ---- engine.c: engine transactions ---- */

/* Flushes the transaction's dirty pages and forgets them (a commit that
 * cannot carry them in its record). */
int txn_flush_dirty(mp_pager *p);
/* Builds the commit record of the dirty pages into p->rec; returns 0 (and
 * leaves rec_n 0) when they do not fit the metadata tail. */
int txn_build_record(mp_pager *p);
void txn_forget_dirty(mp_pager *p);
/* "none" mode keeps its state in memory between syncs: a transaction keeps
 * the state it started from in memory too, instead of writing it first. */
int txn_snapshot_take(mp_pager *p);
void txn_snapshot_drop(mp_pager *p);
int txn_snapshot_restore(mp_pager *p);
/* Makes the snapshot's state durable (a directory commit inside the
 * transaction must not pair with older allocations). */
int txn_snapshot_settle(mp_pager *p);
/* commit.c: writes and flushes the in-memory state and page 0, keeping the
 * pending pages pending. */
int pager_write_state(mp_pager *p);
/* The extended layout's root pages: claims the free pair at `at` (a
 * multiple of 4) for them; or finds a free pair and claims it (FileFull when
 * there is none). */
void roots_pages_claim(mp_pager *p, uint64_t at);
int roots_pages_ensure(mp_pager *p);
/* Builds the record of an extended-layout commit (the dirty data runs, the
 * staged protected copies and the new directory copies, the latter written
 * here without a flush); returns 0, with nothing written, when they do not
 * fit the root page. */
int txn_build_ext_record(mp_pager *p, int *built);
/* Whether the chosen metadata copy's record matches the data on disk. */
int txn_record_holds(const mp_pager *p, const mp_rec *recs, uint32_t n);

/* ---- directory.c, protected.c ---- */

/* Makes room for n directory blocks in p->dirs and p->refs. */
int dir_reserve(mp_pager *p, uint64_t n);
/* Allocates block b's in-memory entries (all free). */
int dir_block_init(mp_pager *p, uint32_t b);

/* Loads the directory named by p->refs[0..count) from the committed copies. */
int dir_load(mp_pager *p, mp_open_report *rep, uint32_t count);
/* After a fallback to the older metadata copy (v0.2 layout): marks allocated
 * the pages of the current directory that the older bitmap does not count. */
int dir_adopt_current(mp_pager *p, mp_open_report *rep, uint32_t count);
int block_unfinished(const mp_pager *p, const mp_dir_ref *r);
void dir_release(mp_pager *p);
int dir_write_dirty(mp_pager *p, int flush);
void dir_flip_dirty(mp_pager *p);
/* The copy of block b a commit writes (the one its reference does not name). */
uint64_t dir_inactive_page(const mp_pager *p, uint32_t b);
int dir_any_dirty(const mp_pager *p);
/* Block b's reference changed: its index page must be rewritten. */
void dir_ref_changed(mp_pager *p, uint64_t b);

#include "mp_readers.h"

/* ---- space.c: trim, hole punching ---- */

/* Page id is about to be handed out: a punched page gets its blocks back
 * first when the pager preallocates (nothing changes on failure). */
int space_before_take(mp_pager *p, uint64_t id);
/* The frees of ids[0..n) were committed: punch those now durable and free
 * (punch_on_free). */
void space_after_free(mp_pager *p, const uint64_t *ids, uint64_t n);
void space_release(mp_pager *p);

#endif /* MP_INTERNAL_H */
