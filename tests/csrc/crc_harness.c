/*
 * crc_harness.c - prints mp_crc32 of slices of a file, for test_crc32.py to
 * compare with zlib: every length up to 300 and some past a page, at the first
 * 16 offsets, whole and split in two updates. The first line says whether the
 * CPU offers carry-less multiplication (the folding path of crc32.c).
 */
#include "mp_internal.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    FILE *f = fopen(argv[1], "rb");
    if (!f)
        return 2;
    static uint8_t buf[16384];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
#if defined(__x86_64__) && !defined(MP_CRC_TABLES_ONLY)
    printf("clmul %d\n", __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1") ? 1 : 0);
#else
    printf("clmul 0\n");
#endif
    static const size_t longer[] = {511, 512, 1000, 4092, 4096, 8188, 8192, 12345};
    for (size_t off = 0; off < 16; off++) {
        for (size_t len = 0; len < 300 + 8; len++) {
            size_t l = len < 300 ? len : longer[len - 300];
            if (off + l > n)
                return 3;
            uint32_t whole = mp_crc32(buf + off, l);
            size_t cut = l / 3;
            uint32_t split = mp_crc32_update(mp_crc32(buf + off, cut), buf + off + cut, l - cut);
            printf("%zu %zu %08x %08x\n", off, l, whole, split);
        }
    }
    return 0;
}
