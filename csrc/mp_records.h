/*
 * mp_records.h - record pages (records.c), the nodes of a record tree (tree.c).
 *
 * A record page: u8 kind, u8 0, u16 n, u32 end (the bytes in use, header
 * included), then n records in strictly ascending key order (bytewise, a
 * prefix first), each u16 klen, u32 vlen, key, value; little-endian. A leaf
 * maps keys to values; a branch maps each child's lowest key to its page id
 * (vlen 8), its first record's key empty. FORMAT.md, "Record trees".
 */
#ifndef MP_RECORDS_H
#define MP_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#define REC_PAGE_HEADER 8u
#define REC_HEAD 6u /* u16 klen, u32 vlen */
#define REC_MAX_DEPTH 48u /* levels: deeper than any tree, so a cycle, not a tree */

/* One record, wherever its bytes are: a page copy, a list of changes. */
typedef struct {
    const uint8_t *at;
    uint32_t len;
} rec_ref;

/* Records in memory the core owns, each found by its offset. */
typedef struct {
    uint8_t *data;
    uint64_t len, cap;
    uint64_t *at; /* at[i] = offset of record i; at[n] = len */
    uint64_t n, at_cap;
} rec_list;

/* An array of *cap items of size bytes grown (doubling) to hold need: the array,
 * moved or not, or NULL (then it is unchanged) when memory is short. */
void *rec_grow(void *items, uint64_t *cap, uint64_t need, size_t size);
/* rec_grow for a byte buffer: a list's bytes, a batch's new pages, page copies. */
int rec_reserve(uint8_t **buf, uint64_t *cap, uint64_t need);

uint16_t rec_klen(const uint8_t *rec);
const uint8_t *rec_key(const uint8_t *rec);
int rec_key_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen);

/* Copy a caller's change records in, index them and check them: each whole,
 * at most max_record bytes, keys strictly ascending (vlen MP_RECORD_DELETE: a
 * delete). */
int rec_list_copy(rec_list *l, const uint8_t *data, uint64_t len, uint32_t max_record);
/* Append one record (value NULL with vlen MP_RECORD_DELETE: a delete). */
int rec_list_add(rec_list *l, const uint8_t *key, uint32_t klen, const uint8_t *value,
                 uint32_t vlen);
void rec_list_clear(rec_list *l);
void rec_list_free(rec_list *l);

/* Copy page id (0: an empty leaf) into buf and check it is a record page. */
int rec_page_load(const mp_pager *p, uint64_t id, uint8_t *buf, uint8_t *out_kind,
                  uint32_t *out_n);
/* A lookup's search of page id, in place (the root's id refused as rec_page_load
 * does): a leaf's record with key (*out_value, *out_vlen; NULL when absent), or
 * the child a branch sends key to (*out_child, checked as a node's id). */
int rec_page_search(const mp_pager *p, uint64_t id, const uint8_t *key, uint32_t klen,
                    uint8_t *out_kind, uint64_t *out_child, const uint8_t **out_value,
                    uint32_t *out_vlen);
/* The page's n records merged with changes lo..hi - 1 of chg, into merged (room
 * for n + hi - lo). */
void rec_merge(const uint8_t *page, uint32_t n, const rec_list *chg, uint64_t lo, uint64_t hi,
               rec_ref *merged, uint64_t *out_m, int *changed, int64_t *delta);

/* Where a batch's new pages go, and the separators of their parts. */
typedef struct {
    uint8_t *pages; /* page after page */
    uint64_t count, cap;
    rec_list seps;  /* per page: its first key (the key its parent will know) */
} rec_out;

/* Write merged records as pages of kind into out, as many as needed, each
 * aiming at target bytes; a branch's first record loses its key. */
int rec_write_parts(const mp_pager *p, const rec_ref *merged, uint64_t m, uint8_t kind,
                    uint32_t target, rec_out *out, uint32_t *out_parts);

#endif
