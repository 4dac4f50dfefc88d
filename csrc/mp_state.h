/*
 * mp_state.h - the committed state as one unit (state.c), included by
 * mp_internal.h after struct mp_pager.
 *
 * Owns: the list of mp_pager's fields that a load of the committed state
 * writes, and the functions that build such a state aside, swap it with the
 * pager's and free it; the derivation of the pager's named state.
 */
#ifndef MP_STATE_H
#define MP_STATE_H

/* The committed state: the fields of mp_pager a load of the committed state
 * writes (recover.c), listed once. state.c builds one aside (committed_new),
 * exchanges it with the pager's as one unit (committed_swap: exactly these
 * fields move) and frees one (committed_free). Open loads into the fresh
 * state pager_new swapped in; refresh and rollback load into a fresh state
 * and keep the old one until the load succeeds. */
#define MP_COMMITTED_FIELDS(X)                                                                   \
    X(uint64_t *, bits)                                                                          \
    X(uint64_t *, system)                                                                        \
    X(uint64_t *, pending)                                                                       \
    X(uint64_t *, chunk_dirty)                                                                   \
    X(uint64_t *, chunk_active)                                                                  \
    X(uint64_t *, index_dirty)                                                                   \
    X(uint64_t *, index_active)                                                                  \
    X(mp_dir_block *, dirs)                                                                      \
    X(mp_dir_ref *, refs)                                                                        \
    X(uint32_t, dir_count)                                                                       \
    X(uint32_t, dir_capacity)                                                                    \
    X(uint32_t, dir_committed)                                                                   \
    X(uint64_t, total_pages)                                                                     \
    X(uint64_t, free_count)                                                                      \
    X(uint64_t, generation)                                                                      \
    X(uint32_t, active)                                                                          \
    X(uint32_t, minor)                                                                           \
    X(int, ext_always)                                                                           \
    X(uint64_t, hint)                                                                            \
    X(uint64_t, pending_count)                                                                   \
    X(uint64_t, pending_lo)                                                                      \
    X(uint64_t, pending_hi)                                                                      \
    X(uint64_t, words_used)                                                                      \
    X(uint64_t, file_pages)                                                                      \
    X(uint64_t, protected_count)                                                                 \
    X(uint64_t, system_count)                                                                    \
    X(uint32_t, rec_n)                                                                           \
    X(uint64_t, roots_page)                                                                      \
    X(uint32_t, roots_active)                                                                    \
    X(int, roots_dirty)                                                                          \
    X(int, page0_stale)                                                                          \
    X(int, meta_unwritten)                                                                       \
    X(int, changed)                                                                              \
    X(int, index_changed)                                                                        \
    X(int, ext_committed)                                                                        \
    X(int, meta_fell_back)

#define MP_COMMITTED_DECLARE(type, name) type name;
typedef struct {
    MP_COMMITTED_FIELDS(MP_COMMITTED_DECLARE)
    /* Arrays, exchanged element by element (state.c): the roots and the
     * commit record a load reads from the chosen metadata copy. */
    uint64_t roots[MP_ROOTS];
    mp_rec rec[MP_MAX_RECORD];
} mp_committed;
#undef MP_COMMITTED_DECLARE

/* state.c */
/* A fresh, empty state sized for p (maps zero, words_used p's). */
int committed_new(const mp_pager *p, mp_committed *s);
/* Exchanges the pager's committed state with s. */
void committed_swap(mp_pager *p, mp_committed *s);
/* Frees s (a state not in a pager); leaves it empty. */
void committed_free(const mp_pager *p, mp_committed *s);
/* The pager's named state, from its flags (the table above mp_pager_state). */
mp_pager_state pager_state(const mp_pager *p);

#endif /* MP_STATE_H */
