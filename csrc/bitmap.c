/*
 * bitmap.c - the free map in memory: one bit per page, set = allocated.
 *
 * Owns: searching the map word by word. The map is held as 64-bit words so a
 * search skips 64 allocated pages per comparison and picks the page inside a
 * word with one count-trailing-zeros; the on-disk byte order is format.c's
 * business. Callers keep every bit at or past the map's length clear.
 */
#include "mp_internal.h"

uint64_t bitmap_find_free(const uint64_t *bits, uint64_t start, uint64_t limit)
{
    return bitmap_find_free_masked(bits, NULL, start, limit);
}

uint64_t bitmap_find_set(const uint64_t *bits, const uint64_t *mask, uint64_t start,
                         uint64_t limit)
{
    if (start >= limit)
        return limit;
    uint64_t w = start >> 6;
    uint64_t last = (limit - 1) >> 6;
    uint64_t word = bits[w] & (mask ? ~mask[w] : ~(uint64_t)0);
    word &= ~(uint64_t)0 << (start & 63);
    for (;;) {
        if (word) {
            uint64_t i = (w << 6) + (uint64_t)__builtin_ctzll(word);
            return i < limit ? i : limit;
        }
        if (w == last)
            return limit;
        w++;
        word = bits[w] & (mask ? ~mask[w] : ~(uint64_t)0);
    }
}

uint64_t bitmap_count_set(const uint64_t *bits, uint64_t limit)
{
    uint64_t n = 0;
    uint64_t full = limit >> 6;
    for (uint64_t w = 0; w < full; w++)
        n += (uint64_t)__builtin_popcountll(bits[w]);
    if (limit & 63)
        n += (uint64_t)__builtin_popcountll(bits[full] & (((uint64_t)1 << (limit & 63)) - 1));
    return n;
}

/* Lowest bit in [start, limit) clear in bits and in mask (NULL: no mask). */
uint64_t bitmap_find_free_masked(const uint64_t *bits, const uint64_t *mask, uint64_t start,
                                 uint64_t limit)
{
    if (start >= limit)
        return limit;
    uint64_t w = start >> 6;
    uint64_t last = (limit - 1) >> 6;
    /* Treat the bits below start as allocated so they are never chosen. */
    uint64_t word = ~(bits[w] | (mask ? mask[w] : 0)) & (~(uint64_t)0 << (start & 63));
    for (;;) {
        if (word) {
            uint64_t i = (w << 6) + (uint64_t)__builtin_ctzll(word);
            return i < limit ? i : limit;
        }
        if (w == last)
            return limit;
        w++;
        word = ~(bits[w] | (mask ? mask[w] : 0));
    }
}
