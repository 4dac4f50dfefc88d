/*
 * txn.c - transactions: several changes, one commit.
 *
 * Owns: mp_txn_begin/commit/abort, the settling of deferred state before a
 * directory commit (pager_prepare_dir_commit) and, in "none" mode, before a
 * transaction once many frees wait for it (reclaim_pending). Inside a
 * transaction changes stay in memory (bits[] is then ahead of every copy on
 * disk); commit makes them durable with one pager_commit, abort reloads the
 * committed state.
 */
#include "mp_internal.h"

int pager_prepare_dir_commit(mp_pager *p)
{
    /* A directory change is committed through page 0, which also names a
     * metadata copy: if the allocation state of "none" mode were still in
     * memory, a crash after that page-0 flush would pair the new directory
     * with older allocations, a state that never existed. So the deferred
     * state is made durable first. */
    if (p->snap)
        return txn_snapshot_settle(p);
    return p->meta_unwritten ? pager_settle_deferred(p) : MP_OK;
}

/* Below this many releasable pages a "none" transaction grows the file
 * rather than flush: growing a small file is cheaper than a flush each time. */
#define RECLAIM_MIN_PAGES 1024u

/* "none": a free stays pending until a commit makes it durable, and inside a
 * transaction nothing can be made durable, so a transaction that finds no
 * usable page grows the file. A copy-on-write engine frees as many pages per
 * transaction as it allocates: without a sync() the file grew by that much
 * per transaction. So once the frees a commit would release outnumber the
 * usable pages, the allocated ones and RECLAIM_MIN_PAGES, a transaction first
 * makes the deferred state durable (as an alloc with no usable page does):
 * the file stays within about three times what is allocated (or a few
 * thousand pages), at one flush per that many frees. */
static int reclaim_pending(mp_pager *p)
{
    if (p->durability != MP_DURABILITY_NONE || p->pending_count == 0)
        return MP_OK;
    /* Durable frees a reader still holds are not released by a commit: they
     * must not make every transaction flush. */
    uint64_t releasable = readers_releasable(p);
    uint64_t usable = p->free_count - p->pending_count;
    uint64_t allocated = p->total_pages - p->free_count;
    if (releasable <= usable || releasable < allocated || releasable < RECLAIM_MIN_PAGES)
        return MP_OK;
    return pager_settle_deferred(p);
}

int mp_txn_begin_locked(mp_pager *p)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (p->txn_depth == 0 && (rc = reclaim_pending(p)) != MP_OK)
        return rc;
    /* Rollback reloads the committed state from the active copy, so that
     * copy must hold the state the transaction starts from. */
    if (p->txn_depth == 0 && p->meta_unwritten && p->durability == MP_DURABILITY_NONE) {
        if ((rc = txn_snapshot_take(p)) != MP_OK)
            return rc;
    } else if (p->txn_depth == 0 && (rc = pager_prepare_dir_commit(p)) != MP_OK) {
        return rc;
    }
    p->txn_depth++;
    return MP_OK;
}

static void clear_txn_marks(mp_pager *p)
{
    for (uint32_t b = 0; b < p->dir_count; b++)
        for (uint32_t s = 0; s < p->epp; s++)
            if (p->dirs[b].writer_open[s] == MP_WRITER_DONE_IN_TXN)
                p->dirs[b].writer_open[s] = MP_WRITER_NONE;
}

int mp_txn_commit_locked(mp_pager *p)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if (p->txn_depth == 0)
        return MP_EINVALID_ARGUMENT;
    if (--p->txn_depth > 0)
        return MP_OK;
    clear_txn_marks(p);
    txn_snapshot_drop(p);
    /* Directory first: protected writes become visible together at the
     * page-0 flush, and protected pages allocated in the transaction are on
     * unallocated pages until the metadata commit that follows (dropped if a
     * crash falls between). See the README for what a crash between the two
     * leaves of the transaction's other changes. */
    return pager_commit(p, MP_ORDER_DIR_FIRST);
}

int mp_txn_abort_locked(mp_pager *p)
{
    int rc;
    if (!p)
        return MP_EINVALID_ARGUMENT;
    if (p->txn_depth == 0)
        return MP_EINVALID_ARGUMENT;
    p->txn_depth = 0;
    pager_staged_forget(p);
    txn_forget_dirty(p);
    if (p->poisoned)
        return MP_EUNAVAILABLE;
    /* Nothing the transaction did reached the committed copies: reload them. */
    rc = pager_load_committed(p, NULL);
    if (p->snap && rc == MP_OK)
        rc = txn_snapshot_restore(p);
    txn_snapshot_drop(p);
    return rc;
}
