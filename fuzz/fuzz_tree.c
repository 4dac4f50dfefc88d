/*
 * fuzz_tree.c - libFuzzer target over record trees (csrc/tree.c, records.c).
 *
 * An input is a few pages of 1 KiB and a batch of change records:
 *   byte 0: how many pages (1-8: its low 3 bits, plus one) and which is the
 *   root (bits 3-5, modulo the count), then the pages, each 1024 bytes (short
 *   ones padded with zeros), then the changes.
 * The pages are written into a new file (they get ids 3, 4, ...: the input's
 * child ids can name them) and the tree at the root page is read with
 * mp_tree_get and mp_tree_scan and changed with mp_tree_apply. Whatever the
 * bytes, none may crash or read out of bounds, and a scan ends and returns
 * records in strictly ascending order; and when the apply succeeds, the new tree must
 * hold every put of the batch and none of its deletes (the oracle), and a
 * second apply of the same batch must change nothing. Built with
 * -fsanitize=fuzzer,address,undefined by fuzz/run.sh; seeds from
 * fuzz/make_seeds.py --tree.
 */
#include "mappedpages.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PS 1024u

#define FUZZ_NAME "tree"
#include "fuzz_file.h"

static uint32_t load32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* The oracle: after a successful apply, every record of the batch reads
 * back as it said (a put: its value; a delete: absent). */
static void check_batch(mp_pager *p, uint64_t root, const uint8_t *chg, size_t len)
{
    uint8_t *buf = malloc(PS);
    for (size_t at = 0; buf && at + 6 <= len;) {
        uint32_t klen = (uint32_t)(chg[at] | chg[at + 1] << 8), vlen = load32(chg + at + 2);
        int del = vlen == MP_RECORD_DELETE;
        size_t rec = 6 + (size_t)klen + (del ? 0 : vlen);
        if (rec > len - at)
            abort(); /* the core accepted a batch it should have refused */
        uint32_t got_len = 0;
        int found = 0;
        if (mp_tree_get(p, root, chg + at + 6, klen, buf, PS, &got_len, &found) != 0)
            abort(); /* the core wrote a tree it cannot read */
        if (found == del || (!del && (got_len != vlen || memcmp(buf, chg + at + 6 + klen, vlen))))
            abort(); /* the tree does not hold what the batch said */
        at += rec;
    }
    free(buf);
}

/* Reads the whole tree at root with mp_tree_scan, a page's worth at a time.
 * Whatever the pages hold, the scan ends, and what it returns is its contract:
 * records whole and in the buffer, keys strictly ascending within a batch and
 * past the last key of the batch before. */
static void check_scan(mp_pager *p, uint64_t root)
{
    uint8_t *buf = malloc(PS), last[PS];
    uint32_t last_len = 0, flags = 0;
    for (int calls = 0; buf; calls++) {
        uint64_t used = 0;
        int more = 0;
        if (calls > 100000)
            abort(); /* a scan that does not end */
        if (mp_tree_scan(p, root, last, last_len, NULL, 0, flags, buf, PS, &used, &more) != 0)
            break;
        for (uint64_t at = 0; at < used;) {
            if (used - at < 6)
                abort();
            uint32_t klen = (uint32_t)(buf[at] | buf[at + 1] << 8), vlen = load32(buf + at + 2);
            if (6 + (uint64_t)klen + vlen > used - at || klen >= PS)
                abort(); /* a record cut short */
            int c = memcmp(buf + at + 6, last, klen < last_len ? klen : last_len);
            if (flags && (c < 0 || (c == 0 && klen <= last_len)))
                abort(); /* not past the key before */
            memcpy(last, buf + at + 6, klen);
            last_len = klen;
            flags = MP_SCAN_AFTER;
            at += 6 + (uint64_t)klen + vlen;
        }
        if (!more)
            break;
        if (used == 0)
            abort(); /* more, but nothing returned: it would not move on */
    }
    free(buf);
}

static void session(mp_pager *p, const uint8_t *pages, size_t n, size_t at, const uint8_t *chg,
                    size_t len)
{
    uint64_t ids[8];
    if (mp_pager_alloc_bulk(p, n, 1, ids) != 0 || mp_txn_begin(p) != 0)
        return;
    int rc = mp_txn_write_pages(p, ids, n, pages, n * PS);
    if (mp_txn_commit(p) != 0 || rc != 0)
        return;
    uint8_t value[PS];
    uint32_t vlen;
    int found;
    /* Reads: the batch's first key and the empty key. */
    size_t klen = len >= 6 ? (size_t)(chg[0] | chg[1] << 8) : 0;
    if (klen > len - (len >= 6 ? 6 : len))
        klen = len >= 6 ? len - 6 : 0;
    (void)mp_tree_get(p, ids[at], len >= 6 ? chg + 6 : chg, (uint32_t)klen, value, sizeof value,
                      &vlen, &found);
    (void)mp_tree_get(p, ids[at], NULL, 0, value, sizeof value, &vlen, &found);
    check_scan(p, ids[at]);
    uint64_t root;
    int64_t delta;
    if (mp_txn_begin(p) != 0)
        return;
    rc = mp_tree_apply(p, ids[at], chg, len, &root, &delta);
    if (rc == 0) {
        check_batch(p, root, chg, len);
        check_scan(p, root);
        uint64_t again;
        if (mp_tree_apply(p, root, chg, len, &again, &delta) != 0 || delta != 0)
            abort(); /* the same batch twice: the second adds and removes nothing */
        check_batch(p, again, chg, len);
    }
    (void)mp_txn_abort(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t n = (data[0] & 7u) + 1;
    uint8_t *pages = calloc(n, PS);
    if (!pages)
        return 0;
    size_t have = size - 1 < n * PS ? size - 1 : n * PS;
    memcpy(pages, data + 1, have);
    const uint8_t *chg = data + 1 + have;
    size_t len = size - 1 - have;

    mp_options o;
    memset(&o, 0, sizeof o);
    o.page_size = PS;
    o.durability = MP_DURABILITY_NONE;
    mp_pager *p = NULL;
    (void)unlink(path);
    if (mp_pager_create(path, &o, &p) == 0) {
        session(p, pages, n, (data[0] >> 3 & 7u) % n, chg, len);
        mp_pager_release(p);
    }
    free(pages);
    return 0;
}
