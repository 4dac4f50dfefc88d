/*
 * errors.c - the one table of error messages and recovery-flag names.
 *
 * Owns: the text of every MP_E* code, the name of every mp_recovery bit and
 * the meaning of every mp_meta_problem value. The Python layer maps codes to
 * exception classes and takes its messages from here, adding the values
 * involved.
 *
 * Invariants: the tables are constant (no global mutable state) and indexed
 * by the enums of mappedpages.h; a value outside them is refused, never read
 * past the table.
 */
#include "mp_internal.h"

static const char *const error_text[MP_ERROR_CODES] = {
    [MP_OK] = "ok",
    [MP_EINVALID_PAGE_SIZE] = "invalid page size",
    [MP_ECORRUPT_SUPERBLOCK] = "not a mappedpages file, or truncated",
    [MP_ECORRUPT_METADATA] = "both metadata copies are damaged",
    [MP_ECORRUPT_DIRECTORY_INDEX] = "the directory index in page 0 is damaged",
    [MP_ECORRUPT_PROTECTED_DIRECTORY] =
        "both copies of a protected-page directory page are damaged",
    [MP_EOUT_OF_BOUNDS] = "out of bounds",
    [MP_ERESERVED_PAGE] = "reserved page",
    [MP_EDOUBLE_FREE] = "already free",
    [MP_EUNAVAILABLE] =
        "a flush failed earlier, so the on-disk state is unknown; reopen the file",
    [MP_EFILE_FULL] =
        "the file cannot grow further (past max_pages: 16 TiB, the most a pager maps)",
    [MP_EDIRECTORY_FULL] =
        "no room for another directory block (the file cannot grow to hold it)",
    [MP_ELOCKED] = "another writer holds the file's lock",
    [MP_EWRITER_OPEN] = "a writer is open on this protected page",
    [MP_EINVALID_ARGUMENT] = "invalid argument",
    [MP_ENO_MEMORY] = "out of memory",
    [MP_EREAD_ONLY] = "the pager is read-only",
    [MP_ENO_WRITER] = "no writer is open on this protected page",
    [MP_ESUBPAGE_OWNED] = "the pager handed out a page a SubPageAllocator holds; it was "
                          "freed in the pager while sub-pages in it were in use",
    [MP_EFILE_TRUNCATED] = "the file is shorter than its newest commit: it was cut",
    [MP_EINTERNAL] = "an internal invariant of the pager does not hold (a bug in "
                     "mappedpages); the pager is unusable, the file as last committed",
    [MP_EREADERS_FULL] = "every slot of the reader table is held by a live reader (the "
                         "writer's max_readers)",
    [MP_ESNAPSHOT_MOVED] = "the writer rewrote pages of this reader's commit while they were "
                           "copied; back up a newer commit (refresh, or a new snapshot)",
    [MP_ECLOSED] = "I/O operation on closed pager",
};

/* Indexed by bit number. */
static const char *const flag_name[] = {
    "meta_a_damaged",  "meta_b_damaged",    "selector_invalid", "selector_stale",
    "meta_checksum_mismatch", "dir_fallback", "dir_entry_dropped", "dir_block_dropped",
    "page0_rewritten", "dir_index_torn",    "cut_rolled_back",  "protected_kept",
    "salvage_dropped",
};

static const char *const problem_text[] = {
    [MP_META_OK] = "valid",
    [MP_META_BAD_CRC] = "its CRC does not match",
    [MP_META_BAD_TOTAL] = "its page count is impossible or past the end of the file",
    [MP_META_BAD_RESERVED] = "pages 0-2 are not marked allocated",
    [MP_META_BITS_PAST_END] = "it marks pages past its page count",
    [MP_META_BAD_FREE_COUNT] = "its free count disagrees with its bitmap",
    [MP_META_BAD_FREE_MAP] = "a free-map page it needs is missing or damaged",
    [MP_META_PAST_END] = "it counts pages past the end of the file",
    [MP_META_DATA_MISSING] = "a data page its transaction committed does not hold the "
                             "committed content (the commit did not reach the disk whole)",
};

int mp_strerror(int code, const char **out)
{
    if (!out || code < 0 || code >= MP_ERROR_CODES || !error_text[code])
        return MP_EINVALID_ARGUMENT;
    *out = error_text[code];
    return MP_OK;
}

int mp_recovery_flag_name(uint32_t flag, const char **out)
{
    if (!out || flag == 0 || (flag & (flag - 1)) != 0)
        return MP_EINVALID_ARGUMENT;
    uint32_t bit = 0;
    while ((flag >> bit) != 1u)
        bit++;
    if (bit >= sizeof flag_name / sizeof flag_name[0])
        return MP_EINVALID_ARGUMENT;
    *out = flag_name[bit];
    return MP_OK;
}

int mp_meta_problem_text(uint32_t problem, const char **out)
{
    if (!out || problem >= sizeof problem_text / sizeof problem_text[0])
        return MP_EINVALID_ARGUMENT;
    *out = problem_text[problem];
    return MP_OK;
}
