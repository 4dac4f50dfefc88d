/*
 * txn.c - transactions: several changes, one commit.
 *
 * Owns: mp_txn_begin/commit/abort and the settling of deferred state before a
 * directory commit (pager_prepare_dir_commit). Inside a transaction changes
 * stay in memory (bits[] is then ahead of every copy on disk); commit makes
 * them durable with one pager_commit, abort reloads the committed state.
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

int mp_txn_begin_locked(mp_pager *p)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
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
