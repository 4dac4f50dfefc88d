/*
 * state.c - the committed state as one object, and the pager's named states.
 *
 * Owns: mp_committed, the part of a pager that a load of the committed state
 * writes (recover.c): the in-memory maps, the directory tables and the
 * scalars that describe the state chosen on disk. A state is allocated fresh
 * (committed_new), exchanged with the pager's as one unit (committed_swap) and
 * freed (committed_free). Open loads into the fresh state pager_new swapped
 * in; refresh and rollback set the pager's state aside, load into a fresh one
 * and keep whichever the outcome calls for, so a failed load never leaves a
 * half-loaded state in the pager and no code copies a whole pager.
 * Also owns pager_state(), the named state derived from the pager's flags
 * (the table is at the top of mp_internal.h's pager section).
 *
 * Invariants: the fields of mp_committed live in the pager (every other file
 * uses p->bits and so on); committed_swap moves exactly those fields and
 * nothing else, so the mapping, the descriptor, the options and the
 * transaction's bookkeeping stay with the pager; a fresh state's maps are
 * zero and its words_used is the pager's, an upper bound of the words any
 * state touched, so a summary rebuild over it clears every stale word.
 */
#include "mp_internal.h"

#include <stdlib.h>
#include <string.h>

static size_t chunk_map_bytes(const mp_pager *p)
{
    return ((size_t)bitmap_words(p->max_chunks) + 1) * sizeof(uint64_t);
}

void committed_free(const mp_pager *p, mp_committed *s)
{
    if (s->dirs) {
        for (uint32_t i = 0; i < s->dir_capacity; i++) {
            free(s->dirs[i].entries);
            free(s->dirs[i].writer_open);
        }
    }
    os_free_zeroed(s->bits, p->map_bytes);
    os_free_zeroed(s->system, p->map_bytes);
    os_free_zeroed(s->pending, p->map_bytes);
    free(s->chunk_dirty);
    free(s->chunk_active);
    free(s->index_dirty);
    free(s->index_active);
    free(s->dirs);
    free(s->refs);
    memset(s, 0, sizeof *s);
}

int committed_new(const mp_pager *p, mp_committed *s)
{
    memset(s, 0, sizeof *s);
    size_t cw = chunk_map_bytes(p);
    s->bits = os_alloc_zeroed(p->map_bytes);
    s->system = os_alloc_zeroed(p->map_bytes);
    s->pending = os_alloc_zeroed(p->map_bytes);
    s->chunk_dirty = calloc(1, cw);
    s->chunk_active = calloc(1, cw);
    s->index_dirty = calloc(1, cw);
    s->index_active = calloc(1, cw);
    s->dir_capacity = fmt_max_dir_blocks(p->page_size);
    s->dirs = calloc(s->dir_capacity, sizeof(mp_dir_block));
    s->refs = calloc(s->dir_capacity + 1u, sizeof(mp_dir_ref));
    s->words_used = p->words_used;
    s->minor = MP_MINOR_V02;
    s->hint = MP_RESERVED_PAGES;
    if (!s->bits || !s->system || !s->pending || !s->chunk_dirty || !s->chunk_active ||
        !s->index_dirty || !s->index_active || !s->dirs || !s->refs) {
        committed_free(p, s);
        return MP_ENO_MEMORY;
    }
    return MP_OK;
}

/* Exchanges one field; MP_COMMITTED_FIELDS names them all, once. */
#define MP_COMMITTED_SWAP(type, name)                                                            \
    {                                                                                            \
        type t_ = p->name;                                                                       \
        p->name = s->name;                                                                       \
        s->name = t_;                                                                            \
    }

void committed_swap(mp_pager *p, mp_committed *s)
{
    MP_COMMITTED_FIELDS(MP_COMMITTED_SWAP)
    for (uint32_t i = 0; i < MP_ROOTS; i++) {
        uint64_t t = p->roots[i];
        p->roots[i] = s->roots[i];
        s->roots[i] = t;
    }
    for (uint32_t i = 0; i < MP_MAX_RECORD; i++) {
        mp_rec t = p->rec[i];
        p->rec[i] = s->rec[i];
        s->rec[i] = t;
    }
}

mp_pager_state pager_state(const mp_pager *p)
{
    if (p->no_io)
        return MP_PAGER_FORGOTTEN;
    if (p->poisoned)
        return MP_PAGER_ERROR;
    if (p->read_only)
        return MP_PAGER_READER;
    if (p->txn_depth > 0)
        return MP_PAGER_WRITER_TXN;
    if (p->meta_unwritten || p->page0_stale || p->pending_count > 0)
        return MP_PAGER_WRITER_DEFERRED;
    return MP_PAGER_WRITER_IDLE;
}
