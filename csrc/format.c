/*
 * format.c - the mappedpages byte layouts, in one place: v0.2 (the Rust
 * crate's) and the extended layout (minor version 3) a file moves to when it
 * outgrows v0.2's one-page bitmap, or is created in (the EXA mark: extended
 * at every page count, its root pages and index page 0 at pages 4-7).
 *
 * Owns: every offset and width of page 0 (superblock and directory index), the
 * metadata pages, the directory pages, and the extended layout's free-map and
 * directory-index pages; the CRC-32 they carry, and the validity rules a reader
 * applies to each. Nothing else in the core reads or writes those bytes by
 * offset (the metadata copies' tail, roots and commit record, is in
 * format_tail.c).
 *
 * Invariants: readers here never trust a length or count from the file before
 * bounding it by the page size or the file's length, so a hostile file cannot
 * make them read past a page or allocate absurd memory. Writers produce exactly
 * the bytes the crate would, padding zeroed, so files stay readable there.
 */
#include "mp_internal.h"

#include <string.h>

/* The CRC-32 of the format is in crc32.c. */

/* The little-endian loads and stores (mp_load_u64, ...) are inline in
 * mp_internal.h: the checksums call them once per word. */

/* The free map in memory is an array of 64-bit words, bit i of the map in
 * word i / 64 at bit i % 64. On a little-endian host the bytes of that array
 * are the format's bitmap bytes, in order, so a bitmap moves with memcpy and
 * 8 bytes at a time, not a byte and a shift at a time (a commit writes a
 * whole bitmap, and open reads every chunk's). Other hosts take the bytes
 * out one by one. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define MP_BITS_LE 1
#else
#define MP_BITS_LE 0
#endif

static uint8_t bits_byte(const uint64_t *bits, uint64_t i)
{
    return (uint8_t)(bits[i >> 3] >> (8 * (i & 7)));
}

/* n bytes of the map from byte `first` on. */
static void bits_get_bytes(uint8_t *dst, const uint64_t *bits, uint64_t first, uint64_t n)
{
    if (MP_BITS_LE) {
        memcpy(dst, (const uint8_t *)bits + first, (size_t)n);
        return;
    }
    for (uint64_t j = 0; j < n; j++)
        dst[j] = bits_byte(bits, first + j);
}

/* ORs n bytes into the map from byte `first` on. */
static void bits_or_bytes(uint64_t *bits, uint64_t first, const uint8_t *src, uint64_t n)
{
    uint64_t j = 0;
    if (MP_BITS_LE) {
        uint8_t *dst = (uint8_t *)bits + first;
        for (; j + 8 <= n; j += 8) {
            uint64_t a, b;
            memcpy(&a, dst + j, 8);
            memcpy(&b, src + j, 8);
            a |= b;
            memcpy(dst + j, &a, 8);
        }
    }
    for (; j < n; j++)
        bits[(first + j) >> 3] |= (uint64_t)src[j] << (8 * ((first + j) & 7));
}

/* Set bits in n bytes, 8 at a time. */
static uint64_t popcount_bytes(const uint8_t *b, uint64_t n)
{
    uint64_t set = 0, j = 0;
    for (; j + 8 <= n; j += 8) {
        uint64_t v;
        memcpy(&v, b + j, 8);
        set += (uint64_t)__builtin_popcountll(v);
    }
    for (; j < n; j++)
        set += (uint64_t)__builtin_popcount(b[j]);
    return set;
}

/* The bitmap of all pages must fit between the 24-byte header and the CRC. */
uint64_t fmt_v02_max_pages(uint32_t page_size)
{
    return (uint64_t)(page_size - MP_META_HEADER - 4u) * 8u;
}

uint64_t fmt_chunk_pages(uint32_t page_size)
{
    /* The metadata copy's bitmap is chunk 0, so a free-map page holds as many
     * bits as it: a v0.2 file is exactly chunk 0 of the extended layout. */
    return fmt_v02_max_pages(page_size);
}

uint64_t fmt_max_mapped_pages(uint32_t page_size)
{
    uint64_t chunk = fmt_chunk_pages(page_size);
    uint64_t max = MP_MAP_LIMIT / page_size;
    /* A cap inside a chunk's layout pages would leave the chunk without room. */
    if (max > chunk && max % chunk < MP_LAYOUT_PAGES)
        max -= max % chunk;
    return max;
}

int fmt_valid_page_size(uint32_t page_size)
{
    return page_size >= (1u << MP_MIN_LOG2) && page_size <= (1u << MP_MAX_LOG2) &&
           (page_size & (page_size - 1)) == 0;
}

int fmt_page_kind(uint64_t chunk_pages, uint64_t id)
{
    if (id < MP_RESERVED_PAGES)
        return (int)(MP_PAGE_SUPERBLOCK + id);
    if (id < chunk_pages || id % chunk_pages >= MP_LAYOUT_PAGES)
        return MP_PAGE_DATA;
    return (int)(MP_PAGE_FREE_MAP_A + id % chunk_pages);
}

/* ------------------------------------------------- the public layout API */

int mp_layout_get(uint32_t page_size, mp_layout *out)
{
    if (!out)
        return MP_EINVALID_ARGUMENT;
    if (!fmt_valid_page_size(page_size))
        return MP_EINVALID_PAGE_SIZE;
    mp_layout l;
    memset(&l, 0, sizeof l);
    l.page_size = page_size;
    l.reserved_pages = MP_RESERVED_PAGES;
    l.bits_per_map_page = fmt_chunk_pages(page_size);
    l.chunk_pages = fmt_chunk_pages(page_size);
    l.v02_max_pages = fmt_v02_max_pages(page_size);
    l.max_pages = fmt_max_mapped_pages(page_size);
    l.layout_pages_per_chunk = MP_LAYOUT_PAGES;
    l.dir_entries_per_page = fmt_entries_per_dir_page(page_size);
    l.dir_refs_per_index = fmt_max_dir_blocks(page_size);
    l.meta_header_bytes = MP_META_HEADER;
    l.chunk_header_bytes = MP_CHUNK_HEADER;
    l.dir_index_offset = MP_DIR_INDEX_OFFSET;
    l.dir_ref_bytes = MP_DIR_REF_SIZE;
    l.dir_entry_bytes = MP_DIR_ENTRY_SIZE;
    l.dir_page_header_bytes = MP_DIR_PAGE_HEADER;
    *out = l;
    return MP_OK;
}

int mp_layout_page_kind(uint32_t page_size, uint64_t id, int *out_kind)
{
    if (!out_kind)
        return MP_EINVALID_ARGUMENT;
    if (!fmt_valid_page_size(page_size))
        return MP_EINVALID_PAGE_SIZE;
    *out_kind = fmt_page_kind(fmt_chunk_pages(page_size), id);
    return MP_OK;
}

int mp_layout_chunk_page(uint32_t page_size, uint64_t chunk, int kind, uint64_t *out_id)
{
    if (!out_id)
        return MP_EINVALID_ARGUMENT;
    if (!fmt_valid_page_size(page_size))
        return MP_EINVALID_PAGE_SIZE;
    uint64_t c = fmt_chunk_pages(page_size);
    uint64_t max = fmt_max_mapped_pages(page_size);
    if (chunk < 1 || chunk > max / c || fmt_chunk_start(c, chunk) + MP_LAYOUT_PAGES > max)
        return MP_EOUT_OF_BOUNDS;
    if (kind < MP_PAGE_FREE_MAP_A || kind > MP_PAGE_INDEX_B)
        return MP_EINVALID_ARGUMENT;
    *out_id = fmt_chunk_start(c, chunk) + (uint64_t)(kind - MP_PAGE_FREE_MAP_A);
    return MP_OK;
}

int mp_layout_pages_below(uint32_t page_size, uint64_t total, uint64_t *out_n)
{
    if (!out_n)
        return MP_EINVALID_ARGUMENT;
    if (!fmt_valid_page_size(page_size))
        return MP_EINVALID_PAGE_SIZE;
    uint64_t c = fmt_chunk_pages(page_size);
    uint64_t n = total < MP_RESERVED_PAGES ? total : MP_RESERVED_PAGES;
    uint64_t chunks = fmt_chunks_below(c, total);
    n += MP_LAYOUT_PAGES * chunks;
    /* The last chunk may be cut inside its layout pages (any total). */
    if (chunks > 0 && total - fmt_chunk_start(c, chunks) < MP_LAYOUT_PAGES)
        n -= MP_LAYOUT_PAGES - (total - fmt_chunk_start(c, chunks));
    *out_n = n;
    return MP_OK;
}

uint32_t fmt_max_dir_blocks(uint32_t page_size)
{
    return (page_size - MP_DIR_INDEX_OFFSET - 4u - 4u) / MP_DIR_REF_SIZE;
}

uint32_t fmt_entries_per_dir_page(uint32_t page_size)
{
    return (page_size - MP_DIR_PAGE_HEADER - 4u) / MP_DIR_ENTRY_SIZE;
}

/* ---------------------------------------------------------------- page 0 */

int fmt_superblock_read(const uint8_t *page0, size_t len, mp_superblock *out)
{
    if (len < MP_SB_SIZE || memcmp(page0, "MPPG", 4) != 0)
        return MP_ECORRUPT_SUPERBLOCK;
    /* Major must be 0; a newer minor is a layout this reader does not know.
     * Patch and build bytes are informational, as in the crate. */
    if (page0[4] != 0 || page0[5] > MP_MINOR_EXTENDED)
        return MP_ECORRUPT_SUPERBLOCK;
    /* Minor 3 alone is not enough: the crate's own next minor might use it.
     * This library's extended layout also carries its mark in the padding. */
    int always = page0[5] == MP_MINOR_EXTENDED &&
                 memcmp(page0 + 13, MP_EXTENDED_ALWAYS_MARK, 3) == 0;
    if (page0[5] == MP_MINOR_EXTENDED && !always &&
        memcmp(page0 + 13, MP_EXTENDED_MARK, 3) != 0)
        return MP_ECORRUPT_SUPERBLOCK;
    uint32_t log2 = mp_load_u32(page0 + 8);
    if (log2 < MP_MIN_LOG2 || log2 > MP_MAX_LOG2)
        return MP_ECORRUPT_SUPERBLOCK;
    out->version_minor = page0[5];
    out->ext_always = (uint8_t)always;
    out->page_size_log2 = log2;
    out->selector = page0[12];
    out->meta_checksum = mp_load_u32(page0 + 16);
    return MP_OK;
}

/* meta_checksum is the CRC of a whole valid metadata page including its own
 * trailing CRC, which is always the CRC-32 residue: written as the format says,
 * never relied on to tell the copies apart. */
void fmt_superblock_write(uint8_t *page0, uint32_t log2, uint8_t minor, int always,
                          uint8_t selector)
{
    memcpy(page0, "MPPG", 4);
    page0[4] = 0;
    page0[5] = minor;
    page0[6] = 0;
    page0[7] = 0;
    mp_store_u32(page0 + 8, log2);
    page0[12] = selector;
    if (minor == MP_MINOR_EXTENDED)
        memcpy(page0 + 13, always ? MP_EXTENDED_ALWAYS_MARK : MP_EXTENDED_MARK, 3);
    else
        page0[13] = page0[14] = page0[15] = 0;
    mp_store_u32(page0 + 16, MP_CRC_RESIDUE);
}

/* Block references, 17 bytes each (page_a, page_b, active): page 0's
 * directory index and the extended layout's index pages share the record. */
static int refs_read(const uint8_t *at, uint32_t n, mp_dir_ref *refs)
{
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *r = at + (size_t)MP_DIR_REF_SIZE * i;
        refs[i].page_a = mp_load_u64(r);
        refs[i].page_b = mp_load_u64(r + 8);
        refs[i].active = r[16];
        if (refs[i].active > 1)
            return MP_ECORRUPT_DIRECTORY_INDEX;
    }
    return MP_OK;
}

static void refs_write(uint8_t *at, uint32_t n, const mp_dir_ref *refs)
{
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *r = at + (size_t)MP_DIR_REF_SIZE * i;
        mp_store_u64(r, refs[i].page_a);
        mp_store_u64(r + 8, refs[i].page_b);
        r[16] = refs[i].active;
    }
}

/* Parses a directory section [20, PS-4) whose CRC has been checked. */
static int parse_dir_section(const uint8_t *sec, uint32_t page_size, uint32_t *count,
                             mp_dir_ref *refs)
{
    uint32_t n = mp_load_u32(sec);
    if (n > fmt_max_dir_blocks(page_size))
        return MP_ECORRUPT_DIRECTORY_INDEX;
    int rc = refs_read(sec + 4, n, refs);
    if (rc == MP_OK)
        *count = n;
    return rc;
}

int fmt_dir_index_read(const uint8_t *page0, uint32_t page_size, uint32_t *count,
                       mp_dir_ref *refs)
{
    const uint8_t *sec = page0 + MP_DIR_INDEX_OFFSET;
    size_t len = page_size - MP_DIR_INDEX_OFFSET - 4;
    uint32_t stored = mp_load_u32(page0 + page_size - 4);
    if (mp_load_u32(sec) == 0) {
        /* The crate ignores the section (and its CRC) when it holds no block.
         * A section that still holds references behind a zero count and fails
         * its CRC is a damaged count, though: let recovery look at it. */
        if (sec[4] != 0 && mp_crc32(sec, len) != stored)
            return MP_ECORRUPT_DIRECTORY_INDEX;
        *count = 0;
        return MP_OK;
    }
    if (mp_crc32(sec, len) != stored)
        return MP_ECORRUPT_DIRECTORY_INDEX;
    return parse_dir_section(sec, page_size, count, refs);
}

/* Page 0 has no second copy, and a section rewritten in place can be caught
 * half done: by a power loss between two sectors, or by a kill between two OS
 * pages of a page larger than the OS page. A commit changes the section in
 * one of two ways, so those are the states to look for when the CRC fails:
 * one block's active byte flipped without (or before) its CRC, or an appended
 * block's reference or count written without the CRC. Each candidate is
 * accepted only if the stored CRC then matches, so damage of any other kind
 * still fails. Uses `work` (page_size bytes). */
int fmt_dir_index_recover(const uint8_t *page0, uint32_t page_size, uint32_t *count,
                          mp_dir_ref *refs, uint8_t *work, int *dropped)
{
    *dropped = 0;
    size_t len = page_size - MP_DIR_INDEX_OFFSET - 4;
    uint32_t stored = mp_load_u32(page0 + page_size - 4);
    uint32_t n = mp_load_u32(page0 + MP_DIR_INDEX_OFFSET);
    uint32_t max = fmt_max_dir_blocks(page_size);
    if (n > max)
        return MP_ECORRUPT_DIRECTORY_INDEX;
    memcpy(work, page0 + MP_DIR_INDEX_OFFSET, len);
    /* One block's flip; bounded so a hostile count costs little. */
    for (uint32_t i = 0; i < n && i < 64; i++) {
        uint8_t *active = work + 4 + (size_t)MP_DIR_REF_SIZE * i + 16;
        if (*active > 1)
            continue;
        *active ^= 1u;
        if (mp_crc32(work, len) == stored)
            return parse_dir_section(work, page_size, count, refs);
        *active ^= 1u;
    }
    /* An append: the count already raised, or only the new reference written. */
    for (uint32_t drop = 0; drop < 2; drop++) {
        uint32_t keep = drop ? n - 1 : n;
        if (drop && n == 0)
            break;
        if (keep >= max)
            continue;
        memcpy(work, page0 + MP_DIR_INDEX_OFFSET, len);
        mp_store_u32(work, keep);
        uint8_t *ref = work + 4 + (size_t)MP_DIR_REF_SIZE * keep;
        mp_dir_ref appended = {mp_load_u64(ref), mp_load_u64(ref + 8), ref[16]};
        memset(ref, 0, MP_DIR_REF_SIZE);
        if (mp_crc32(work, len) == stored) {
            int rc = parse_dir_section(work, page_size, count, refs);
            if (rc == MP_OK && drop) {
                refs[keep] = appended;
                *dropped = 1;
            }
            return rc;
        }
    }
    /* A damaged count: as many blocks as there are references. */
    uint32_t refs_present = 0;
    while (refs_present < max) {
        const uint8_t *r = page0 + MP_DIR_INDEX_OFFSET + 4 + (size_t)MP_DIR_REF_SIZE * refs_present;
        if (mp_load_u64(r) == 0 && mp_load_u64(r + 8) == 0)
            break;
        refs_present++;
    }
    if (refs_present != n) {
        memcpy(work, page0 + MP_DIR_INDEX_OFFSET, len);
        mp_store_u32(work, refs_present);
        if (mp_crc32(work, len) == stored)
            return parse_dir_section(work, page_size, count, refs);
    }
    return MP_ECORRUPT_DIRECTORY_INDEX;
}

void fmt_dir_index_write(uint8_t *page0, uint32_t page_size, uint32_t count,
                         const mp_dir_ref *refs)
{
    uint8_t *sec = page0 + MP_DIR_INDEX_OFFSET;
    memset(sec, 0, page_size - MP_DIR_INDEX_OFFSET);
    mp_store_u32(sec, count);
    refs_write(sec + 4, count, refs);
    mp_store_u32(page0 + page_size - 4,
                 mp_crc32(sec, page_size - MP_DIR_INDEX_OFFSET - 4));
}

/* --------------------------------------------------------- metadata pages */

void fmt_meta_check(const uint8_t *page, uint32_t page_size, uint64_t file_pages,
                    uint64_t max_total, int always, mp_meta_header *out)
{
    memset(out, 0, sizeof *out);
    out->total_pages = mp_load_u64(page);
    out->generation = mp_load_u64(page + 8);
    out->free_count = mp_load_u64(page + 16);
    if (mp_crc32(page, page_size - 4) != mp_load_u32(page + page_size - 4)) {
        out->problem = MP_META_BAD_CRC;
        return;
    }
    uint64_t total = out->total_pages;
    uint64_t chunk = fmt_chunk_pages(page_size);
    if (total < MP_RESERVED_PAGES || total > max_total || total > file_pages) {
        out->problem = MP_META_BAD_TOTAL;
        return;
    }
    /* Extended: every chunk the file reaches holds its layout pages. */
    if (total > chunk && total % chunk != 0 && total % chunk < MP_LAYOUT_PAGES) {
        out->problem = MP_META_BAD_TOTAL;
        return;
    }
    /* A file extended from creation is extended at every count, and keeps
     * its root pages at 4-5 from the start. */
    int extended = always || total > chunk;
    if (always && (total < MP_ALWAYS_PAGES ||
                   fmt_meta_roots_page(out->free_count) != MP_ALWAYS_ROOTS_PAGE)) {
        out->problem = MP_META_BAD_TOTAL;
        return;
    }
    if (total > chunk)
        total = chunk;
    const uint8_t *bm = page + MP_META_HEADER;
    if ((bm[0] & 7u) != 7u) {
        out->problem = MP_META_BAD_RESERVED;
        return;
    }
    uint64_t used_bytes = (total + 7) / 8;
    uint64_t limit = page_size - MP_META_HEADER - 4u;
    /* Bits past total_pages: in the last used byte, then every byte after it. */
    if ((total & 7u) && (bm[used_bytes - 1] >> (total & 7u)) != 0) {
        out->problem = MP_META_BITS_PAST_END;
        return;
    }
    /* With room for it, the tail holds the roots and the commit record
     * (fmt_meta_tail_*): only the bytes between the bitmap and the record
     * must be zero. */
    if (!extended && fmt_meta_has_tail(page_size, total)) {
        uint32_t n = mp_load_u32(page + page_size - 4u - MP_TAIL_FIXED);
        if (n > fmt_meta_record_room(page_size, total) ||
            mp_load_u32(page + page_size - 4u - MP_TAIL_FIXED + 4u) != 0) {
            out->problem = MP_META_BITS_PAST_END;
            return;
        }
        limit = page_size - 4u - MP_TAIL_FIXED - MP_REC_ENTRY * (uint64_t)n - MP_META_HEADER;
    }
    for (uint64_t i = used_bytes; i < limit; i++) {
        if (bm[i] != 0) {
            out->problem = MP_META_BITS_PAST_END;
            return;
        }
    }
    uint64_t set = popcount_bytes(bm, used_bytes);
    /* Extended: bytes 16-23 hold the commit's seal (a u32), which the caller
     * checks against the pages it covers, then where the root pages are (0:
     * none; else a pair of data pages of the file), not a free count. */
    uint64_t roots = fmt_meta_roots_page(out->free_count);
    if (extended ? roots != 0 && (roots + 1 >= out->total_pages ||
                                  fmt_is_layout_page(chunk, roots) ||
                                  fmt_is_layout_page(chunk, roots + 1))
                 : out->free_count != total - set) {
        out->problem = MP_META_BAD_FREE_COUNT;
        return;
    }
    out->problem = MP_META_OK;
}

/* total_pages here is the pages chunk 0 covers: min(total, chunk pages). */
void fmt_meta_load_bits(const uint8_t *page, uint64_t total_pages, uint64_t *bits)
{
    const uint8_t *bm = page + MP_META_HEADER;
    uint64_t nbytes = (total_pages + 7) / 8;
    for (uint64_t w = 0; w < bitmap_words(total_pages); w++) {
        uint64_t v = 0;
        for (uint64_t b = 0; b < 8; b++) {
            uint64_t i = w * 8 + b;
            if (i < nbytes)
                v |= (uint64_t)bm[i] << (8 * b);
        }
        bits[w] = v;
    }
}

void fmt_meta_write(uint8_t *page, uint32_t page_size, uint64_t total_pages,
                    uint64_t generation, uint64_t free_or_seal, const uint64_t *bits,
                    const mp_meta_tail *tail)
{
    mp_store_u64(page, total_pages);
    mp_store_u64(page + 8, generation);
    mp_store_u64(page + 16, free_or_seal);
    uint8_t *bm = page + MP_META_HEADER;
    uint64_t room = page_size - MP_META_HEADER - 4u;
    uint64_t nbytes = (total_pages + 7) / 8;
    if (nbytes > room)
        nbytes = room; /* extended: chunk 0 only */
    bits_get_bytes(bm, bits, 0, nbytes);
    /* Every byte is written once: the header, the bitmap, zeros to the CRC. */
    memset(bm + nbytes, 0, (size_t)(room - nbytes));
    if (tail)
        fmt_meta_tail_write(page, page_size, total_pages, tail);
    mp_store_u32(page + page_size - 4, mp_crc32(page, page_size - 4));
}

void fmt_meta_restamp(uint8_t *page, uint32_t page_size, int always, uint64_t generation)
{
    mp_store_u64(page + 8, generation);
    if (always || mp_load_u64(page) > fmt_chunk_pages(page_size))
        mp_store_u32(page + 16, 0); /* the seal: no page carries this generation */
    mp_store_u32(page + page_size - 4, mp_crc32(page, page_size - 4));
}

/* ------------------------------------------- extended layout: chunk pages
 *
 * Chunk i >= 1 covers pages [i*C, (i+1)*C) and keeps its own free-map page,
 * in two copies at its first two pages; the next two pages hold the two copies
 * of directory-index page i-1. Neither kind is named by anything: each copy
 * carries the generation of the commit that wrote it, and the state is the
 * valid copy with the highest generation not above the chosen metadata copy's.
 * A commit writes the inactive copy, so the copy the committed state uses is
 * never written in place, and a copy written by a commit that never reached
 * its commit point has a generation above the committed one and is ignored.
 *
 *   free-map page:  @0 u64 generation  @8 u32 chunk index  @12 u32 directory
 *                   blocks (chunk 1 only)  @16 u64 free pages in the chunk
 *                   @24 bitmap of the chunk's C pages  @PS-4 CRC
 *   index page k:   @0 u64 generation  @8 u32 k  @12 u32 count  @16 u64 zero
 *                   @24 + 17*j block reference k*R + j  @PS-4 CRC
 */

static uint64_t chunk_span(uint32_t page_size, uint64_t chunk, uint64_t total_pages)
{
    uint64_t c = fmt_chunk_pages(page_size);
    uint64_t start = chunk * c;
    if (total_pages <= start)
        return 0;
    return total_pages - start < c ? total_pages - start : c;
}

void fmt_chunk_check(const uint8_t *page, uint32_t page_size, uint64_t chunk,
                     uint64_t total_pages, uint64_t max_generation, mp_chunk_header *out)
{
    memset(out, 0, sizeof *out);
    if (mp_crc32(page, page_size - 4) != mp_load_u32(page + page_size - 4))
        return;
    out->generation = mp_load_u64(page);
    out->dir_blocks = mp_load_u32(page + 12);
    out->free_count = mp_load_u64(page + 16);
    uint64_t span = chunk_span(page_size, chunk, total_pages);
    if (mp_load_u32(page + 8) != (uint32_t)chunk || out->generation > max_generation ||
        span < MP_LAYOUT_PAGES)
        return;
    const uint8_t *bm = page + MP_CHUNK_HEADER;
    if ((bm[0] & 15u) != 15u)
        return;
    uint64_t bytes = page_size - MP_CHUNK_HEADER - 4u;
    uint64_t used = (span + 7) / 8;
    if ((span & 7u) && (bm[used - 1] >> (span & 7u)) != 0)
        return;
    for (uint64_t i = used; i < bytes; i++) {
        if (bm[i] != 0)
            return;
    }
    if (out->free_count != span - popcount_bytes(bm, used))
        return;
    out->valid = 1;
}

/* A chunk starts on a byte boundary of the map (C is a multiple of 32), not
 * always on a word boundary, so the bits move a byte at a time. Loading ORs
 * into a map whose range is clear (the previous chunk may share a word). */
void fmt_chunk_load_bits(const uint8_t *page, uint32_t page_size, uint64_t chunk,
                         uint64_t total_pages, uint64_t *bits)
{
    uint64_t first = chunk * fmt_chunk_pages(page_size);
    uint64_t span = chunk_span(page_size, chunk, total_pages);
    bits_or_bytes(bits, first / 8, page + MP_CHUNK_HEADER, (span + 7) / 8);
}

void fmt_chunk_write(uint8_t *page, uint32_t page_size, uint64_t chunk, uint64_t total_pages,
                     uint64_t generation, uint32_t dir_blocks, const uint64_t *bits)
{
    uint64_t first = chunk * fmt_chunk_pages(page_size);
    uint64_t span = chunk_span(page_size, chunk, total_pages);
    memset(page, 0, page_size);
    mp_store_u64(page, generation);
    mp_store_u32(page + 8, (uint32_t)chunk);
    mp_store_u32(page + 12, dir_blocks);
    uint8_t *bm = page + MP_CHUNK_HEADER;
    uint64_t nbytes = (span + 7) / 8;
    /* A chunk starts on a byte of the map (C is a multiple of 32). */
    bits_get_bytes(bm, bits, first / 8, nbytes);
    if (nbytes > 0 && (span & 7u))
        bm[nbytes - 1] &= (uint8_t)((1u << (span & 7u)) - 1u);
    mp_store_u64(page + 16, span - popcount_bytes(bm, nbytes));
    mp_store_u32(page + page_size - 4, mp_crc32(page, page_size - 4));
}

int fmt_index_read(const uint8_t *page, uint32_t page_size, uint64_t k,
                   uint64_t max_generation, uint64_t *generation, uint32_t *count,
                   mp_dir_ref *refs)
{
    if (mp_crc32(page, page_size - 4) != mp_load_u32(page + page_size - 4))
        return MP_ECORRUPT_DIRECTORY_INDEX;
    uint64_t gen = mp_load_u64(page);
    uint32_t n = mp_load_u32(page + 12);
    if (mp_load_u32(page + 8) != (uint32_t)k || gen > max_generation ||
        n > fmt_max_dir_blocks(page_size))
        return MP_ECORRUPT_DIRECTORY_INDEX;
    int rc = refs_read(page + MP_CHUNK_HEADER, n, refs);
    if (rc != MP_OK)
        return rc;
    *generation = gen;
    *count = n;
    return MP_OK;
}

void fmt_index_write(uint8_t *page, uint32_t page_size, uint64_t k, uint64_t generation,
                     uint32_t count, const mp_dir_ref *refs)
{
    memset(page, 0, page_size);
    mp_store_u64(page, generation);
    mp_store_u32(page + 8, (uint32_t)k);
    mp_store_u32(page + 12, count);
    refs_write(page + MP_CHUNK_HEADER, count, refs);
    mp_store_u32(page + page_size - 4, mp_crc32(page, page_size - 4));
}

uint32_t fmt_seal_add(uint32_t seal, const uint8_t *page, uint32_t page_size)
{
    return mp_crc32_update(seal, page + page_size - 4, 4);
}

int fmt_is_leftover(const uint8_t *page, uint32_t page_size, uint64_t max_generation)
{
    return mp_crc32(page, page_size - 4) == mp_load_u32(page + page_size - 4) &&
           mp_load_u64(page) > max_generation;
}

/* -------------------------------------------------------- directory pages */

int fmt_dir_page_read(const uint8_t *page, uint32_t page_size, mp_dir_entry *entries)
{
    if (mp_crc32(page, page_size - 4) != mp_load_u32(page + page_size - 4))
        return MP_ECORRUPT_PROTECTED_DIRECTORY;
    uint32_t epp = fmt_entries_per_dir_page(page_size);
    if (mp_load_u32(page) != epp)
        return MP_ECORRUPT_PROTECTED_DIRECTORY;
    for (uint32_t s = 0; s < epp; s++) {
        const uint8_t *e = page + MP_DIR_PAGE_HEADER + (size_t)MP_DIR_ENTRY_SIZE * s;
        entries[s].in_use = e[0] != 0;
        entries[s].page_a = mp_load_u64(e + 1);
        entries[s].page_b = mp_load_u64(e + 9);
        entries[s].active_slot = e[17] != 0;
        entries[s].generation = mp_load_u64(e + 18);
        entries[s].crc = mp_load_u32(e + 26);
    }
    return MP_OK;
}

void fmt_dir_page_write(uint8_t *page, uint32_t page_size, const mp_dir_entry *entries)
{
    uint32_t epp = fmt_entries_per_dir_page(page_size);
    memset(page, 0, page_size);
    mp_store_u32(page, epp);
    for (uint32_t s = 0; s < epp; s++) {
        uint8_t *e = page + MP_DIR_PAGE_HEADER + (size_t)MP_DIR_ENTRY_SIZE * s;
        e[0] = entries[s].in_use ? 1 : 0;
        mp_store_u64(e + 1, entries[s].page_a);
        mp_store_u64(e + 9, entries[s].page_b);
        e[17] = entries[s].active_slot ? 1 : 0;
        mp_store_u64(e + 18, entries[s].generation);
        mp_store_u32(e + 26, entries[s].crc);
    }
    mp_store_u32(page + page_size - 4, mp_crc32(page, page_size - 4));
}
