/*
 * bitmap.c - the free map in memory: one bit per page, set = allocated.
 *
 * Owns: searching the map, and the summary levels that keep a search from
 * scanning. The map is held as 64-bit words so a search picks the page inside
 * a word with one count-trailing-zeros; the summary (below) finds the next
 * word with a free page in a few reads however large the file, so alloc costs
 * the same in a file of 2^12 pages and of 2^32. The on-disk byte order is
 * format.c's business. Callers keep every bit at or past the map's length
 * clear.
 */
#include "mp_internal.h"

#include <string.h>

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

/* ------------------------------------------------------------- summary
 *
 * Level L (1-based) has a bit per word of level L-1 (level 0 being the map,
 * bits | mask), set exactly when that word is all ones. A search that meets a
 * full word asks the level above for the next word that is not full, so it
 * never reads a run of full words: the cost of a search is the depth, a few
 * word reads, however large the file. Bits past a level's length are clear
 * ("not full"), so a search may run into them: callers bound the result. */

static uint64_t sum_word(const mp_summary *s, const uint64_t *bits, const uint64_t *mask,
                         int level, uint64_t w)
{
    if (level == 0)
        return bits[w] | (mask ? mask[w] : 0);
    return s->lvl[level - 1][w];
}

static uint64_t level_bits(const mp_summary *s, int level)
{
    return level == 0 ? s->map_words * 64 : s->nbits[level - 1];
}

int summary_init(mp_summary *s, uint64_t map_bits)
{
    memset(s, 0, sizeof *s);
    s->map_words = bitmap_words(map_bits) + 1;
    uint64_t below = s->map_words;
    size_t total = 0;
    while (s->depth < MP_SUM_LEVELS) {
        s->nbits[s->depth] = below;
        total += (size_t)(bitmap_words(below) + 1) * sizeof(uint64_t);
        s->depth++;
        below = bitmap_words(below);
        if (below <= 1)
            break;
    }
    s->mem = os_alloc_zeroed(total);
    if (!s->mem)
        return MP_ENO_MEMORY;
    s->mem_len = total;
    uint64_t *at = s->mem;
    for (int l = 0; l < s->depth; l++) {
        s->lvl[l] = at;
        at += bitmap_words(s->nbits[l]) + 1;
    }
    return MP_OK;
}

void summary_release(mp_summary *s)
{
    if (s->mem)
        os_free_zeroed(s->mem, s->mem_len);
    memset(s, 0, sizeof *s);
}

void summary_update(mp_summary *s, uint64_t w, uint64_t v)
{
    int full = v == ~(uint64_t)0;
    for (int l = 0; l < s->depth; l++) {
        uint64_t *word = &s->lvl[l][w >> 6];
        uint64_t bit = (uint64_t)1 << (w & 63);
        uint64_t next = full ? (*word | bit) : (*word & ~bit);
        if (next == *word)
            return;
        *word = next;
        full = next == ~(uint64_t)0;
        w >>= 6;
    }
}

void summary_rebuild(mp_summary *s, const uint64_t *bits, const uint64_t *mask, uint64_t words)
{
    uint64_t n = words;
    for (int l = 0; l < s->depth; l++) {
        n = bitmap_words(n) + 1;
        if (n > bitmap_words(s->nbits[l]) + 1)
            n = bitmap_words(s->nbits[l]) + 1;
        memset(s->lvl[l], 0, (size_t)n * sizeof(uint64_t));
    }
    for (uint64_t w = 0; w < words; w++) {
        uint64_t v = bits[w] | (mask ? mask[w] : 0);
        if (v == ~(uint64_t)0)
            summary_update(s, w, v);
    }
}

/* Lowest bit at or after pos that is clear at this level, or UINT64_MAX. */
static uint64_t next_clear(const mp_summary *s, const uint64_t *bits, const uint64_t *mask,
                           int level, uint64_t pos)
{
    uint64_t nbits = level_bits(s, level);
    if (pos >= nbits)
        return UINT64_MAX;
    uint64_t nwords = bitmap_words(nbits);
    uint64_t w = pos >> 6;
    uint64_t word = ~sum_word(s, bits, mask, level, w) & (~(uint64_t)0 << (pos & 63));
    if (word)
        return (w << 6) + (uint64_t)__builtin_ctzll(word);
    uint64_t next;
    if (level == s->depth) {
        for (next = w + 1; next < nwords && sum_word(s, bits, mask, level, next) == ~(uint64_t)0;
             next++)
            ;
    } else {
        next = next_clear(s, bits, mask, level + 1, w + 1);
    }
    if (next >= nwords)
        return UINT64_MAX;
    word = ~sum_word(s, bits, mask, level, next);
    if (!word)
        return UINT64_MAX; /* the summary disagrees with the map: never expected */
    return (next << 6) + (uint64_t)__builtin_ctzll(word);
}

uint64_t summary_find_free(const mp_summary *s, const uint64_t *bits, const uint64_t *mask,
                           uint64_t start, uint64_t limit)
{
    if (start >= limit)
        return limit;
    uint64_t i = next_clear(s, bits, mask, 0, start);
    return i < limit ? i : limit;
}
