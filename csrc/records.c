/*
 * records.c - record pages: the sorted pages a record tree keeps its entries in.
 *
 * Owns: the page format of mp_records.h (FORMAT.md, "Record trees"), read and
 * written: copying a page out of the mapping and checking it, merging its
 * records with a list of changes, and writing the result as one page or, where
 * it outgrows one, as several parts (tree.c applies these level by level); a
 * lookup's search of one page, in place; and where each record of a scan's
 * batch lies (mp_record_spans), for the caller to cut it up.
 *
 * Invariants:
 *   - Nothing here changes the pager: a page is read, never written.
 *   - The core never trusts memory the caller can change: change records are
 *     copied in before they are parsed, and a page is copied out of the
 *     mapping first (another thread may write it through a view meanwhile);
 *     every length is checked against what holds it before it is used, so a
 *     page of any content parses or is refused, never read past.
 *   - A lookup (rec_page_search) reads the page in place instead, the records
 *     up to the one it wants: each header is read once (volatile) into a
 *     local and checked against the page before it is used, so bytes changed
 *     meanwhile through a view give a wrong answer at worst, never a read
 *     past the page.
 *   - mp_record_spans reads a batch in the caller's memory the same way: each
 *     head once, checked against the batch before an offset is made of it.
 */
#include "mp_internal.h"
#include "mp_bytes.h"
#include "mp_records.h"

#include <stdlib.h>
#include <string.h>

static uint16_t load_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

uint16_t rec_klen(const uint8_t *rec)
{
    return load_u16(rec);
}

const uint8_t *rec_key(const uint8_t *rec)
{
    return rec + REC_HEAD;
}

/* The byte order of keys: memcmp, and on a common prefix the shorter first.
 * Keys in a page mostly differ in their first bytes, and a search compares a
 * key with each record before its own: the first 8 bytes are compared as one
 * big-endian number (a page's sorted keys often share their first byte or
 * two), and memcmp (a call) is left the rest of a long common prefix. */
int rec_key_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen)
{
    uint32_t n = alen < blen ? alen : blen, i = 0;
    if (n >= 8) {
        uint64_t x = mp_load_be64(a), y = mp_load_be64(b);
        if (x != y)
            return x < y ? -1 : 1;
        i = 8;
    }
    for (; i < n && i < 8; i++) {
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    }
    int c = i < n ? memcmp(a + i, b + i, n - i) : 0;
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static int rec_cmp(const uint8_t *a, const uint8_t *b)
{
    return rec_key_cmp(rec_key(a), rec_klen(a), rec_key(b), rec_klen(b));
}

void *rec_grow(void *items, uint64_t *cap, uint64_t need, size_t size)
{
    if (items && need <= *cap)
        return items; /* (an empty array is allocated too: NULL means short of memory) */
    uint64_t grown = *cap ? *cap : 16;
    while (grown < need)
        grown *= 2;
    if (grown > SIZE_MAX / size)
        return NULL;
    void *next = realloc(items, (size_t)grown * size);
    if (next)
        *cap = grown;
    return next;
}

int rec_reserve(uint8_t **buf, uint64_t *cap, uint64_t need)
{
    uint8_t *grown = rec_grow(*buf, cap, need, 1);
    if (!grown)
        return MP_ENO_MEMORY;
    *buf = grown;
    return MP_OK;
}

/* The length of the record at rec (at most room bytes there), or 0 when it
 * does not fit; a change may be a delete (no value bytes), a page's may not. */
static uint64_t record_len(const uint8_t *rec, uint64_t room, int change)
{
    if (room < REC_HEAD)
        return 0;
    uint64_t klen = load_u16(rec), vlen = mp_load_u32(rec + 2);
    if (vlen == MP_RECORD_DELETE) {
        if (!change)
            return 0;
        vlen = 0;
    }
    uint64_t len = REC_HEAD + klen + vlen;
    return len <= room ? len : 0;
}

static int list_room(rec_list *l, uint64_t more_bytes)
{
    uint64_t *at = rec_grow(l->at, &l->at_cap, l->n + 2, sizeof *l->at);
    if (!at)
        return MP_ENO_MEMORY;
    l->at = at;
    return rec_reserve(&l->data, &l->cap, l->len + more_bytes);
}

int rec_list_add(rec_list *l, const uint8_t *key, uint32_t klen, const uint8_t *value,
                 uint32_t vlen)
{
    uint64_t vbytes = value ? vlen : 0;
    int rc = list_room(l, REC_HEAD + klen + vbytes);
    if (rc != MP_OK)
        return rc;
    uint8_t *at = l->data + l->len;
    at[0] = (uint8_t)klen, at[1] = (uint8_t)(klen >> 8);
    mp_store_u32(at + 2, value ? vlen : MP_RECORD_DELETE);
    if (klen)
        memcpy(at + REC_HEAD, key, klen);
    if (vbytes)
        memcpy(at + REC_HEAD + klen, value, vbytes);
    l->at[l->n++] = l->len;
    l->len += REC_HEAD + klen + vbytes;
    l->at[l->n] = l->len;
    return MP_OK;
}

int rec_list_copy(rec_list *l, const uint8_t *data, uint64_t len, uint32_t max_record)
{
    rec_list_clear(l);
    int rc = rec_reserve(&l->data, &l->cap, len);
    if (rc != MP_OK)
        return rc;
    if (len)
        memcpy(l->data, data, len); /* one read: the caller may change its copy */
    for (uint64_t at = 0; at < len;) {
        uint64_t rlen = record_len(l->data + at, len - at, 1);
        if (rlen == 0 || rlen > max_record)
            return MP_EINVALID_ARGUMENT;
        if (l->n && rec_cmp(l->data + l->at[l->n - 1], l->data + at) >= 0)
            return MP_EINVALID_ARGUMENT; /* keys must strictly ascend */
        if ((rc = list_room(l, 0)) != MP_OK)
            return rc;
        l->at[l->n++] = at;
        at += rlen;
    }
    l->len = len;
    if ((rc = list_room(l, 0)) != MP_OK)
        return rc;
    l->at[l->n] = len;
    return MP_OK;
}

void rec_list_clear(rec_list *l)
{
    l->len = l->n = 0;
}

void rec_list_free(rec_list *l)
{
    free(l->data);
    free(l->at);
    memset(l, 0, sizeof *l);
}

/* A branch record's value: 8 bytes naming a page a node may be (tree.c marks
 * pages it has not allocated yet with bit 63: no page of a file has it). */
static int node_id_ok(const mp_pager *p, uint64_t id);

static int child_ok(const mp_pager *p, const uint8_t *rec)
{
    return mp_load_u32(rec + 2) == 8 && node_id_ok(p, mp_load_u64(rec + REC_HEAD + rec_klen(rec)));
}

int rec_page_load(const mp_pager *p, uint64_t id, uint8_t *buf, uint8_t *out_kind,
                  uint32_t *out_n)
{
    uint32_t ps = p->page_size;
    if (id == 0) { /* an empty tree: an empty leaf */
        *out_kind = MP_RECORD_LEAF;
        *out_n = 0;
        return MP_OK;
    }
    int rc = pager_check_page_id(p, id);
    if (rc != MP_OK)
        return rc;
    memcpy(buf, pager_page_ptr(p, id), ps);
    uint32_t n = load_u16(buf + 2), end = mp_load_u32(buf + 4), at = REC_PAGE_HEADER;
    uint8_t kind = buf[0];
    if ((kind != MP_RECORD_LEAF && kind != MP_RECORD_BRANCH) || buf[1] != 0 ||
        end < REC_PAGE_HEADER || end > ps)
        return MP_EINVALID_ARGUMENT;
    const uint8_t *prev = NULL;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t rlen = record_len(buf + at, end - at, 0);
        if (rlen == 0 || (kind == MP_RECORD_BRANCH && !child_ok(p, buf + at)))
            return MP_EINVALID_ARGUMENT;
        if (prev && rec_cmp(prev, buf + at) >= 0)
            return MP_EINVALID_ARGUMENT; /* keys must strictly ascend */
        prev = buf + at;
        at += (uint32_t)rlen;
    }
    if (at != end || (kind == MP_RECORD_BRANCH && n == 0))
        return MP_EINVALID_ARGUMENT;
    *out_kind = kind;
    *out_n = n;
    return MP_OK;
}

void rec_merge(const uint8_t *page, uint32_t n, const rec_list *chg, uint64_t lo, uint64_t hi,
               rec_ref *merged, uint64_t *out_m, int *changed, int64_t *delta)
{
    const uint8_t *rec = page + REC_PAGE_HEADER;
    uint64_t m = 0;
    uint32_t i = 0;
    while (i < n || lo < hi) {
        uint32_t rlen = i < n ? (uint32_t)record_len(rec, UINT32_MAX, 0) : 0;
        const uint8_t *c = lo < hi ? chg->data + chg->at[lo] : NULL;
        int order = i == n ? 1 : !c ? -1 : rec_cmp(rec, c);
        if (order < 0) { /* a record no change touches */
            merged[m++] = (rec_ref){rec, rlen};
            rec += rlen, i++;
            continue;
        }
        int put = mp_load_u32(c + 2) != MP_RECORD_DELETE;
        if (put)
            merged[m++] = (rec_ref){c, (uint32_t)(chg->at[lo + 1] - chg->at[lo])};
        if (order == 0) { /* replaced or deleted */
            *changed = 1;
            *delta -= !put;
            rec += rlen, i++;
        } else if (put) { /* added; the delete of an absent key changes nothing */
            *changed = 1;
            *delta += 1;
        }
        lo++;
    }
    *out_m = m;
}

/* One part: records merged[*k ..] while the part holds less than body /
 * parts bytes (the last part: all that are left), as a page of kind at out's
 * next slot, its first key kept in out->seps. */
static int write_part(const mp_pager *p, const rec_ref *merged, uint64_t m, uint64_t *k,
                      uint8_t kind, uint64_t body, uint64_t parts, int last, rec_out *out)
{
    uint64_t ps = p->page_size;
    int rc = rec_reserve(&out->pages, &out->cap, (out->count + 1) * ps);
    if (rc != MP_OK)
        return rc;
    const uint8_t *first = merged[*k].at;
    if ((rc = rec_list_add(&out->seps, rec_key(first), rec_klen(first), NULL, 0)) != MP_OK)
        return rc;
    uint8_t *pg = out->pages + out->count * ps;
    uint64_t at = REC_PAGE_HEADER, count = 0, acc = 0;
    /* (n is a u16: a page of many tiny records ends at UINT16_MAX of them) */
    /* Records that lie one after the other where they come from (most of a
     * page the changes left alone) are copied as one span. */
    const uint8_t *span = NULL;
    uint64_t span_at = 0, span_len = 0;
    while (*k < m && count < UINT16_MAX && (last || acc * parts < body)) {
        const uint8_t *rec = merged[*k].at;
        uint32_t len = merged[*k].len, skip = 0;
        if (count == 0 && kind == MP_RECORD_BRANCH)
            skip = rec_klen(rec); /* a branch's first child goes without a key */
        if (at + len - skip > ps)
            return MP_EINVALID_ARGUMENT; /* records too large for the page */
        if (skip) {
            memcpy(pg + at, rec, REC_HEAD);
            pg[at] = pg[at + 1] = 0;
            memcpy(pg + at + REC_HEAD, rec + REC_HEAD + skip, len - REC_HEAD - skip);
        } else if (span && span + span_len == rec) {
            span_len += len;
        } else {
            if (span_len)
                memcpy(pg + span_at, span, (size_t)span_len);
            span = rec, span_at = at, span_len = len;
        }
        at += len - skip, acc += len, count++, (*k)++;
    }
    if (span_len)
        memcpy(pg + span_at, span, (size_t)span_len);
    pg[0] = kind, pg[1] = 0;
    pg[2] = (uint8_t)count, pg[3] = (uint8_t)(count >> 8);
    mp_store_u32(pg + 4, (uint32_t)at);
    memset(pg + at, 0, ps - at);
    out->count++;
    return MP_OK;
}

int rec_write_parts(const mp_pager *p, const rec_ref *merged, uint64_t m, uint8_t kind,
                    uint32_t target, rec_out *out, uint32_t *out_parts)
{
    uint64_t body = 0;
    for (uint64_t k = 0; k < m; k++)
        body += merged[k].len;
    /* One part when it fits a page; else ceil(body / target) parts, each
     * ending once it holds body / parts bytes (the parts before the last may
     * take every record: then there are fewer; a part full of UINT16_MAX
     * records ends there: then there are more). */
    uint64_t parts = body == 0 ? 0
                   : REC_PAGE_HEADER + body <= p->page_size ? 1
                                                             : (body + target - 1) / target;
    uint64_t k = 0, made = 0;
    for (; k < m; made++) {
        int rc = write_part(p, merged, m, &k, kind, body, parts, made + 1 >= parts, out);
        if (rc != MP_OK)
            return rc;
    }
    *out_parts = (uint32_t)made;
    return MP_OK;
}

/* n bytes of the mapping read once each: the checks then hold for the copy. */
static void read_once(uint8_t *dst, const uint8_t *src, size_t n)
{
    const volatile uint8_t *from = src;
    for (size_t i = 0; i < n; i++)
        dst[i] = from[i];
}

/* A record's head read once, each byte into a register: read_once's byte
 * stores, loaded back as wider words, would stall each step of a search on
 * store forwarding. */
static void read_head_once(const uint8_t *src, uint32_t *klen, uint32_t *vlen)
{
    const volatile uint8_t *h = src;
    uint32_t k0 = h[0], k1 = h[1], v0 = h[2], v1 = h[3], v2 = h[4], v3 = h[5];
    *klen = k0 | k1 << 8;
    *vlen = v0 | v1 << 8 | v2 << 16 | v3 << 24;
}

/* record_len for memory that may change meanwhile (a page in the mapping, a
 * caller's batch): the head read once, its lengths given back, and the length
 * checked against room from those; 0 when it does not fit or is a delete. */
static uint64_t record_len_once(const uint8_t *rec, uint64_t room, uint32_t *klen,
                                uint32_t *vlen)
{
    if (room < REC_HEAD)
        return 0;
    read_head_once(rec, klen, vlen);
    uint64_t len = (uint64_t)REC_HEAD + *klen + *vlen;
    return *vlen != MP_RECORD_DELETE && len <= room ? len : 0;
}

/* A batch's records in the caller's memory, which may change meanwhile: each
 * head is read once and checked against len before the next offset is made
 * of it, so a changed batch gives wrong spans at worst, each within len. */
int mp_record_spans(const uint8_t *buf, uint64_t len, uint64_t *spans, uint64_t cap,
                    uint64_t *out_n)
{
    if ((!buf && len) || (!spans && cap) || !out_n)
        return MP_EINVALID_ARGUMENT;
    *out_n = 0;
    uint64_t at = 0, n = 0;
    while (at < len) {
        uint32_t rk, rv;
        uint64_t rlen = n < cap ? record_len_once(buf + at, len - at, &rk, &rv) : 0;
        if (rlen == 0)
            return MP_EINVALID_ARGUMENT;
        spans[3 * n] = at + REC_HEAD;
        spans[3 * n + 1] = at + REC_HEAD + rk;
        at += rlen;
        spans[3 * n + 2] = at;
        n++;
    }
    *out_n = n;
    return MP_OK;
}

/* Whether id may be a node: a page a caller may hold. */
static int node_id_ok(const mp_pager *p, uint64_t id)
{
    return pager_check_page_id(p, id) == MP_OK;
}

/* The search key against a record's key, the search key's first 8 bytes
 * loaded once as a big-endian number (prefix, when klen >= 8): most records
 * differ from it there, and one compare of two registers decides; the rest
 * is rec_key_cmp's. */
static inline int search_cmp(const uint8_t *rkey, uint32_t rk, const uint8_t *key, uint32_t klen,
                             uint64_t prefix)
{
    if (rk >= 8 && klen >= 8) {
        uint64_t x = mp_load_be64(rkey);
        if (x != prefix)
            return x < prefix ? -1 : 1;
    }
    return rec_key_cmp(rkey, rk, key, klen);
}

/* Where the record a search stops at lies: its offset (0: none), key and
 * value lengths. */
typedef struct {
    uint32_t at, klen, vlen;
} search_hit;

/* The records of a page from its header to end, walked in order: in a branch
 * the last whose key is at most the search key (the first counts whatever its
 * key: it routes keys below every other), in a leaf the one equal to it. */
static int search_records(const uint8_t *page, uint8_t kind, uint32_t n, uint32_t end,
                          const uint8_t *key, uint32_t klen, search_hit *hit)
{
    int branch = kind == MP_RECORD_BRANCH;
    uint64_t prefix = klen >= 8 ? mp_load_be64(key) : 0;
    uint32_t at = REC_PAGE_HEADER;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t rk, rv;
        uint64_t rlen = record_len_once(page + at, end - at, &rk, &rv);
        if (rlen == 0 || (branch && rv != 8))
            return MP_EINVALID_ARGUMENT;
        int c = search_cmp(page + at + REC_HEAD, rk, key, klen, prefix);
        if (c > 0 && !(branch && i == 0))
            break;
        if (branch || c == 0)
            *hit = (search_hit){at, rk, rv};
        if (c >= 0)
            break;
        at += (uint32_t)rlen; /* within end */
    }
    return MP_OK;
}

int rec_page_search(const mp_pager *p, uint64_t id, const uint8_t *key, uint32_t klen,
                    uint8_t *out_kind, uint64_t *out_child, const uint8_t **out_value,
                    uint32_t *out_vlen)
{
    int rc = pager_check_page_id(p, id);
    if (rc != MP_OK)
        return rc;
    const uint8_t *page = pager_page_ptr(p, id);
    uint8_t head[REC_PAGE_HEADER], rec[8];
    read_once(head, page, REC_PAGE_HEADER);
    uint8_t kind = head[0];
    uint32_t n = load_u16(head + 2), end = mp_load_u32(head + 4);
    if ((kind != MP_RECORD_LEAF && kind != MP_RECORD_BRANCH) || head[1] != 0 ||
        end < REC_PAGE_HEADER || end > p->page_size || (kind == MP_RECORD_BRANCH && n == 0))
        return MP_EINVALID_ARGUMENT;
    search_hit hit = {0, 0, 0};
    if ((rc = search_records(page, kind, n, end, key, klen, &hit)) != MP_OK)
        return rc;
    *out_kind = kind;
    *out_value = hit.at ? page + hit.at + REC_HEAD + hit.klen : NULL;
    *out_vlen = hit.vlen;
    if (kind == MP_RECORD_BRANCH) {
        read_once(rec, page + hit.at + REC_HEAD + hit.klen, 8); /* n >= 1: a hit */
        *out_child = mp_load_u64(rec);
        if (!node_id_ok(p, *out_child))
            return MP_EINVALID_ARGUMENT;
    }
    return MP_OK;
}
