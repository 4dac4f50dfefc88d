/*
 * fuzz_file.h - the one file a fuzz target works in, shared by the targets:
 * `path`, on a memory file system where there is one ($FUZZ_TMPDIR first),
 * named after the target and the process, and removed at exit.
 * LLVMFuzzerInitialize is defined here; a target defines FUZZ_NAME first.
 */
#ifndef FUZZ_FILE_H
#define FUZZ_FILE_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char path[512];

static void remove_file(void)
{
    (void)unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("FUZZ_TMPDIR");
    if (!dir)
        dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/mp-fuzz-%s-%d.mpp", dir, FUZZ_NAME, (int)getpid());
    atexit(remove_file);
    return 0;
}

#endif
