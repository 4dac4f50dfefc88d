/*
 * mp_readers.h - the reader table's internal interface (readers.c, pins.c),
 * included by mp_internal.h after struct mp_pager.
 *
 * Owns: the declarations of the reader table, its slots, the writer's pins
 * and a reader's fingerprint of the state it loaded.
 */
#ifndef MP_READERS_H
#define MP_READERS_H

/* ---- readers.c: the reader table, pinned pages, reader fingerprints ---- */

#define RD_HEADER 64u       /* the reader table's header, then its slots */
#define RD_SLOT 64u
#define RD_MAX_SLOTS 65536u
/* The writer's fields of the header, for `info` in other processes: the pages
 * it holds back for readers, and its pid (0 when no writer holds the table). */
#define RD_HEAD_PINNED 24u
#define RD_HEAD_WRITER 32u

typedef struct {
    uint64_t id;
    uint64_t gen;            /* the writer's written generation when freed */
} rd_pin;

/* A pager's reader-table state: a writer's pins, or a reader's slot and the
 * fingerprint of the state it loaded. */
typedef struct mp_readers {
    int fd;                  /* the table, or -1 */
    int64_t slot;            /* a reader's slot, or -1 */
    /* writer (pins.c) */
    rd_pin *pins;            /* FIFO, ordered by gen */
    uint64_t head, durable, tail, cap;
    uint64_t bound;          /* no live or future reader holds a generation below */
    uint32_t scans;          /* table reads, for tests of the cached bound */
    uint64_t live_checked;   /* when slots' locks were last tested (monotonic ns) */
    uint64_t published;      /* the pinned count last written to the header */
    int unpinned;            /* a pending page may be missing from the FIFO */
    /* reader (readers.c) */
    uint8_t *fingerprint;    /* pages 0-2 as the loaded state was read */
    uint64_t started;        /* when the reader took its slot (ns since the epoch) */
    int fp_valid;
} mp_readers;

typedef struct {
    uint64_t pid, gen, pages, start;
} rd_entry;

/* p->rd, allocated on first use (NULL when out of memory). */
mp_readers *readers_get(mp_pager *p);
/* Opens (creating) the table: want >= 0 is a writer's max_readers, -1 a reader. */
int readers_table_open(const mp_pager *p, const char *path, int64_t want, int *out_fd);
/* The live slots (dead ones cleared when check_live; own, the caller's slot or
 * -1, is live), and their least generation. */
int readers_table_scan(int fd, int64_t own, int check_live, rd_entry *out, uint64_t cap,
                       uint64_t *n, uint64_t *oldest);
/* Frees a writer's pins and tells the table no writer holds it. */
void pins_release(mp_pager *p);
/* Opens the data file on fd (already locked for a writer); owns fd. */
int pager_open_fd(int fd, const mp_options *opts, mp_pager **out, mp_open_report *report);
/* Did the writer commit since pages 0-2 read as snap? (pager.c) */
int pager_reader_saw_a_commit(const mp_pager *p, const uint8_t *snap, int loaded);
/* A freed page: returns 1 when it is held back (pending) for readers. */
int readers_pin(mp_pager *p, uint64_t id);
/* readers_pin for n freed pages at once (the FIFO grows once). */
int readers_pin_many(mp_pager *p, const uint64_t *ids, uint64_t n);
/* The frees so far are durable but the last `later` pins (made while the
 * flush was in flight, group.c): returns 1 when readers.c took over the
 * pending map (then pages are released as readers allow). */
int readers_settle(mp_pager *p, uint64_t later);
/* Releases pins readers no longer need; force tests every slot's lock (before
 * the file grows for them). Returns 1 when pages were released. */
int readers_reclaim(mp_pager *p, int force);
/* Pending pages a commit cannot release: durable frees readers still hold. */
uint64_t readers_held(const mp_pager *p);
/* Pending pages a commit would release: the others. The one count that says
 * whether settling the deferred state, rather than growing, gains pages. */
uint64_t readers_releasable(const mp_pager *p);
/* After a rollback reloaded the committed state: pin the durable frees again. */
void readers_after_reload(mp_pager *p);
/* A reader loaded the state pages 0-2 read as in snap. */
void readers_note_loaded(mp_pager *p, const uint8_t *snap);
/* Lets go of the table (clearing the slot only when clear is set). */
void readers_forget(mp_pager *p, int clear);
void readers_release(mp_pager *p);

#endif /* MP_READERS_H */
