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
 *                   CRC-32 of those pages' bytes as committed (u32).
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
