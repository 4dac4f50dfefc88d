/*
 * mp_format.h - the declarations of format.c and format_tail.c: the byte
 * layouts' constants, the placement of every page kind (inline, since the
 * allocator asks it per page), and the readers and writers of each kind of
 * page. Included by mp_internal.h; no other file reads page bytes by offset.
 */
#ifndef MP_FORMAT_H
#define MP_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "mappedpages.h"

/* ---- format.c: the v0.2 byte layout, the only file that knows offsets ---- */


#define MP_MIN_LOG2 10u
#define MP_MAX_LOG2 30u
#define MP_RESERVED_PAGES 3u
#define MP_INITIAL_PAGES 4u
#define MP_SB_SIZE 20u
#define MP_META_HEADER 24u
#define MP_DIR_INDEX_OFFSET 20u
#define MP_DIR_REF_SIZE 17u
#define MP_DIR_ENTRY_SIZE 30u
#define MP_DIR_PAGE_HEADER 8u
#define MP_CRC_RESIDUE 0x2144DF1Cu
/* The extended layout (minor version 3): see format.c and FORMAT.md. */
#define MP_MINOR_V02 2u
#define MP_MINOR_EXTENDED 3u
#define MP_EXTENDED_MARK "EXT"   /* superblock bytes 13-15 of the extended layout */
/* Bytes 13-15 of a file created in the extended layout: its state is extended
 * at every page count, chunk 0 alone included, and pages 4-7 hold its root
 * pages and directory-index page 0 (FORMAT.md, "Extended from creation"). */
#define MP_EXTENDED_ALWAYS_MARK "EXA"
#define MP_ALWAYS_ROOTS_PAGE 4u  /* root pages A/B: 4 and 5 (q = 1) */
#define MP_ALWAYS_INDEX_PAGE 6u  /* index page 0 A/B: 6 and 7 */
#define MP_ALWAYS_PAGES 8u       /* a new such file: 0-2, page 3 free, 4-7 */
#define MP_CHUNK_HEADER 24u      /* free-map and directory-index pages */
#define MP_LAYOUT_PAGES 4u       /* per chunk: free-map A/B, directory-index A/B */

typedef struct {
    uint8_t version_minor;
    uint8_t ext_always;      /* the EXA mark: extended at every page count */
    uint32_t page_size_log2;
    uint8_t selector;        /* as stored: may be out of range */
    uint32_t meta_checksum;
} mp_superblock;

typedef struct {
    uint64_t page_a;
    uint64_t page_b;
    uint8_t active;          /* 0 = page_a, 1 = page_b */
} mp_dir_ref;

typedef struct {
    uint8_t in_use;
    uint64_t page_a;
    uint64_t page_b;
    uint8_t active_slot;     /* 0 = page_a holds the readable copy */
    uint64_t generation;
    uint32_t crc;
} mp_dir_entry;

uint32_t mp_crc32(const uint8_t *data, size_t len);
/* Continues a CRC-32 (zlib's crc32(data, crc)). */
uint32_t mp_crc32_update(uint32_t crc, const uint8_t *data, size_t len);

#include "mp_bytes.h"

/* The most pages a v0.2 file of this page size can describe. */
uint64_t fmt_v02_max_pages(uint32_t page_size);
/* Pages each free-map page describes (a chunk); equal to the v0.2 cap. */
uint64_t fmt_chunk_pages(uint32_t page_size);
/* The most bytes of a file a pager maps (16 TiB), and so the most pages of
 * the extended layout at a page size: never a chunk cut inside its layout
 * pages. */
#define MP_MAP_LIMIT ((uint64_t)1 << 44)
uint64_t fmt_max_mapped_pages(uint32_t page_size);
/* A pager reserves address space for this many times the file's size, so a
 * move to a larger range (os.c) happens only when the file grows that much. */
#define MP_RESERVE_FACTOR 8u
int fmt_valid_page_size(uint32_t page_size);

/* Page placement of the extended layout (FORMAT.md). Chunk c >= 1 of
 * chunk_pages pages starts with its free-map page (copies A, B) and
 * directory-index page c - 1 (copies A, B). Inline: on the hot paths. */
static inline int fmt_is_layout_page(uint64_t chunk_pages, uint64_t id)
{
    return id < MP_RESERVED_PAGES || (id >= chunk_pages && id % chunk_pages < MP_LAYOUT_PAGES);
}
/* Copy `copy` (0 = A, 1 = B) of chunk c's free-map page. */
static inline uint64_t fmt_free_map_page(uint64_t chunk_pages, uint64_t c, uint32_t copy)
{
    return c * chunk_pages + copy;
}
/* Copy `copy` of directory-index page k: it lives in chunk k + 1, but for
 * index page 0 of a file extended from creation (`always`), at pages 6-7. */
static inline uint64_t fmt_index_page(uint64_t chunk_pages, int always, uint64_t k,
                                      uint32_t copy)
{
    if (always && k == 0)
        return MP_ALWAYS_INDEX_PAGE + copy;
    return (k + 1) * chunk_pages + 2u + copy;
}
/* The first page of chunk c. */
static inline uint64_t fmt_chunk_start(uint64_t chunk_pages, uint64_t c)
{
    return c * chunk_pages;
}
/* Chunks past chunk 0 that start below `total` pages. */
static inline uint64_t fmt_chunks_below(uint64_t chunk_pages, uint64_t total)
{
    return total > chunk_pages ? (total - 1) / chunk_pages : 0;
}
/* The last chunk holding a page below total (total >= 1). */
static inline uint64_t fmt_last_chunk(uint64_t chunk_pages, uint64_t total)
{
    return (total - 1) / chunk_pages;
}
/* A page count the layout accepts, at least t: never a chunk without its
 * layout pages (not capped). */
static inline uint64_t fmt_fit_total(uint64_t chunk_pages, uint64_t t)
{
    uint64_t rem = t % chunk_pages;
    if (t > chunk_pages && rem != 0 && rem < MP_LAYOUT_PAGES)
        t += MP_LAYOUT_PAGES - rem;
    return t;
}
/* The total pages a file needs for directory-index page k to exist. */
static inline uint64_t fmt_total_for_index(uint64_t chunk_pages, int always, uint64_t k)
{
    if (always && k == 0)
        return MP_ALWAYS_PAGES;
    return (k + 1) * chunk_pages + MP_LAYOUT_PAGES;
}
/* The mp_layout_page kind of id. */
int fmt_page_kind(uint64_t chunk_pages, uint64_t id);
uint32_t fmt_max_dir_blocks(uint32_t page_size);
uint32_t fmt_entries_per_dir_page(uint32_t page_size);

int fmt_superblock_read(const uint8_t *page0, size_t len, mp_superblock *out);
void fmt_superblock_write(uint8_t *page0, uint32_t log2, uint8_t minor, int always,
                          uint8_t selector);

/* Validates one metadata copy; fills total/generation/free and a problem code. */
typedef struct {
    uint64_t total_pages;
    uint64_t generation;
    uint64_t free_count;     /* extended layout: the commit's seal */
    uint32_t problem;        /* mp_meta_problem */
} mp_meta_header;
/* max_total: the most pages the layout named by the superblock allows;
 * always: the file is extended from creation. In the extended layout bytes
 * 16-23 hold the seal, checked by the caller against the pages it covers. */
void fmt_meta_check(const uint8_t *page, uint32_t page_size, uint64_t file_pages,
                    uint64_t max_total, int always, mp_meta_header *out);
void fmt_meta_load_bits(const uint8_t *page, uint64_t total_pages, uint64_t *bits);

/* The metadata tail (v0.2 bitmap with room): roots and the commit record of
 * a transaction's data pages; see format.c. */
#define MP_ROOTS 8u
#define MP_TAIL_FIXED 72u        /* record header (8) + roots (64) */
#define MP_REC_ENTRY 16u
#define MP_MAX_RECORD 256u       /* the most runs one commit records */
typedef struct {
    uint64_t first;
    uint32_t count;
    uint32_t crc;
} mp_rec;
typedef struct {
    const uint64_t *roots;   /* MP_ROOTS values */
    const mp_rec *recs;
    uint32_t n;
} mp_meta_tail;
int fmt_meta_has_tail(uint32_t page_size, uint64_t total_pages);
/* Record entries that fit beside a bitmap of total_pages (0 without a tail). */
uint64_t fmt_meta_record_room(uint32_t page_size, uint64_t total_pages);
void fmt_meta_tail_read(const uint8_t *page, uint32_t page_size, uint64_t total_pages,
                        uint64_t *roots, mp_rec *recs, uint32_t *n);
void fmt_meta_tail_write(uint8_t *page, uint32_t page_size, uint64_t total_pages,
                         const mp_meta_tail *tail);
/* The extended layout's root pages (format_tail.c): the roots and the commit
 * record past v0.2's cap, in a pair of pages the metadata copy names. */
#define MP_ROOT_PAGES 2u         /* copies A and B, at pages 4q and 4q + 1 */
uint32_t fmt_roots_page_room(uint32_t page_size);
/* A valid copy (CRC, generation not above max_generation, count in room):
 * MP_OK with its generation, roots, record (recs may be NULL) and count. */
int fmt_roots_page_read(const uint8_t *page, uint32_t page_size, uint64_t max_generation,
                        uint64_t *generation, uint64_t *roots, mp_rec *recs, uint32_t *n);
void fmt_roots_page_write(uint8_t *page, uint32_t page_size, uint64_t generation,
                          const mp_meta_tail *tail);
/* The sum a commit record keeps for the run of pages at `first`. */
uint32_t fmt_record_sum(const uint8_t *data, size_t len, uint64_t first);
/* Bytes 16-23 of an extended metadata copy: the seal, then where the root
 * pages are (roots_page: copy A's page id, a multiple of 4, or 0). */
uint64_t fmt_meta_ext_word(uint32_t seal, uint64_t roots_page);
uint64_t fmt_meta_roots_page(uint64_t ext_word);
/* A metadata copy as it is, at another generation (extended: sealing no page). */
void fmt_meta_restamp(uint8_t *page, uint32_t page_size, int always, uint64_t generation);
/* free_or_seal: free_count in v0.2; in the extended layout the seal of the
 * commit (see fmt_seal_add). */
void fmt_meta_write(uint8_t *page, uint32_t page_size, uint64_t total_pages,
                    uint64_t generation, uint64_t free_or_seal, const uint64_t *bits,
                    const mp_meta_tail *tail);
/* The seal of an extended-layout commit: the CRC-32 of the stored CRCs of the
 * page copies it wrote (free-map pages by chunk, then index pages by number),
 * each as 4 little-endian bytes. Returns seal extended by one page copy. */
uint32_t fmt_seal_add(uint32_t seal, const uint8_t *page, uint32_t page_size);

/* Free-map page of chunk i >= 1 (extended layout). */
typedef struct {
    uint64_t generation;
    uint32_t dir_blocks;     /* chunk 1 only */
    uint64_t free_count;
    int valid;
} mp_chunk_header;
void fmt_chunk_check(const uint8_t *page, uint32_t page_size, uint64_t chunk,
                     uint64_t total_pages, uint64_t max_generation, mp_chunk_header *out);
void fmt_chunk_load_bits(const uint8_t *page, uint32_t page_size, uint64_t chunk,
                         uint64_t total_pages, uint64_t *bits);
void fmt_chunk_write(uint8_t *page, uint32_t page_size, uint64_t chunk, uint64_t total_pages,
                     uint64_t generation, uint32_t dir_blocks, const uint64_t *bits);
/* Directory-index page k (extended layout): count references of blocks k*R.. */
int fmt_index_read(const uint8_t *page, uint32_t page_size, uint64_t k,
                   uint64_t max_generation, uint64_t *generation, uint32_t *count,
                   mp_dir_ref *refs);
void fmt_index_write(uint8_t *page, uint32_t page_size, uint64_t k, uint64_t generation,
                     uint32_t count, const mp_dir_ref *refs);
/* A page with a valid CRC and a generation newer than the committed state:
 * written by a commit that never reached its commit point. */
int fmt_is_leftover(const uint8_t *page, uint32_t page_size, uint64_t max_generation);

int fmt_dir_index_read(const uint8_t *page0, uint32_t page_size, uint32_t *count,
                       mp_dir_ref *refs);
/* Returns MP_OK when the stored CRC matches a single-block flip (*dropped
 * set to 0) or an interrupted append (*dropped 1: refs[*count] holds the
 * reference of the block that was being appended). */
int fmt_dir_index_recover(const uint8_t *page0, uint32_t page_size, uint32_t *count,
                          mp_dir_ref *refs, uint8_t *work, int *dropped);
void fmt_dir_index_write(uint8_t *page0, uint32_t page_size, uint32_t count,
                         const mp_dir_ref *refs);
int fmt_dir_page_read(const uint8_t *page, uint32_t page_size, mp_dir_entry *entries);
void fmt_dir_page_write(uint8_t *page, uint32_t page_size, const mp_dir_entry *entries);

#endif /* MP_FORMAT_H */
