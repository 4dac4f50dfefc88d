/*
 * fuzz_open.c - libFuzzer target over the C core's open path.
 *
 * Each input is written to a file and opened read-only and then writable; a
 * file that opens is exercised (listing, protected pages, reads of every
 * page, and for the writer an alloc/free and a protected commit), closed, and
 * reopened: a file the library has just written must open again. Built with
 * -fsanitize=fuzzer,address,undefined by fuzz/run.sh.
 *
 * The custom mutator reseals the CRCs of page 0's directory index, both
 * metadata copies and the directory pages after libFuzzer's mutation (half of
 * the time), so that mutations reach the checks behind the checksums.
 */
#include "mappedpages.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
uint32_t mp_crc32(const uint8_t *data, size_t len); /* csrc/format.c */

#define FUZZ_NAME "open"
#include "fuzz_file.h"

static uint64_t load64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t load32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void store32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void reseal(uint8_t *page, size_t ps)
{
    store32(page + ps - 4, mp_crc32(page, ps - 4));
}

/* Recomputes every CRC of the v0.2 layout that the bytes allow. */
static void reseal_all(uint8_t *data, size_t size)
{
    if (size < 20 || memcmp(data, "MPPG", 4) != 0)
        return;
    uint32_t log2 = load32(data + 8);
    if (log2 < 10 || log2 > 20)
        return;
    size_t ps = (size_t)1 << log2;
    if (size < 3 * ps)
        return;
    store32(data + ps - 4, mp_crc32(data + 20, ps - 24));
    reseal(data + ps, ps);
    reseal(data + 2 * ps, ps);
    uint32_t count = load32(data + 20);
    uint32_t max = (uint32_t)((ps - 28) / 17);
    for (uint32_t i = 0; i < count && i < max; i++) {
        const uint8_t *r = data + 24 + 17 * (size_t)i;
        for (int w = 0; w < 2; w++) {
            uint64_t id = load64(r + 8 * w);
            if (id >= 3 && id < size / ps)
                reseal(data + id * ps, ps);
        }
    }
    store32(data + ps - 4, mp_crc32(data + 20, ps - 24));
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    size = LLVMFuzzerMutate(data, size, max_size);
    if (seed & 1)
        reseal_all(data, size);
    return size;
}

static volatile uint8_t sink;

static void exercise(mp_pager *p)
{
    mp_stats st;
    if (mp_pager_stats(p, &st) != 0)
        abort();
    uint64_t ids[256], n = 0;
    (void)mp_pager_list_pages(p, MP_KIND_ALLOCATED, 0, ids, 256, &n);
    (void)mp_pager_list_pages(p, MP_KIND_SYSTEM, 0, ids, 256, &n);
    uint64_t pids[256];
    if (mp_protected_list(p, 0, pids, 256, &n) == 0) {
        for (uint64_t i = 0; i < n; i++) {
            uint64_t page, a, b;
            int ok;
            (void)mp_protected_page(p, pids[i], &page);
            (void)mp_protected_verify(p, pids[i], &ok);
            (void)mp_protected_backing(p, pids[i], &a, &b);
        }
    }
    /* Every page the state counts must be readable through the mapping. */
    uint8_t *base;
    uint64_t reserved;
    if (mp_pager_mapping(p, &base, &reserved) != 0)
        abort();
    for (uint64_t i = 0; i < st.page_count; i++) {
        sink ^= base[i * st.page_size];
        sink ^= base[(i + 1) * st.page_size - 1];
    }
}

static void write_input(const uint8_t *data, size_t size)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        abort();
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0)
            abort();
        done += (size_t)w;
    }
    close(fd);
}

static void read_only_session(void)
{
    mp_options o;
    memset(&o, 0, sizeof o);
    o.read_only = 1;
    mp_open_report rep;
    mp_pager *p = NULL;
    if (mp_pager_open(path, &o, &p, &rep) == 0) {
        exercise(p);
        (void)mp_pager_refresh(p, &rep);
        exercise(p);
        mp_pager_release(p);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mp_options o;
    memset(&o, 0, sizeof o);
    mp_open_report rep;
    mp_pager *p = NULL;

    /* A reader retries a failed load five times, 2 ms apart (it may have
     * caught a writer mid-commit), so a damaged file costs a reader 10 ms:
     * readers run on every input a writer accepts and on 1 in 16 others. */
    write_input(data, size);
    int rc = mp_pager_open(path, &o, &p, &rep);
    if (rc != 0) {
        if ((mp_crc32(data, size) & 15u) == 0)
            read_only_session();
        return 0;
    }
    mp_pager_release(p);
    write_input(data, size);
    read_only_session();
    if (mp_pager_open(path, &o, &p, &rep) != 0)
        abort(); /* it opened a moment ago, and a reader changes nothing */
    exercise(p);
    uint64_t id, pid, staged;
    if (mp_pager_alloc(p, 0, &id) == 0 && mp_pager_free(p, id) != 0)
        abort();
    if (mp_protected_alloc(p, &pid) == 0) {
        if (mp_protected_begin(p, pid, &staged) != 0)
            abort();
        if (mp_protected_commit(p, pid) != 0 || mp_protected_free(p, pid) != 0)
            abort();
    }
    exercise(p);
    mp_pager_release(p);
    /* What the library has just written must open again. */
    rc = mp_pager_open(path, &o, &p, &rep);
    if (rc != 0) {
        fprintf(stderr, "reopen after a writer's session failed: %d\n", rc);
        abort();
    }
    exercise(p);
    mp_pager_release(p);
    return 0;
}
