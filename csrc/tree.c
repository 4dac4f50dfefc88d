/*
 * tree.c - record trees: a B+tree of record pages, changed copy-on-write.
 *
 * Owns: mp_tree_apply, which applies one batch of sorted changes to a tree
 * inside the open transaction, and mp_tree_get, a point lookup. The caller
 * keeps the root's page id (a root slot) and its own batches; the core does
 * the per-entry work an engine would otherwise do in an interpreted loop.
 *
 * A tree is leaves (MP_RECORD_LEAF: key -> value) under branches
 * (MP_RECORD_BRANCH: a child's lowest key -> its page id, 8 bytes), every leaf
 * at the same depth. A branch's first record has the empty key, so a key goes
 * to the last child whose key is at most it. mp_tree_apply works in passes:
 *   1. descend: the changes split among the pages they reach, level by level
 *      (level[0] is the root's), every page copied out and checked first;
 *   2. merge, bottom-up: each reached page merged with its changes and
 *      written as one page or several (records.c) into work memory; its
 *      parent's changes follow (its key now maps to its first new page, each
 *      further part's first key to that part; an emptied page's key goes);
 *      a leaf left a quarter full or less takes in its right siblings
 *      (absorb_siblings), whose keys go. Pages not yet allocated are named
 *      by their slot in the work memory, with SLOT set; a root split grows a
 *      level, a branch root left with one child gives way to it;
 *   3. check every replaced page is allocated, and only once (a corrupt tree
 *      may name a page twice), before anything changes;
 *   4. allocate all new pages in one call (in runs: see commit_pages),
 *      give the slots their ids, write the pages through the transaction, and
 *      free the replaced ones (not reused before the commit is durable).
 * Errors in passes 1-4 up to the allocation leave the pager as it was.
 */
#include "mp_internal.h"
#include "mp_bytes.h"
#include "mp_records.h"

#include <stdlib.h>
#include <string.h>

#define RUN 16u                    /* a batch of RUN new pages or more: runs of RUN */
#define SLOT (UINT64_C(1) << 63)   /* a new page not yet allocated: SLOT | its slot */
#define NO_PARENT UINT64_MAX
#define UNCHANGED UINT32_MAX       /* tree_node.parts of a page no change reached */

#define NO_COPY UINT64_MAX         /* tree_node.copy of page 0, the empty root */
#define KEEP_BYTES (8u << 20)      /* work memory a pager keeps between calls */
#define ABSORB_MAX 8u              /* siblings a leaf takes in, at most */

typedef struct {
    uint64_t page;   /* the page reached (0: the empty root) */
    uint64_t lo, hi; /* its changes: records lo .. hi - 1 of its level's list */
    uint64_t parent; /* its parent's index in the level above */
    uint64_t key;    /* its key in the parent: record `key` of work.keys */
    uint32_t parts;  /* the pages it became; UNCHANGED: it stays */
    uint64_t slot;   /* its first new page in work.out */
    uint64_t copy;   /* its page's copy, checked: copies + copy * page_size */
    uint32_t n;      /* the copy's records */
    uint64_t next;   /* its right sibling's record in the parent's copy (an
                      * offset into work.copies), 0: it is the last child */
    uint32_t absorbed; /* the right siblings it took in (absorb_siblings) */
    int taken;         /* a sibling before it took it in */
} tree_node;

typedef struct {
    tree_node *nodes;
    uint64_t n, cap;
} tree_level;

struct tree_work {
    tree_level level[REC_MAX_DEPTH];
    uint32_t depth;     /* levels reached; the leaves are level[depth - 1] */
    rec_list chg[2];    /* a level's changes and the level above's, built */
    rec_list keys;      /* each reached page's key in its parent */
    rec_out out;        /* the new pages, level after level */
    uint64_t *ids;      /* out's pages' ids, once allocated */
    uint64_t ids_cap;
    uint64_t *old;      /* the pages replaced */
    uint64_t n_old, old_cap;
    uint8_t *copies;    /* the reached pages, copied out of the mapping once */
    uint64_t copies_cap, n_copies;
    rec_ref *merged;    /* a page's records merged with its changes */
    uint64_t merged_cap;
};
typedef struct tree_work tree_work;

int mp_tree_max_record(uint32_t page_size, uint32_t *out_bytes)
{
    if (!out_bytes || page_size < 512)
        return MP_EINVALID_ARGUMENT;
    /* A quarter of a page, less the 8 bytes of a child's id: a record's key
     * may go up into a branch, and a split part of either kind fits. */
    *out_bytes = (page_size - REC_PAGE_HEADER) / 4 - 8;
    return MP_OK;
}

/* What a split part aims at: a part passes it by one record at most, a
 * branch's record (a key of a change and 8 bytes) included, and still fits. */
static uint32_t part_target(uint32_t ps, uint32_t max_record)
{
    return ps - REC_PAGE_HEADER - (max_record + 8);
}

static int push_node(tree_level *l, tree_node node)
{
    tree_node *nodes = rec_grow(l->nodes, &l->cap, l->n + 1, sizeof *nodes);
    if (!nodes)
        return MP_ENO_MEMORY;
    l->nodes = nodes;
    l->nodes[l->n++] = node;
    return MP_OK;
}

/* The pager keeps its work memory between calls (a batch's pages would
 * otherwise be fresh memory, a page fault each, every call), the counts set
 * back to empty; a call that needed more than KEEP_BYTES gives it back. */
static void work_free(tree_work *w)
{
    for (uint32_t d = 0; d < REC_MAX_DEPTH; d++)
        free(w->level[d].nodes);
    rec_list_free(&w->chg[0]);
    rec_list_free(&w->chg[1]);
    rec_list_free(&w->keys);
    rec_list_free(&w->out.seps);
    free(w->out.pages);
    free(w->ids);
    free(w->old);
    free(w->copies);
    free(w->merged);
    memset(w, 0, sizeof *w);
}

static void work_reset(tree_work *w)
{
    if (w->copies_cap + w->out.cap + w->chg[0].cap + w->chg[1].cap > KEEP_BYTES) {
        work_free(w);
        return;
    }
    for (uint32_t d = 0; d < REC_MAX_DEPTH; d++)
        w->level[d].n = 0;
    rec_list_clear(&w->chg[0]);
    rec_list_clear(&w->chg[1]);
    rec_list_clear(&w->keys);
    rec_list_clear(&w->out.seps);
    w->out.count = w->n_old = w->n_copies = 0;
    w->depth = 0;
}

void tree_release(mp_pager *p)
{
    if (p->tree_work) {
        work_free(p->tree_work);
        free(p->tree_work);
        p->tree_work = NULL;
    }
}

/* ------------------------------------------------------------ 1. descend */

/* Split branch node i's changes among its children: change c goes to the
 * last record whose key is at most c's (the first record when none is). */
static int split_branch(const mp_pager *p, tree_work *w, uint32_t d, uint64_t i, uint32_t n)
{
    const rec_list *chg = &w->chg[0];
    tree_node node = w->level[d].nodes[i];
    const uint8_t *rec = w->copies + node.copy * p->page_size + REC_PAGE_HEADER, *next;
    uint32_t j = 0;
    for (uint64_t c = node.lo; c < node.hi;) {
        const uint8_t *key = chg->data + chg->at[c];
        for (; j + 1 < n; j++, rec = next) {
            next = rec + REC_HEAD + rec_klen(rec) + 8;
            if (rec_key_cmp(rec_key(next), rec_klen(next), rec_key(key), rec_klen(key)) > 0)
                break;
        }
        uint64_t end = c + 1; /* the changes that go to child j */
        if (j + 1 < n) {
            next = rec + REC_HEAD + rec_klen(rec) + 8;
            while (end < node.hi &&
                   rec_key_cmp(rec_key(next), rec_klen(next), rec_key(chg->data + chg->at[end]),
                               rec_klen(chg->data + chg->at[end])) > 0)
                end++;
        } else {
            end = node.hi;
        }
        int rc = rec_list_add(&w->keys, rec_key(rec), rec_klen(rec), NULL, 0);
        const uint8_t *after = rec + REC_HEAD + rec_klen(rec) + 8;
        tree_node child = {mp_load_u64(rec + REC_HEAD + rec_klen(rec)), c, end, i,
                           w->keys.n - 1, UNCHANGED, 0, NO_COPY, 0,
                           j + 1 < n ? (uint64_t)(after - w->copies) : 0, 0, 0};
        if (rc != MP_OK || (rc = push_node(&w->level[d + 1], child)) != MP_OK)
            return rc;
        c = end;
    }
    return MP_OK;
}

/* The node's page copied out of the mapping and checked, kept for the merge. */
static int load_copy(const mp_pager *p, tree_work *w, tree_node *node, uint8_t *kind,
                     uint32_t *n)
{
    uint64_t ps = p->page_size;
    /* A tree reaches each page once: more copies than the file has pages is a
     * page reached twice, and a damaged file costs what it holds, no more. */
    if (w->n_copies >= p->total_pages)
        return MP_EINVALID_ARGUMENT;
    int rc = rec_reserve(&w->copies, &w->copies_cap, (w->n_copies + 1) * ps);
    if (rc == MP_OK)
        rc = rec_page_load(p, node->page, w->copies + w->n_copies * ps, kind, n);
    if (rc != MP_OK)
        return rc;
    node->n = *n;
    if (node->page != 0)
        node->copy = w->n_copies++;
    return MP_OK;
}

/* Pass 1: the levels the changes reach, down to the leaves. */
static int descend(const mp_pager *p, tree_work *w, uint64_t root)
{
    tree_node top = {root, 0, w->chg[0].n, NO_PARENT, 0, UNCHANGED, 0, NO_COPY, 0, 0, 0, 0};
    int rc = push_node(&w->level[0], top);
    for (uint32_t d = 0; rc == MP_OK; d++) {
        uint8_t kind, first = 0;
        for (uint64_t i = 0; rc == MP_OK && i < w->level[d].n; i++) {
            uint32_t n;
            if ((rc = load_copy(p, w, &w->level[d].nodes[i], &kind, &n)) != MP_OK)
                return rc;
            if (i == 0)
                first = kind;
            else if (kind != first)
                return MP_EINVALID_ARGUMENT; /* leaves at different depths */
            if (kind == MP_RECORD_BRANCH) {
                if (d + 1 >= REC_MAX_DEPTH)
                    return MP_EINVALID_ARGUMENT;
                rc = split_branch(p, w, d, i, n);
            }
        }
        if (rc == MP_OK && first == MP_RECORD_LEAF) {
            w->depth = d + 1;
            return MP_OK;
        }
    }
    return rc;
}

/* ------------------------------------------------------------ 2. merge */

/* The parent's record after the one at `at` (both offsets into work.copies),
 * 0 after its last. */
static uint64_t next_record(const mp_pager *p, const tree_work *w, const tree_node *parent,
                            uint64_t at)
{
    uint64_t base = parent->copy * p->page_size;
    uint64_t end = base + mp_load_u32(w->copies + base + 4);
    uint64_t next = at + REC_HEAD + rec_klen(w->copies + at) + 8;
    return next < end ? next : 0;
}

/* A page's n records merged with changes lo..hi - 1 of chg into work.merged
 * from index m (grown to hold them); *got: the records there now. */
static int merge_records(tree_work *w, const uint8_t *page, uint32_t n, const rec_list *chg,
                         uint64_t lo, uint64_t hi, uint64_t m, uint64_t *got, int *changed,
                         int64_t *keys)
{
    rec_ref *merged = rec_grow(w->merged, &w->merged_cap, m + n + (hi - lo), sizeof *merged);
    if (!merged)
        return MP_ENO_MEMORY;
    w->merged = merged;
    rec_merge(page, n, chg, lo, hi, merged + m, got, changed, keys);
    return MP_OK;
}

/* A sibling's records merged into work.merged from index m: a reached one
 * (its node) with its changes, another as its page holds them (its copy
 * taken here, in room merge_node reserved). *m: past them; *body: their
 * bytes; *keys: the keys its changes added less those they removed. */
static int sibling_records(const mp_pager *p, tree_work *w, const rec_list *chg,
                           uint64_t page, const tree_node *reached, uint64_t *m,
                           uint64_t *body, int64_t *keys)
{
    tree_node loaded = {page, 0, 0, NO_PARENT, 0, UNCHANGED, 0, NO_COPY, 0, 0, 0, 0};
    const tree_node *sib = reached ? reached : &loaded;
    if (!reached) {
        uint8_t kind;
        uint32_t n;
        int rc = load_copy(p, w, &loaded, &kind, &n);
        if (rc != MP_OK)
            return rc;
        if (kind != MP_RECORD_LEAF)
            return MP_EINVALID_ARGUMENT; /* leaves at different depths */
    }
    int changed = 0;
    uint64_t got;
    int rc = merge_records(w, w->copies + sib->copy * p->page_size, sib->n, chg, sib->lo,
                           sib->hi, *m, &got, &changed, keys);
    *body = 0;
    for (uint64_t k = *m; rc == MP_OK && k < *m + got; k++)
        *body += w->merged[k].len;
    if (rc == MP_OK)
        *m += got;
    return rc;
}

/* Deletes would otherwise leave a tree of nearly empty leaves, a page each.
 * A leaf rewritten to a quarter of a page or less takes in its right
 * siblings (ABSORB_MAX at most) while all of them fit one page with room for
 * a record more (target): each is replaced like a reached page, a reached
 * one with its changes (its node is then `taken`, not merged itself), and
 * the parent loses their keys (child_changes). */
static int absorb_siblings(const mp_pager *p, tree_work *w, uint32_t d, uint64_t i,
                           const rec_list *chg, uint64_t *m, uint32_t target, int64_t *delta)
{
    tree_level *l = &w->level[d];
    tree_node *node = &l->nodes[i];
    const tree_node *parent = &w->level[d - 1].nodes[node->parent];
    uint64_t body = 0, at = node->next, j = i + 1;
    for (uint64_t k = 0; k < *m; k++)
        body += w->merged[k].len;
    while (at && body > 0 && body * 4 <= p->page_size - REC_PAGE_HEADER &&
           node->absorbed < ABSORB_MAX) {
        const uint8_t *rec = w->copies + at;
        uint64_t page = mp_load_u64(rec + REC_HEAD + rec_klen(rec)), more, got = *m;
        tree_node *reached = j < l->n && l->nodes[j].parent == node->parent &&
                                     l->nodes[j].page == page ? &l->nodes[j] : NULL;
        uint64_t copies = w->n_copies;
        int64_t keys = 0;
        int rc = sibling_records(p, w, chg, page, reached, &got, &more, &keys);
        if (rc != MP_OK)
            return rc;
        if (body + more > target) {
            w->n_copies = copies; /* it stays as it is */
            break;
        }
        uint64_t *old = rec_grow(w->old, &w->old_cap, w->n_old + 1, sizeof *old);
        if (!old)
            return MP_ENO_MEMORY;
        w->old = old;
        w->old[w->n_old++] = page;
        *m = got, body += more, *delta += keys;
        node->absorbed++;
        if (reached)
            reached->taken = 1, j++;
        at = next_record(p, w, parent, at);
    }
    return MP_OK;
}

/* Node i of level d merged with its changes in `chg` and written to out; a
 * leaf below the root may take in its siblings (absorb_siblings). */
static int merge_node(const mp_pager *p, tree_work *w, uint32_t d, tree_node *node,
                      const rec_list *chg, uint8_t kind, uint32_t target, int64_t *delta)
{
    /* (descend checked the kinds: leaves at the bottom level, branches above) */
    static const uint8_t empty[REC_PAGE_HEADER] = {0};
    int absorb = kind == MP_RECORD_LEAF && d > 0 && node->next;
    /* The merged records point into the copies: the siblings' copies must
     * not move them. */
    if (absorb && rec_reserve(&w->copies, &w->copies_cap,
                              (w->n_copies + ABSORB_MAX) * p->page_size) != MP_OK)
        return MP_ENO_MEMORY;
    const uint8_t *page = node->copy == NO_COPY ? empty : w->copies + node->copy * p->page_size;
    int changed = 0;
    uint64_t m;
    int64_t keys = 0;
    int rc = merge_records(w, page, node->n, chg, node->lo, node->hi, 0, &m, &changed, &keys);
    if (rc != MP_OK)
        return rc;
    if (kind == MP_RECORD_LEAF)
        *delta += keys;
    node->parts = UNCHANGED;
    node->slot = w->out.count;
    if (!changed)
        return MP_OK;
    if (node->page != 0) {
        uint64_t *old = rec_grow(w->old, &w->old_cap, w->n_old + 1, sizeof *old);
        if (!old)
            return MP_ENO_MEMORY;
        w->old = old;
        w->old[w->n_old++] = node->page;
    }
    rc = absorb ? absorb_siblings(p, w, d, (uint64_t)(node - w->level[d].nodes), chg, &m, target,
                                  delta)
                : MP_OK;
    if (rc != MP_OK)
        return rc;
    return rec_write_parts(p, w->merged, m, kind, target, &w->out, &node->parts);
}

/* The parent's change for a child that became `parts` pages: its key maps
 * to the first, each further part's first key to that part; the keys of the
 * siblings it took in go. */
static int child_changes(const mp_pager *p, tree_work *w, rec_list *up, const tree_node *child,
                         const tree_node *parent)
{
    const uint8_t *key = w->keys.data + w->keys.at[child->key];
    if (child->parts == 0)
        return rec_list_add(up, rec_key(key), rec_klen(key), NULL, 0);
    for (uint32_t j = 0; j < child->parts; j++) {
        uint8_t id[8];
        mp_store_u64(id, SLOT | (child->slot + j));
        if (j)
            key = w->out.seps.data + w->out.seps.at[child->slot + j];
        int rc = rec_list_add(up, rec_key(key), rec_klen(key), id, 8);
        if (rc != MP_OK)
            return rc;
    }
    uint64_t at = child->next;
    for (uint32_t k = 0; k < child->absorbed; k++, at = next_record(p, w, parent, at)) {
        key = w->copies + at;
        int rc = rec_list_add(up, rec_key(key), rec_klen(key), NULL, 0);
        if (rc != MP_OK)
            return rc;
    }
    return MP_OK;
}

/* Level d's changed pages as changes of level d - 1, whose nodes' ranges
 * are set to them (a parent no child changed gets none). */
static int parent_changes(const mp_pager *p, tree_work *w, uint32_t d, rec_list *up)
{
    tree_level *parents = &w->level[d - 1];
    for (uint64_t i = 0; i < parents->n; i++)
        parents->nodes[i].lo = parents->nodes[i].hi = 0;
    rec_list_clear(up);
    for (uint64_t i = 0; i < w->level[d].n; i++) {
        const tree_node *child = &w->level[d].nodes[i];
        if (child->parts == UNCHANGED)
            continue;
        tree_node *parent = &parents->nodes[child->parent];
        if (parent->lo == parent->hi)
            parent->lo = up->n;
        int rc = child_changes(p, w, up, child, parent);
        if (rc != MP_OK)
            return rc;
        parent->hi = up->n;
    }
    return MP_OK;
}

/* The root merged; while it split, a new branch over its parts. *out_root:
 * the new root (SLOT | a slot for a new page). */
static int merge_root(const mp_pager *p, tree_work *w, rec_list *chg, uint32_t target,
                      int64_t *delta, uint64_t *out_root)
{
    tree_node *root = &w->level[0].nodes[0];
    uint8_t kind = w->depth == 1 ? MP_RECORD_LEAF : MP_RECORD_BRANCH;
    int rc = merge_node(p, w, 0, root, chg, kind, target, delta);
    tree_node node = *root;
    rec_list *up = &w->chg[chg == &w->chg[0]];
    while (rc == MP_OK && node.parts != UNCHANGED && node.parts > 1) {
        /* A new root over the parts: its first child under the empty key. */
        static const uint8_t empty[REC_HEAD] = {0};
        rec_list_clear(up);
        for (uint32_t j = 0; rc == MP_OK && j < node.parts; j++) {
            const uint8_t *key = j ? w->out.seps.data + w->out.seps.at[node.slot + j] : empty;
            uint8_t id[8];
            mp_store_u64(id, SLOT | (node.slot + j));
            rc = rec_list_add(up, rec_key(key), rec_klen(key), id, 8);
        }
        node = (tree_node){0, 0, up->n, NO_PARENT, 0, UNCHANGED, 0, NO_COPY, 0, 0, 0, 0};
        if (rc == MP_OK)
            rc = merge_node(p, w, 0, &node, up, MP_RECORD_BRANCH, target, delta);
    }
    if (rc != MP_OK)
        return rc;
    if (node.parts == UNCHANGED)
        *out_root = node.page;
    else if (node.parts == 0)
        *out_root = 0;
    else
        *out_root = SLOT | node.slot;
    /* A branch root left with one child gives way to it (its one record has
     * the empty key: the child's id follows the record's head). */
    const uint8_t *pg = node.parts == 1 ? w->out.pages + node.slot * p->page_size : NULL;
    if (pg && pg[0] == MP_RECORD_BRANCH && pg[2] == 1 && pg[3] == 0) {
        *out_root = mp_load_u64(pg + REC_PAGE_HEADER + REC_HEAD);
        w->out.count--; /* the last page written: nothing refers to it */
    }
    return MP_OK;
}

/* Pass 2: every level bottom-up, then the root. */
static int merge_levels(const mp_pager *p, tree_work *w, uint32_t target, int64_t *delta,
                        uint64_t *out_root)
{
    rec_list *cur = &w->chg[0], *up = &w->chg[1];
    for (uint32_t d = w->depth - 1; d > 0; d--) {
        uint8_t kind = d == w->depth - 1 ? MP_RECORD_LEAF : MP_RECORD_BRANCH;
        for (uint64_t i = 0; i < w->level[d].n; i++) {
            tree_node *node = &w->level[d].nodes[i];
            if (node->taken)
                continue; /* a sibling before it took it in */
            int rc = merge_node(p, w, d, node, cur, kind, target, delta);
            if (rc != MP_OK)
                return rc;
        }
        int rc = parent_changes(p, w, d, up);
        if (rc != MP_OK)
            return rc;
        rec_list *t = cur;
        cur = up, up = t;
    }
    return merge_root(p, w, cur, target, delta, out_root);
}

/* ------------------------------------------------------- 3, 4. commit */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Pass 3: every replaced page allocated and named once. */
static int check_replaced(const mp_pager *p, tree_work *w)
{
    if (w->n_old > 1)
        qsort(w->old, (size_t)w->n_old, sizeof *w->old, cmp_u64);
    for (uint64_t i = 0; i < w->n_old; i++) {
        if ((i && w->old[i] == w->old[i - 1]) || !bitmap_get(p->bits, w->old[i]))
            return MP_EINVALID_ARGUMENT;
    }
    return MP_OK;
}

/* The slots in a new branch page, and a new root, given their pages' ids. */
static void place_slots(const mp_pager *p, tree_work *w, uint64_t *root)
{
    for (uint64_t s = 0; s < w->out.count; s++) {
        uint8_t *pg = w->out.pages + s * p->page_size;
        if (pg[0] != MP_RECORD_BRANCH)
            continue;
        uint32_t n = (uint32_t)(pg[2] | pg[3] << 8);
        uint8_t *rec = pg + REC_PAGE_HEADER;
        for (uint32_t i = 0; i < n; i++) {
            uint8_t *value = rec + REC_HEAD + rec_klen(rec);
            uint64_t v = mp_load_u64(value);
            if (v & SLOT)
                mp_store_u64(value, w->ids[v & ~SLOT]);
            rec = value + 8;
        }
    }
    if (*root & SLOT)
        *root = w->ids[*root & ~SLOT];
}

/* Pass 4: allocate, write, free. */
static int commit_pages(mp_pager *p, tree_work *w, uint64_t *root)
{
    uint64_t n = w->out.count;
    if (n) {
        uint64_t *ids = rec_grow(w->ids, &w->ids_cap, n, sizeof *ids);
        if (!ids)
            return MP_ENO_MEMORY;
        w->ids = ids;
        /* A large batch in runs of RUN, the file grown for them if need be; a
         * small one in one run where free pages hold one (written before: the
         * first write into space the file never wrote costs the flush a
         * journal commit), else the lowest free pages. Either way the flush
         * writes a few extents, not one per page. */
        int rc = n >= RUN ? pager_alloc_pages(p, n, RUN, 1, 0, w->ids)
                          : pager_alloc_pages(p, n, n, 0, 0, w->ids);
        if (rc != MP_OK)
            return rc;
        place_slots(p, w, root);
        rc = mp_txn_write_pages_locked(p, w->ids, n, w->out.pages, n * p->page_size);
        if (rc != MP_OK)
            return rc;
    }
    return w->n_old ? mp_pager_free_bulk_locked(p, w->old, w->n_old) : MP_OK;
}

int mp_tree_apply_locked(mp_pager *p, uint64_t root, const uint8_t *changes, uint64_t len,
                         uint64_t *out_root, int64_t *out_delta)
{
    int rc = pager_usable(p, 1);
    if (rc != MP_OK)
        return rc;
    if ((!changes && len) || !out_root || !out_delta || p->txn_depth == 0)
        return MP_EINVALID_ARGUMENT;
    uint32_t max_record;
    if ((rc = mp_tree_max_record(p->page_size, &max_record)) != MP_OK)
        return rc;
    if (!p->tree_work && !(p->tree_work = calloc(1, sizeof *p->tree_work)))
        return MP_ENO_MEMORY;
    tree_work *w = p->tree_work;
    int64_t delta = 0;
    uint64_t new_root = root;
    rc = rec_list_copy(&w->chg[0], changes, len, max_record);
    if (rc == MP_OK && w->chg[0].n > 0) {
        rc = descend(p, w, root);
        if (rc == MP_OK)
            rc = merge_levels(p, w, part_target(p->page_size, max_record), &delta, &new_root);
        if (rc == MP_OK)
            rc = check_replaced(p, w);
        if (rc == MP_OK)
            rc = commit_pages(p, w, &new_root);
    }
    if (rc == MP_OK) {
        *out_root = new_root;
        *out_delta = delta;
    }
    work_reset(w);
    return rc;
}

/* ------------------------------------------------------------ lookup */

/* A lookup descends with rec_page_search, reading each page in place. It does
 * not ask whether the pages are allocated: the tree of an older root stays
 * readable while its freed pages are not reused, as inside the transaction
 * that replaced it. */
int mp_tree_get_locked(const mp_pager *p, uint64_t root, const uint8_t *key, uint32_t klen,
                       uint8_t *buf, uint32_t cap, uint32_t *out_len, int *out_found)
{
    int rc = pager_usable(p, 0);
    if (rc != MP_OK)
        return rc;
    if ((!key && klen) || (!buf && cap) || !out_len || !out_found || klen > UINT16_MAX)
        return MP_EINVALID_ARGUMENT;
    uint8_t small[256]; /* the key, copied once: the caller may change it */
    uint8_t *own = klen <= sizeof small ? small : malloc(klen);
    if (!own)
        return MP_ENO_MEMORY;
    if (klen)
        memcpy(own, key, klen);
    *out_found = 0;
    for (uint32_t d = 0; root != 0; d++) {
        uint8_t kind;
        const uint8_t *value;
        uint32_t vlen;
        if (d >= REC_MAX_DEPTH) {
            rc = MP_EINVALID_ARGUMENT; /* a cycle, not a tree */
            break;
        }
        if ((rc = rec_page_search(p, root, own, klen, &kind, &root, &value, &vlen)) != MP_OK)
            break;
        if (kind == MP_RECORD_BRANCH)
            continue; /* root is now the child */
        if (value) {
            *out_len = vlen;
            *out_found = 1;
            if (vlen <= cap && vlen)
                memcpy(buf, value, vlen);
        }
        break;
    }
    if (own != small)
        free(own);
    return rc;
}
