/*
 * format_tail.c - the bytes of the metadata tail: the roots and the commit
 * record a metadata copy keeps after its bitmap (the format, kept apart from
 * format.c for size; no other file reads these bytes by offset).
 *
 * Owns: the offsets of the tail, the room it leaves, and reading and writing
 * it. Invariants: a count read from the file is bounded by the room the
 * bitmap leaves before any entry is read; a tail is never written over the
 * bitmap.
 */
#include "mp_internal.h"

#include <string.h>

/* A v0.2 metadata copy whose bitmap leaves room keeps, before its CRC:
 *   [PS-68, PS-4)   the 8 roots, u64 each;
 *   [PS-76, PS-68)  the record count n (u32), then 4 zero bytes;
 *   below that      n commit-record entries of 16 bytes, entry i ending at
 *                   PS-76-16*i: first page (u64), page count (u32), and the
 *                   record sum of those pages' bytes as committed (u32,
 *                   fmt_record_sum).
 * The crate reads only the bitmap's bytes and the CRC over the whole page, so
 * it never sees these bytes. A copy whose bitmap reaches the tail (more than
 * (PS-100)*8 pages) has no roots (all 0) and no record. */
int fmt_meta_has_tail(uint32_t page_size, uint64_t total_pages)
{
    return total_pages <= fmt_chunk_pages(page_size) &&
           MP_META_HEADER + (total_pages + 7) / 8 + MP_TAIL_FIXED <= (uint64_t)page_size - 4u;
}

uint64_t fmt_meta_record_room(uint32_t page_size, uint64_t total_pages)
{
    if (!fmt_meta_has_tail(page_size, total_pages))
        return 0;
    uint64_t free_bytes = (uint64_t)page_size - 4u - MP_TAIL_FIXED - MP_META_HEADER -
                          (total_pages + 7) / 8;
    uint64_t n = free_bytes / MP_REC_ENTRY;
    return n < MP_MAX_RECORD ? n : MP_MAX_RECORD;
}

void fmt_meta_tail_read(const uint8_t *page, uint32_t page_size, uint64_t total_pages,
                        uint64_t *roots, mp_rec *recs, uint32_t *n)
{
    *n = 0;
    memset(roots, 0, sizeof(uint64_t) * MP_ROOTS);
    if (!fmt_meta_has_tail(page_size, total_pages))
        return;
    const uint8_t *t = page + page_size - 4u - MP_TAIL_FIXED;
    uint32_t count = mp_load_u32(t);
    if (count > fmt_meta_record_room(page_size, total_pages))
        count = 0; /* fmt_meta_check refuses such a copy */
    for (uint32_t r = 0; r < MP_ROOTS; r++)
        roots[r] = mp_load_u64(t + 8u + 8u * r);
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *e = t - MP_REC_ENTRY * (uint64_t)(i + 1);
        recs[i].first = mp_load_u64(e);
        recs[i].count = mp_load_u32(e + 8);
        recs[i].crc = mp_load_u32(e + 12);
    }
    *n = count;
}

void fmt_meta_tail_write(uint8_t *page, uint32_t page_size, uint64_t total_pages,
                         const mp_meta_tail *tail)
{
    if (!fmt_meta_has_tail(page_size, total_pages))
        return;
    uint8_t *t = page + page_size - 4u - MP_TAIL_FIXED;
    uint32_t n = tail->n;
    if (n > fmt_meta_record_room(page_size, total_pages))
        n = 0; /* the caller checked; never write past the bitmap */
    mp_store_u32(t, n);
    for (uint32_t r = 0; r < MP_ROOTS; r++)
        mp_store_u64(t + 8u + 8u * r, tail->roots[r]);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = t - MP_REC_ENTRY * (uint64_t)(i + 1);
        mp_store_u64(e, tail->recs[i].first);
        mp_store_u32(e + 8, tail->recs[i].count);
        mp_store_u32(e + 12, tail->recs[i].crc);
    }
}

/* ------------------------------------------- extended layout: root pages
 *
 * Past v0.2's cap the metadata copy's bitmap fills its page, so the roots and
 * the commit record move to a page pair of their own, the root pages, named
 * by the metadata copy (bytes 20-23: q, copies A and B at pages 4q and
 * 4q + 1; 0 = none). Each copy, like a free-map page, carries the generation
 * of the commit that wrote it; the state uses the valid copy with the highest
 * generation not above the metadata copy's, and a copy written by the commit
 * of that generation is part of its seal:
 *
 *   @0 u64 generation  @8 u32 record entries n  @12 u32 zero
 *   @16 the 8 roots, u64 each  @80 + 16*i record entry i (first page u64,
 *   page count u32, record sum of those pages u32)  @PS-4 CRC of [0, PS-4)
 *
 * The record of a copy counts only for the commit of its own generation. */
#define ROOTS_AT 16u
#define RECORD_AT (ROOTS_AT + 8u * MP_ROOTS)

uint32_t fmt_roots_page_room(uint32_t page_size)
{
    uint64_t n = ((uint64_t)page_size - RECORD_AT - 4u) / MP_REC_ENTRY;
    return n < MP_MAX_RECORD ? (uint32_t)n : MP_MAX_RECORD;
}

int fmt_roots_page_read(const uint8_t *page, uint32_t page_size, uint64_t max_generation,
                        uint64_t *generation, uint64_t *roots, mp_rec *recs, uint32_t *n)
{
    if (mp_crc32(page, page_size - 4u) != mp_load_u32(page + page_size - 4u))
        return MP_ECORRUPT_METADATA;
    uint64_t gen = mp_load_u64(page);
    uint32_t count = mp_load_u32(page + 8);
    if (gen > max_generation || count > fmt_roots_page_room(page_size) ||
        mp_load_u32(page + 12) != 0)
        return MP_ECORRUPT_METADATA;
    for (uint32_t r = 0; r < MP_ROOTS; r++)
        roots[r] = mp_load_u64(page + ROOTS_AT + 8u * r);
    for (uint32_t i = 0; recs && i < count; i++) {
        const uint8_t *e = page + RECORD_AT + (uint64_t)MP_REC_ENTRY * i;
        recs[i].first = mp_load_u64(e);
        recs[i].count = mp_load_u32(e + 8);
        recs[i].crc = mp_load_u32(e + 12);
    }
    *generation = gen;
    *n = count;
    return MP_OK;
}

void fmt_roots_page_write(uint8_t *page, uint32_t page_size, uint64_t generation,
                          const mp_meta_tail *tail)
{
    uint32_t n = tail->n <= fmt_roots_page_room(page_size) ? tail->n : 0;
    memset(page, 0, page_size);
    mp_store_u64(page, generation);
    mp_store_u32(page + 8, n);
    for (uint32_t r = 0; r < MP_ROOTS; r++)
        mp_store_u64(page + ROOTS_AT + 8u * r, tail->roots[r]);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *e = page + RECORD_AT + (uint64_t)MP_REC_ENTRY * i;
        mp_store_u64(e, tail->recs[i].first);
        mp_store_u32(e + 8, tail->recs[i].count);
        mp_store_u32(e + 12, tail->recs[i].crc);
    }
    mp_store_u32(page + page_size - 4u, mp_crc32(page, page_size - 4u));
}

/* The extended metadata copy's bytes 16-23: the seal (u32), then the root
 * pages' q (u32); fmt_meta_write stores them as one u64. */
uint64_t fmt_meta_ext_word(uint32_t seal, uint64_t roots_page)
{
    return (uint64_t)seal | ((roots_page / 4u) << 32);
}

uint64_t fmt_meta_roots_page(uint64_t ext_word)
{
    return (ext_word >> 32) * 4u;
}

/* The sum a commit record (the tail's or a root page's) keeps for a run of
 * pages. Not a CRC: a CRC is
 * affine over the bytes, so every page that ends with the CRC-32 of the rest
 * of it (a directory copy, and many user formats) has the same CRC-32, the
 * residue, and a CRC seeded or reordered still cannot tell two such pages
 * apart when the check sum factors through it; a lost write of one would go
 * unseen. A multiply-xor over 8-byte little-endian words is not affine:
 *   h = 0xcbf29ce484222325 ^ first;  for each word w: h = (h ^ w) * 0x100000001b3;
 *   sum = (uint32_t)(h ^ (h >> 32)).
 * len is a multiple of 8 (whole pages). */
/* Four lanes, word i of the run in lane i % 4, so that the multiplies of one
 * lane do not wait for the others' (a single chain runs at the latency of a
 * multiply per word: some 170 us for a hundred 4 KiB pages, against a
 * quarter of that); the lanes start apart, so words swapped between lanes
 * change the sum. */
uint32_t fmt_record_sum(const uint8_t *data, size_t len, uint64_t first)
{
    const uint64_t prime = 0x100000001b3ull, basis = 0xcbf29ce484222325ull ^ first;
    /* Four lanes in four locals: an array here was kept in memory, and each
     * step then waited on a store and a load besides its multiply. */
    uint64_t h0 = basis, h1 = basis ^ 1, h2 = basis ^ 2, h3 = basis ^ 3;
    size_t words = len / 8, i = 0;
    for (; i + 4 <= words; i += 4) {
        const uint8_t *w = data + 8 * i;
        h0 = (h0 ^ mp_load_u64(w)) * prime;
        h1 = (h1 ^ mp_load_u64(w + 8)) * prime;
        h2 = (h2 ^ mp_load_u64(w + 16)) * prime;
        h3 = (h3 ^ mp_load_u64(w + 24)) * prime;
    }
    uint64_t *tail[3] = {&h0, &h1, &h2}; /* at most three words are left */
    for (size_t j = 0; i < words; i++, j++)
        *tail[j] = (*tail[j] ^ mp_load_u64(data + 8 * i)) * prime;
    uint64_t s = h0;
    s = (s ^ h1) * prime;
    s = (s ^ h2) * prime;
    s = (s ^ h3) * prime;
    return (uint32_t)(s ^ (s >> 32));
}
