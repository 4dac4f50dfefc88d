/*
 * mappedpages.h - the one public header of the mappedpages C core.
 *
 * Owns: the C API that the Python layer calls through cffi. build_ffi.py feeds
 * everything between the CDEF-BEGIN and CDEF-END markers to ffi.cdef(), so that
 * part holds only declarations cffi can parse (no macros, no includes).
 *
 * Rules every function here keeps:
 *   - returns an error code: 0 = ok, a positive MP_E* code for a library error,
 *     or a negative errno for a failure of the operating system;
 *   - writes results only through out-parameters, and only on success;
 *   - never aborts, never asserts on input, keeps no global mutable state;
 *   - on any error, changes nothing on disk or in memory, except where a failed
 *     flush leaves the pager poisoned (later calls give MP_EUNAVAILABLE).
 * Calls on one handle may come from any thread: each takes the pager's
 * recursive mutex for its whole run (lock.c), and mp_pager_lock/unlock hold
 * it across a group of calls. After mp_pager_close every call returns
 * MP_ECLOSED; the handle's memory lasts until mp_pager_release. Different
 * handles are independent.
 */
#ifndef MAPPEDPAGES_H
#define MAPPEDPAGES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF-BEGIN */

enum mp_error {
    MP_OK = 0,
    MP_EINVALID_PAGE_SIZE = 1,
    MP_ECORRUPT_SUPERBLOCK = 2,
    MP_ECORRUPT_METADATA = 3,
    MP_ECORRUPT_DIRECTORY_INDEX = 4,
    MP_ECORRUPT_PROTECTED_DIRECTORY = 5,
    MP_EOUT_OF_BOUNDS = 6,
    MP_ERESERVED_PAGE = 7,
    MP_EDOUBLE_FREE = 8,
    MP_EUNAVAILABLE = 9,
    MP_EFILE_FULL = 10,
    MP_EDIRECTORY_FULL = 11,
    MP_ELOCKED = 12,
    MP_EWRITER_OPEN = 13,
    MP_EINVALID_ARGUMENT = 14,
    MP_ENO_MEMORY = 15,
    MP_EREAD_ONLY = 16,
    MP_ENO_WRITER = 17,
    MP_ESUBPAGE_OWNED = 18,         /* the pager handed a sub-page allocator a page it
                                       already holds (freed in the pager behind its back) */
    MP_EFILE_TRUNCATED = 19,        /* a valid newest commit counts pages past the end of the
                                       file: the file was cut (open with salvage to roll back) */
    MP_EINTERNAL = 20,              /* pager_check found a broken invariant (a bug); the
                                       pager is poisoned */
    MP_EREADERS_FULL = 21,          /* every slot of the reader table is held by a live reader */
    MP_ESNAPSHOT_MOVED = 22,        /* a reader's backup: the writer rewrote pages of the
                                       reader's commit while they were copied */
    MP_ECLOSED = 23,                /* the pager was closed (mp_pager_close) */
    MP_ERROR_CODES = 24             /* one past the last code */
};

/* What open found and repaired; the Python layer turns it into warnings. */
enum mp_recovery {
    MP_REC_META_A_DAMAGED = 1,      /* metadata copy A failed validation */
    MP_REC_META_B_DAMAGED = 2,      /* metadata copy B failed validation */
    MP_REC_SELECTOR_INVALID = 4,    /* page 0's selector byte was not 0 or 1 */
    MP_REC_SELECTOR_STALE = 8,      /* page 0 named the older copy */
    MP_REC_META_CHECKSUM = 16,      /* page 0's meta_checksum was not the expected value */
    MP_REC_DIR_FALLBACK = 32,       /* a directory block was read from its inactive copy */
    MP_REC_DIR_ENTRY_DROPPED = 64,  /* a directory entry failed its checks and was dropped */
    MP_REC_DIR_BLOCK_DROPPED = 128, /* an unfinished trailing directory block was dropped */
    MP_REC_PAGE0_REWRITTEN = 256,   /* a writer rewrote page 0 to name the chosen state */
    MP_REC_DIR_INDEX_TORN = 512,    /* page 0's directory index was caught mid-rewrite and
                                       read as the state its CRC matches */
    MP_REC_CUT_ROLLED_BACK = 1024,  /* salvage: the newest commit reached past the end of a cut
                                       file; rolled back to the older copy */
    MP_REC_PROTECTED_KEPT = 2048,   /* after a metadata fallback, current protected pages had
                                       their pages marked allocated again and were kept */
    MP_REC_SALVAGE_DROPPED = 4096   /* salvage: directory blocks with no copy in the file were
                                       emptied, their protected pages discarded */
};

/* Why a metadata copy was judged damaged (mp_open_report.meta_problem[]). */
enum mp_meta_problem {
    MP_META_OK = 0,
    MP_META_BAD_CRC = 1,
    MP_META_BAD_TOTAL = 2,          /* page count impossible, or past the file's end */
    MP_META_BAD_RESERVED = 3,       /* pages 0-2 not marked allocated */
    MP_META_BITS_PAST_END = 4,      /* a bit set at or past total_pages */
    MP_META_BAD_FREE_COUNT = 5,     /* free_count disagrees with the bitmap */
    MP_META_BAD_FREE_MAP = 6,       /* extended layout: a free-map page is missing or damaged */
    MP_META_PAST_END = 7,           /* valid, but counts pages past the end of the file */
    MP_META_DATA_MISSING = 8        /* newest copy, but a data page its commit recorded does
                                       not hold the committed content (a torn commit) */
};

/* When a commit is durable (mp_options.durability). */
enum mp_durability {
    MP_DURABILITY_COMPAT = 0,       /* two flushes: durable, and page 0 current for the crate */
    MP_DURABILITY_FAST = 1,         /* one flush: durable; page 0 brought up to date lazily */
    MP_DURABILITY_NONE = 2          /* no flush: durable at sync/close; still crash-consistent */
};

/* Kinds of page by position in a file's layout (mp_layout_page_kind). Chunk c >= 1 of
 * the extended layout starts with its free-map page (copies A, B) and directory-index
 * page c - 1 (copies A, B); every other page from 3 on is a data page. */
enum mp_layout_page {
    MP_PAGE_SUPERBLOCK = 0,         /* page 0: superblock, selector, directory index */
    MP_PAGE_META_A = 1,             /* page 1 */
    MP_PAGE_META_B = 2,             /* page 2 */
    MP_PAGE_FREE_MAP_A = 3,         /* chunk c >= 1: page c * chunk_pages */
    MP_PAGE_FREE_MAP_B = 4,         /* c * chunk_pages + 1 */
    MP_PAGE_INDEX_A = 5,            /* c * chunk_pages + 2: directory-index page c - 1 */
    MP_PAGE_INDEX_B = 6,            /* c * chunk_pages + 3 */
    MP_PAGE_DATA = 7                /* a page allocation may hand out */
};

/* The geometry of both layouts at one page size (format.c owns it; FORMAT.md). */
typedef struct {
    uint32_t page_size;
    uint32_t reserved_pages;          /* 3: pages 0-2 */
    uint64_t bits_per_map_page;       /* pages one metadata bitmap or free-map page covers */
    uint64_t chunk_pages;             /* pages per chunk of the extended layout (the same) */
    uint64_t v02_max_pages;           /* the most pages of a v0.2 file (chunk 0 alone) */
    uint64_t max_pages;               /* the most pages a pager maps (extended layout) */
    uint32_t layout_pages_per_chunk;  /* 4: free-map A/B, directory-index A/B */
    uint32_t dir_entries_per_page;    /* protected-page entries per directory page */
    uint32_t dir_refs_per_index;      /* directory blocks page 0 or one index page names */
    uint32_t meta_header_bytes;       /* 24: bitmap offset in a metadata page */
    uint32_t chunk_header_bytes;      /* 24: bitmap/refs offset in free-map and index pages */
    uint32_t dir_index_offset;        /* 20: directory index offset in page 0 */
    uint32_t dir_ref_bytes;           /* 17 */
    uint32_t dir_entry_bytes;         /* 30 */
    uint32_t dir_page_header_bytes;   /* 8 */
} mp_layout;

/* MP_EINVALID_PAGE_SIZE unless page_size is a power of two in [1 KiB, 1 GiB]. */
int mp_layout_get(uint32_t page_size, mp_layout *out);
/* The mp_layout_page kind of page id (by position; any id below max_pages). */
int mp_layout_page_kind(uint32_t page_size, uint64_t id, int *out_kind);
/* The page id of layout page `kind` (MP_PAGE_FREE_MAP_A..MP_PAGE_INDEX_B) of chunk
 * c >= 1; directory-index page k lives in chunk k + 1. */
int mp_layout_chunk_page(uint32_t page_size, uint64_t chunk, int kind, uint64_t *out_id);
/* The pages of the layout (0-2 and the chunks' first four) below total pages. */
int mp_layout_pages_below(uint32_t page_size, uint64_t total, uint64_t *out_n);

/* The message of an MP_E* code (a static string); MP_EINVALID_ARGUMENT for a code that
 * is not one (a negative errno is the operating system's: strerror). */
int mp_strerror(int code, const char **out);
/* The name of one mp_recovery bit ("meta_a_damaged", ...); MP_EINVALID_ARGUMENT
 * unless flag is exactly one known bit. */
int mp_recovery_flag_name(uint32_t flag, const char **out);
/* What an mp_meta_problem value means ("its CRC does not match", ...). */
int mp_meta_problem_text(uint32_t problem, const char **out);

/* Choosing the committed state on open (recover.c): a pure decision over what was read
 * of both metadata copies and page 0. Exposed so that tests and tools can check it over
 * every combination of valid, damaged, stale and past-end copies. */
typedef struct {
    uint32_t problem[2];      /* mp_meta_problem of copy A and B as checked (MP_META_PAST_END:
                                 valid, but counting pages past the end of the file) */
    uint64_t generation[2];
    uint64_t total_pages[2];
    uint32_t selector;        /* page 0's selector byte as stored */
    uint32_t meta_checksum_ok;/* page 0's meta_checksum holds the expected value */
    uint64_t chunk_pages;     /* the layout: a copy counting more pages is extended */
    int salvage;              /* the caller may roll back past a cut end */
    int ext_always;           /* the file is extended from creation (every copy is) */
} mp_choice_in;

typedef struct {
    uint32_t chosen;          /* 0 = A, 1 = B */
    int32_t fallback;         /* the copy to try if the chosen one's extended-layout pages
                                 fail, or -1 */
    int32_t cut;              /* the copy that shows the file was cut, or -1 */
    uint32_t flags;           /* mp_recovery bits decided here */
    uint32_t page0_stale;     /* page 0 does not name the chosen state (v0.2 layout) */
} mp_choice;

/* MP_OK and the choice; MP_EFILE_TRUNCATED (a cut file, no salvage or nothing to roll
 * back to) or MP_ECORRUPT_METADATA (no copy valid). */
int mp_choose_committed(const mp_choice_in *in, mp_choice *out);

typedef struct mp_pager mp_pager;
typedef struct mp_subpage mp_subpage;

/* Kinds of system call routed through mp_io_hooks. */
enum mp_io_kind {
    MP_IO_MSYNC = 0,
    MP_IO_FSYNC = 1,          /* fdatasync, or F_FULLFSYNC on macOS */
    MP_IO_FTRUNCATE = 2,
    MP_IO_FALLOCATE = 3,      /* posix_fallocate, or F_PREALLOCATE on macOS; and
                                 punching holes (space.c) */
    MP_IO_MMAP = 4,
    MP_IO_MUNMAP = 5,
    MP_IO_PWRITE = 6,         /* page 0's rewrites and a new file's pages */
    MP_IO_PREAD = 7,          /* open's read of the superblock */
    MP_IO_OPEN = 8,           /* open of the file by mp_pager_open */
    MP_IO_FLOCK = 9,          /* each attempt at the writer's lock */
    MP_IO_WRITEBACK = 10,     /* sync_file_range(WRITE) on Linux: starts writing
                                 pages early, a hint; never a barrier */
    MP_IO_KINDS = 11
};

/* Test-only fault injection and barrier observation; owned by the caller, who
 * passes it in mp_options and keeps it alive as long as the pager. Normal use
 * passes NULL. The Nth call (1-based) of a kind fails with fail_errno, once or
 * (fail_persistent) from then on; on_barrier is told of every successful
 * msync/fsync with its byte range (fsync: offset 0, length UINT64_MAX);
 * skip_msync_at turns the Nth msync into a silent no-op, to prove that a
 * harness notices a missing barrier. */
typedef struct mp_io_hooks {
    uint64_t calls[11];       /* sized MP_IO_KINDS (cffi needs the number) */
    uint64_t fail_at[11];
    int fail_errno[11];
    int fail_persistent[11];
    uint64_t skip_msync_at;
    int (*on_barrier)(void *ctx, int kind, uint64_t offset, uint64_t length);
    void *ctx;
} mp_io_hooks;

typedef struct {
    uint32_t page_size;       /* create: the page size; open: 0 = the file's */
    int read_only;            /* open only: map read-only, no lock, no writes */
    double lock_timeout;      /* seconds to wait for the writer lock; 0 = fail at once */
    mp_io_hooks *io_hooks;    /* NULL, except in tests */
    int durability;           /* mp_durability */
    uint64_t grow_step;       /* bytes added per growth once doubling reaches it; 0 = 1 GiB */
    int sparse;               /* grow with ftruncate only (no posix_fallocate) */
    int salvage;              /* open only: discard acknowledged state that cannot be kept
                                 (a cut file, directory blocks with no copy in the file)
                                 instead of failing */
    uint32_t layout;          /* create only: 0 or 2 = the v0.2 layout, 3 = extended */
} mp_options;

typedef struct {
    uint32_t flags;           /* mp_recovery bits */
    uint32_t chosen_copy;     /* 0 = A (page 1), 1 = B (page 2) */
    uint64_t generation[2];   /* generation of copy A and B (as stored) */
    uint32_t meta_problem[2]; /* mp_meta_problem of copy A and B */
    uint32_t selector;        /* page 0's selector byte as found */
    uint32_t dir_fallbacks;   /* directory blocks read from their inactive copy */
    uint32_t dropped_entries; /* directory entries dropped */
    uint32_t dropped_blocks;  /* trailing directory blocks dropped */
    /* Also filled when open fails with MP_EFILE_TRUNCATED, to say why;
     * page_size also with MP_EINVALID_PAGE_SIZE (the file's page size). */
    uint32_t page_size;
    uint64_t file_bytes;      /* the file's length as open found it */
    uint64_t cut_pages;       /* pages the newest commit counts past a cut end, or 0 */
    uint64_t cut_generation;  /* that commit's generation */
    uint32_t kept_protected;  /* protected pages kept after a metadata fallback */
    uint32_t salvaged_blocks; /* salvage: directory blocks emptied (no copy in the file) */
} mp_open_report;

typedef struct {
    uint32_t page_size;
    uint32_t read_only;
    uint64_t page_count;
    uint64_t free_count;
    uint64_t generation;
    uint64_t max_pages;       /* the most pages this file can grow to: the most a pager
                                 maps (a v0.2 file moves to the extended layout past
                                 v0.2's cap) */
    uint64_t protected_count;
    uint64_t dir_blocks;
    uint64_t system_pages;    /* directory pages plus protected backing pages */
    uint32_t format_minor;    /* 2: the crate's v0.2 layout; 3: the extended layout */
    uint64_t chunk_pages;     /* extended layout: pages per free-map page */
    uint64_t layout_pages;    /* pages the layout keeps (0-2 and the free-map/index pages) */
    uint64_t room;            /* pages alloc can still hand out, growing up to max_pages */
} mp_stats;

typedef struct {
    uint32_t sub_size;
    uint32_t slots_per_page;  /* page_size / sub_size */
    uint64_t live_count;      /* sub-pages in use */
    uint64_t big_pages;       /* pages checked out from the pager */
    uint64_t partial_pages;   /* of those, pages with a free sub-slot */
} mp_sub_stats;

/* Kinds of page for mp_pager_list_pages. */
enum mp_page_kind {
    MP_KIND_ALLOCATED = 1,    /* allocated regular pages (not system pages) */
    MP_KIND_SYSTEM = 2        /* directory pages and protected backing pages */
};

int mp_pager_create(const char *path, const mp_options *opts, mp_pager **out);
int mp_pager_open(const char *path, const mp_options *opts, mp_pager **out,
                  mp_open_report *report);
/* Settles what the durability mode deferred, then gives back the file, its lock,
 * the mapping (no view of it may be left) and the state; idempotent. Calls in flight
 * in other threads finish first; later calls return MP_ECLOSED. */
int mp_pager_close(mp_pager *p);
/* Closes if needed and frees the handle: no caller may pass p after this. */
int mp_pager_release(mp_pager *p);
/* Holds p's mutex across several calls (re-entrant in the owning thread); unlock
 * returns MP_EINVALID_ARGUMENT when the calling thread does not hold it. */
int mp_pager_lock(mp_pager *p);
int mp_pager_unlock(mp_pager *p);
/* As mp_pager_lock, but without waiting for another thread's group flush in
 * flight: for a brief look (no call that commits) before a call of its own. */
int mp_pager_lock_brief(mp_pager *p);
int mp_pager_refresh(mp_pager *p, mp_open_report *report);
int mp_pager_stats(const mp_pager *p, mp_stats *out);
int mp_pager_mapping(const mp_pager *p, uint8_t **base, uint64_t *reserved_bytes);
int mp_pager_fd(const mp_pager *p, int *out_fd);
int mp_pager_alloc(mp_pager *p, int zero, uint64_t *out_id);
int mp_pager_free(mp_pager *p, uint64_t id);
int mp_pager_alloc_bulk(mp_pager *p, uint64_t n, int zero, uint64_t *out_ids);
/* As mp_pager_alloc_bulk, but the pages come from free runs of at least
 * min_run consecutive pages (lowest first; the last run taken may be cut
 * short), growing the file rather than using shorter runs, so that writing
 * them is a few long writes. Where the file cannot grow that far, shorter
 * runs serve too. The ids come out in ascending order. */
int mp_pager_alloc_runs(mp_pager *p, uint64_t n, uint64_t min_run, int zero, uint64_t *out_ids);
int mp_pager_free_bulk(mp_pager *p, const uint64_t *ids, uint64_t n);
int mp_pager_check_page(const mp_pager *p, uint64_t id);
int mp_pager_list_pages(const mp_pager *p, int kind, uint64_t start,
                        uint64_t *out_ids, uint64_t capacity, uint64_t *out_n);
int mp_pager_sync(mp_pager *p);
int mp_pager_finish(mp_pager *p);
int mp_pager_forget(mp_pager *p);
int mp_txn_begin(mp_pager *p);
int mp_txn_commit(mp_pager *p);
int mp_txn_abort(mp_pager *p);
/* Engine transactions (engine.c): roots, dirty data pages, flushing runs. */
int mp_pager_roots(const mp_pager *p, uint64_t *out_roots8);
int mp_pager_set_root(mp_pager *p, uint32_t slot, uint64_t value);
/* Where the extended layout keeps the roots and the commit record: the page of
 * copy A of the root pages (copy B follows it), or 0 when the state has none
 * (the v0.2 layout keeps them in the metadata copies). */
int mp_pager_root_pages(const mp_pager *p, uint64_t *out_page_a);
int mp_txn_mark_dirty(mp_pager *p, uint64_t first, uint64_t count);
int mp_txn_dirty_count(const mp_pager *p, uint64_t *out);
/* Writes len bytes at byte offset (< page_size) of page first, through the page cache,
 * and marks the pages it touches dirty. */
int mp_txn_write(mp_pager *p, uint64_t first, uint64_t offset, const uint8_t *buf,
                 uint64_t len);
/* Writes n whole pages, page i of buf (len == n * page_size bytes) to page ids[i], through
 * the page cache, and marks them dirty; every id is checked before anything is written. */
int mp_txn_write_pages(mp_pager *p, const uint64_t *ids, uint64_t n, const uint8_t *buf,
                       uint64_t len);
int mp_pager_sync_run(mp_pager *p, uint64_t first, uint64_t count);

int mp_protected_alloc(mp_pager *p, uint64_t *out_pid);
int mp_protected_free(mp_pager *p, uint64_t pid);
int mp_protected_free_bulk(mp_pager *p, const uint64_t *pids, uint64_t n);
int mp_protected_page(const mp_pager *p, uint64_t pid, uint64_t *out_page);
/* Opens a writer; *out_staged_page is the copy a commit will write. The core
 * does not initialise it: the caller stages the content in its own memory. */
int mp_protected_begin(mp_pager *p, uint64_t pid, uint64_t *out_staged_page);
/* Commits the staged page as it stands in the file. */
int mp_protected_commit(mp_pager *p, uint64_t pid);
/* Commits a writer with the new content buf (len must be the page size), read
 * once and written to the staged copy with pwrite. */
int mp_protected_commit_bytes(mp_pager *p, uint64_t pid, const uint8_t *buf, uint64_t len);
int mp_protected_discard(mp_pager *p, uint64_t pid);
int mp_protected_verify(const mp_pager *p, uint64_t pid, int *out_ok);
int mp_protected_backing(const mp_pager *p, uint64_t pid, uint64_t *out_page_a,
                         uint64_t *out_page_b);
int mp_pager_dir_block_pages(const mp_pager *p, uint64_t block, uint64_t *out_page_a,
                             uint64_t *out_page_b);
int mp_protected_list(const mp_pager *p, uint64_t start, uint64_t *out_pids,
                      uint64_t capacity, uint64_t *out_n);

int mp_subpage_new(mp_pager *p, uint32_t sub_size, mp_subpage **out);
int mp_subpage_destroy(mp_subpage *s);
int mp_subpage_alloc(mp_subpage *s, uint64_t *out_id);
int mp_subpage_free(mp_subpage *s, uint64_t id);
int mp_subpage_alloc_bulk(mp_subpage *s, uint64_t n, uint64_t *out_ids);
int mp_subpage_free_bulk(mp_subpage *s, const uint64_t *ids, uint64_t n);
int mp_subpage_restore(mp_subpage *s, const uint64_t *ids, uint64_t n);
/* Forgets every page and sub-page the allocator holds (the pager is not told):
 * a transaction's rollback rebuilds it in place with mp_subpage_restore. */
int mp_subpage_clear(mp_subpage *s);
int mp_subpage_check(const mp_subpage *s, uint64_t id, uint64_t *out_offset);
int mp_subpage_stats(const mp_subpage *s, mp_sub_stats *out);
/* Every big page held and its in-use mask, in no order; capacity must be at
 * least mp_sub_stats.big_pages. */
int mp_subpage_list(const mp_subpage *s, uint64_t *out_pages, uint64_t *out_masks,
                    uint64_t capacity, uint64_t *out_n);
/* The index of the first of `pages` (big page ids) that the allocator holds,
 * or n when it holds none of them. Reads only the allocator's own memory. */
int mp_subpage_find_held(const mp_subpage *s, const uint64_t *pages, uint64_t n,
                         uint64_t *out_index);

/* Reader snapshots (readers.c). The reader table is a separate file beside
 * the data file (FORMAT.md, "Reader table"). A writer attaches to it once,
 * after open; from then on it defers the reuse of freed pages that a live
 * reader's snapshot may still have allocated. */
int mp_readers_attach(mp_pager *p, const char *table_path, int64_t max_readers);
/* Pages freed, durable, and held back for live readers. */
int mp_readers_pinned(mp_pager *p, uint64_t *out_count);
/* Times the writer read the table to release pins (tests of its cache). */
int mp_readers_scans(const mp_pager *p, uint64_t *out_count);
/* A reader takes a slot (MP_EREADERS_FULL when none is free) and makes sure
 * its state is one the writer cannot reuse pages of. */
int mp_reader_register(mp_pager *p, const char *table_path, mp_open_report *report);
/* The reader's slot, or -1 when it holds none. */
int mp_reader_slot(const mp_pager *p, int64_t *out_slot);
/* Moves a reader to the newest commit; *out_changed says whether it moved.
 * Costs a comparison of pages 0-2 when nothing was committed. */
int mp_reader_refresh(mp_pager *p, mp_open_report *report, int *out_changed);
/* The live readers (dead slots are cleared on the way). */
int mp_readers_list(mp_pager *p, uint64_t *out_pids, uint64_t *out_gens, uint64_t *out_pages,
                    uint64_t *out_start_ns, uint64_t capacity, uint64_t *out_n);
/* A reader of the writer's latest commit on a new descriptor of the same
 * file (not opened again by name), registered in the table. */
int mp_pager_snapshot(mp_pager *p, const char *table_path, mp_pager **out,
                      mp_open_report *report);
/* For `info`: the live readers recorded in a table, looked at read-only (dead
 * slots are skipped, not cleared), the pages its writer last said it holds
 * back for them, and that writer's pid (0 when none is attached). */
int mp_readers_inspect(const char *table_path, uint64_t *out_pids, uint64_t *out_gens,
                       uint64_t *out_pages, uint64_t *out_start_ns, uint64_t capacity,
                       uint64_t *out_n, uint64_t *out_pinned, uint64_t *out_writer_pid);
/* The CRC a protected page's directory entry records for its content. */
int mp_protected_crc(const mp_pager *p, uint64_t pid, uint32_t *out_crc);

/* Giving space back (space.c). trim: one durable commit of the smaller page
 * count, then one ftruncate past the last page in use (never below a live
 * registered reader's page count); *out_pages = pages given back. */
int mp_pager_trim(mp_pager *p, uint64_t *out_pages);
/* Punches the disk blocks of every committed-free page no reader pins;
 * *out_bytes = bytes released (st_blocks), *out_unsupported = 1 when the file
 * system cannot punch holes (then nothing changed). */
int mp_pager_punch_free(mp_pager *p, uint64_t *out_bytes, int *out_unsupported);
/* Punch each page as its free is committed (0 = off, the default). */
int mp_pager_set_punch_on_free(mp_pager *p, int on);
/* Pages punched and not handed out since (tests). */
int mp_pager_punched(const mp_pager *p, uint64_t *out_count);
/* Online backup (backup.c): a copy of one commit (a writer's latest, a
 * reader's own) at dest, a new path (-EEXIST if it exists), written sparse
 * under a temporary name, synced and published without replacing anything.
 * A reader may pass the protected pages' current copies it took when it
 * loaded its commit (over_pages[i]: a page id, over_data: over_n pages of
 * bytes), used where they match the CRC the commit records: the writer may
 * have rewritten the file's copy since. progress (NULL, or two words the
 * caller polls from another thread for a progress bar): [0] bytes copied so
 * far, [1] bytes to copy once known. *out_bytes = the bytes written. */
int mp_pager_backup(mp_pager *p, const char *table_path, const char *dest,
                    const uint64_t *over_pages, const uint8_t *over_data, uint64_t over_n,
                    uint64_t *progress, uint64_t *out_bytes);

/* Record trees (tree.c, records.c; FORMAT.md, "Record trees"): a B+tree of record
 * pages, copy-on-write, whose root page id the caller keeps (a root slot). A record
 * is u16 klen, u32 vlen, key, value; a change record with vlen MP_RECORD_DELETE (no
 * value bytes) removes its key. A record is at most mp_tree_max_record(page_size)
 * bytes. */
#define MP_RECORD_DELETE 0xFFFFFFFF
#define MP_RECORD_LEAF 1
#define MP_RECORD_BRANCH 2
int mp_tree_max_record(uint32_t page_size, uint32_t *out_bytes);
/* Applies changes (len bytes of records, keys strictly ascending) to the tree at
 * root (0: empty) inside the open transaction: every page the changes reach is
 * replaced by new pages (allocated, written and marked dirty in the transaction;
 * the old pages freed, not reused before the commit is durable). *out_root = the
 * new root (0: empty), *out_delta = keys added less keys removed. Nothing changes
 * on an error: MP_EINVALID_ARGUMENT for changes out of order, malformed or too
 * large, or for a root that does not lead to record pages; MP_EFILE_FULL when the
 * new pages do not fit. */
int mp_tree_apply(mp_pager *p, uint64_t root, const uint8_t *changes, uint64_t len,
                  uint64_t *out_root, int64_t *out_delta);
/* The value of key in the tree at root: copied to buf when it fits in cap bytes;
 * *out_len = its length, *out_found = 0 when the key is absent. */
int mp_tree_get(const mp_pager *p, uint64_t root, const uint8_t *key, uint32_t klen,
                uint8_t *buf, uint32_t cap, uint32_t *out_len, int *out_found);
/* Bounds of mp_tree_scan, or-ed in flags. */
#define MP_SCAN_FROM 1  /* keys >= lo */
#define MP_SCAN_AFTER 2 /* keys > lo: going on after the last key of a batch */
#define MP_SCAN_TO 4    /* keys < hi */
/* The records of the tree at root within the bounds flags names, in key order,
 * copied whole (u16 klen, u32 vlen, key, value) into buf (cap bytes, at least
 * the page size) until the next would not fit: *out_used = the bytes written,
 * *out_more = 1 when records of the range follow the last one written (go on
 * with MP_SCAN_AFTER and its key). Every page read is copied and checked whole:
 * MP_EINVALID_ARGUMENT for a damaged tree (a page that is no record page, keys
 * out of order across pages, a page reached twice). */
int mp_tree_scan(const mp_pager *p, uint64_t root, const uint8_t *lo, uint32_t lo_len,
                 const uint8_t *hi, uint32_t hi_len, uint32_t flags, uint8_t *buf, uint64_t cap,
                 uint64_t *out_used, int *out_more);
/* Where each record of a batch of records (u16 klen, u32 vlen, key, value, as
 * mp_tree_scan writes them; len bytes at buf) lies: for record i, spans[3i] =
 * the offset of its key, spans[3i + 1] = of its value (the key's end),
 * spans[3i + 2] = of its end; *out_n = the records. MP_EINVALID_ARGUMENT for a
 * record that runs past len or is a delete, or for more than cap records. */
int mp_record_spans(const uint8_t *buf, uint64_t len, uint64_t *spans, uint64_t cap,
                    uint64_t *out_n);

/* CDEF-END */

#ifdef __cplusplus
}
#endif

#endif /* MAPPEDPAGES_H */
