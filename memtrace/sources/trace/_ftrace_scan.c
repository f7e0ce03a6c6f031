/* One pass over ftrace text lines → the event table's columns.
 *
 * The scanner reads whole lines from a buffer (`Scanner.feed`) and appends one row per event line
 * to column arrays that it owns until `Scanner.finish` hands them to Python (zero-copy, as objects
 * with the buffer protocol). It implements exactly the rules of the reference parser in
 * ftrace_reference.py (a regex per header, `_kv_spans` per field list, `parse_ints` per number):
 *
 *  - the header: only a line whose header reads one way is taken here (comm, `-pid`, blanks,
 *    `[cpu]`, blanks, an optional flags word, `secs[.frac]:`, blanks, `name:`); any other line
 *    (a tgid column, a dash-and-digits inside comm followed by a blank, numbers that do not fit,
 *    LOST lines, junk) goes to `header_cb`, which runs the reference regex and either returns the
 *    header's spans or counts the line; so odd lines cost speed, never correctness;
 *  - fields: every `key=` (a key starts the field list or follows a blank) splits the list; a
 *    value runs to the blank before the next key, less trailing spaces; text before the first key
 *    is the prefix (a kprobe's `(func+0x0/0x40)`);
 *  - a key's column comes from `event_cb`, asked once per (event name, kprobe) and key; numbers
 *    are read as `parse_ints` reads them and typed as `_typed` types them (a number that does
 *    not fit its column is counted, and its `key=value` goes to `args`); strings of category
 *    columns are interned (ids in order of first appearance); fields without a column, and the
 *    prefix, are joined with single spaces into `args`.
 *
 * Every read is bounds-checked against the line; nothing is read past the span fed.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAXNUM 16
#define MAXCAT 8
#define COL_CAT0 16 /* column ids: 0..15 numeric, 16..23 category, 32 boolean */
#define COL_BOOL 32
#define KCACHE 24 /* keys remembered per event, in line order */

enum { K_I64 = 0, K_I32 = 1, K_U64 = 2, K_U32 = 3 };

/* ------------------------------------------------------------------------------------------ */
/* growable byte vectors (realloc: large blocks move with mremap, untouched pages cost nothing) */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int mapped; /* the columns: their own mappings, grown with mremap (never copied) */
} vec_t;

static size_t page_size;

static int vec_reserve(vec_t *v, size_t need)
{
    if (need <= v->cap)
        return 0;
    size_t nc = v->cap ? v->cap : (v->mapped ? ((size_t)1 << 20) : 256);
    while (nc < need) {
        if (nc > ((size_t)1 << 60)) {
            PyErr_NoMemory();
            return -1;
        }
        nc *= 2;
    }
    if (v->mapped) {
        void *q = v->p ? mremap(v->p, v->cap, nc, MREMAP_MAYMOVE)
                       : mmap(NULL, nc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (q == MAP_FAILED) {
            PyErr_NoMemory();
            return -1;
        }
        v->p = q;
    } else {
        uint8_t *q = realloc(v->p, nc);
        if (!q) {
            PyErr_NoMemory();
            return -1;
        }
        v->p = q;
    }
    v->cap = nc;
    return 0;
}

static void vec_free(vec_t *v)
{
    if (v->p) {
        if (v->mapped)
            munmap(v->p, v->cap);
        else
            free(v->p);
    }
    int m = v->mapped;
    memset(v, 0, sizeof(*v));
    v->mapped = m;
}

static inline int vec_put(vec_t *v, const void *src, size_t n)
{
    if (v->len + n > v->cap && vec_reserve(v, v->len + n) < 0)
        return -1;
    if (n)
        memcpy(v->p + v->len, src, n);
    v->len += n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* a buffer object owning malloc'd memory: numpy.frombuffer / pyarrow.py_buffer take it as is */

typedef struct {
    PyObject_HEAD
    void *p;
    Py_ssize_t n;
    size_t maplen; /* 0: malloc'd */
} BufObject;

static void buf_dealloc(BufObject *self)
{
    if (self->maplen)
        munmap(self->p, self->maplen);
    else
        free(self->p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int buf_getbuffer(BufObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->p, self->n, 0, flags);
}

static PyBufferProcs buf_as_buffer = {(getbufferproc)buf_getbuffer, NULL};

static PyTypeObject BufType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "memtrace.sources.trace._ftrace_scan.Buf",
    .tp_basicsize = sizeof(BufObject),
    .tp_dealloc = (destructor)buf_dealloc,
    .tp_as_buffer = &buf_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "memory owned by the scanner's results",
};

/* a Buf taking v's memory (shrunk to n bytes); v is left empty */
static PyObject *buf_take(vec_t *v, size_t n)
{
    BufObject *b = PyObject_New(BufObject, &BufType);
    if (!b)
        return NULL;
    void *p = v->p;
    b->maplen = 0;
    if (!p || n == 0) {
        vec_free(v);
        p = calloc(1, 16);
        if (!p) {
            Py_DECREF(b);
            return PyErr_NoMemory();
        }
    } else if (v->mapped) {
        size_t keep = (n + page_size - 1) / page_size * page_size;
        if (keep < v->cap)
            munmap((uint8_t *)p + keep, v->cap - keep);
        else
            keep = v->cap;
        b->maplen = keep;
    } else if (n < v->cap) {
        void *q = realloc(p, n);
        if (q)
            p = q;
    }
    b->p = p;
    b->n = (Py_ssize_t)n;
    int m = v->mapped;
    memset(v, 0, sizeof(*v));
    v->mapped = m;
    return (PyObject *)b;
}

/* ------------------------------------------------------------------------------------------ */
/* interning byte strings: id = order of first appearance */

/* a[0:n] == b[0:n], for the short strings of a trace line (no call into libc) */
static inline int same_bytes(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint64_t x, y;
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y)
                return 0;
        }
        if (i == n)
            return 1;
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    if (n >= 4) {
        uint32_t u, v;
        memcpy(&u, a, 4);
        memcpy(&v, b, 4);
        if (u != v)
            return 0;
        memcpy(&u, a + n - 4, 4);
        memcpy(&v, b + n - 4, 4);
        return u == v;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static inline uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)n * 0xFF51AFD7ED558CCDULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xC2B2AE3D27D4EB4FULL;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, p, n);
        h = (h ^ w) * 0xC2B2AE3D27D4EB4FULL;
    }
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 29;
    return h | 1; /* 0 marks an empty slot */
}

typedef struct {
    uint64_t *h;
    int32_t *id;
    size_t mask;
    size_t count;
    vec_t arena; /* the strings, back to back */
    vec_t offs;  /* uint64 start of each string, and one past the last */
    int64_t last;
} intern_t;

static int intern_init(intern_t *t)
{
    memset(t, 0, sizeof(*t));
    t->mask = 63;
    t->h = calloc(64, sizeof(uint64_t));
    t->id = calloc(64, sizeof(int32_t));
    t->last = -1;
    if (!t->h || !t->id || vec_reserve(&t->arena, 64) < 0 || vec_reserve(&t->offs, 64) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t z = 0;
    return vec_put(&t->offs, &z, 8);
}

static void intern_free(intern_t *t)
{
    free(t->h);
    free(t->id);
    free(t->arena.p);
    free(t->offs.p);
    memset(t, 0, sizeof(*t));
}

static inline const uint8_t *intern_str(const intern_t *t, size_t i, size_t *n)
{
    const uint64_t *o = (const uint64_t *)t->offs.p;
    *n = (size_t)(o[i + 1] - o[i]);
    return t->arena.p + o[i];
}

static int intern_rehash(intern_t *t)
{
    size_t nsize = (t->mask + 1) * 2;
    uint64_t *nh = calloc(nsize, sizeof(uint64_t));
    int32_t *nid = calloc(nsize, sizeof(int32_t));
    if (!nh || !nid) {
        free(nh);
        free(nid);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        if (!t->h[i])
            continue;
        size_t j = t->h[i] & (nsize - 1);
        while (nh[j])
            j = (j + 1) & (nsize - 1);
        nh[j] = t->h[i];
        nid[j] = t->id[i];
    }
    free(t->h);
    free(t->id);
    t->h = nh;
    t->id = nid;
    t->mask = nsize - 1;
    return 0;
}

/* id of p[0:n], added if new; -1 with an exception set on failure */
static inline int64_t intern_get(intern_t *t, const uint8_t *p, size_t n, int *added)
{
    size_t ln;
    if (t->last >= 0) {
        const uint8_t *s = intern_str(t, (size_t)t->last, &ln);
        if (ln == n && same_bytes(s, p, n))
            return t->last;
    }
    uint64_t hv = hash_bytes(p, n);
    size_t i = hv & t->mask;
    for (;;) {
        uint64_t x = t->h[i];
        if (!x)
            break;
        if (x == hv) {
            int32_t k = t->id[i];
            const uint8_t *s = intern_str(t, (size_t)k, &ln);
            if (ln == n && same_bytes(s, p, n)) {
                t->last = k;
                return k;
            }
        }
        i = (i + 1) & t->mask;
    }
    if (t->count >= (size_t)INT32_MAX - 1) {
        PyErr_SetString(PyExc_OverflowError, "too many distinct strings in one column");
        return -1;
    }
    if (vec_put(&t->arena, p, n) < 0)
        return -1;
    uint64_t end = t->arena.len;
    if (vec_put(&t->offs, &end, 8) < 0)
        return -1;
    int32_t k = (int32_t)t->count++;
    t->h[i] = hv;
    t->id[i] = k;
    if (t->count * 2 > t->mask && intern_rehash(t) < 0)
        return -1;
    t->last = k;
    if (added)
        *added = 1;
    return k;
}

/* ------------------------------------------------------------------------------------------ */
/* events: (name, kprobe) → code, and each key's column, from event_cb */

typedef struct {
    int32_t code;
    int known, va, kprobe;
    int32_t name_id;
    int64_t unknown;
    PyObject *keymap; /* dict bytes -> int column id */
    int32_t ccol_kid[KCACHE]; /* the columns of the keys of this event's last line, by position */
    int8_t ccol[KCACHE];
} sub_t;

/* (event, key id) → column (-1: none), for every pair met; one table, so garbage with many
 * names and many keys costs memory in proportion to the pairs seen, not names x keys */
typedef struct {
    uint64_t *key; /* (event index << 32 | key id) + 1; 0 = empty */
    int8_t *col;
    size_t mask, count;
} colmap_t;

static int colmap_init(colmap_t *m)
{
    m->mask = 255;
    m->count = 0;
    m->key = calloc(256, sizeof(uint64_t));
    m->col = calloc(256, 1);
    if (!m->key || !m->col) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void colmap_free(colmap_t *m)
{
    free(m->key);
    free(m->col);
    memset(m, 0, sizeof(*m));
}

static inline size_t colmap_slot(const colmap_t *m, uint64_t k)
{
    uint64_t h = k * 0x9E3779B97F4A7C15ULL;
    size_t i = (size_t)(h >> 20) & m->mask;
    while (m->key[i] && m->key[i] != k)
        i = (i + 1) & m->mask;
    return i;
}

static int colmap_put(colmap_t *m, uint64_t k, int8_t c)
{
    size_t i = colmap_slot(m, k);
    if (!m->key[i])
        m->count++;
    m->key[i] = k;
    m->col[i] = c;
    if (m->count * 2 <= m->mask)
        return 0;
    colmap_t n;
    size_t size = (m->mask + 1) * 2;
    n.mask = size - 1;
    n.count = m->count;
    n.key = calloc(size, sizeof(uint64_t));
    n.col = calloc(size, 1);
    if (!n.key || !n.col) {
        free(n.key);
        free(n.col);
        PyErr_NoMemory();
        return -1;
    }
    for (size_t j = 0; j <= m->mask; j++)
        if (m->key[j]) {
            size_t t = colmap_slot(&n, m->key[j]);
            n.key[t] = m->key[j];
            n.col[t] = m->col[j];
        }
    colmap_free(m);
    *m = n;
    return 0;
}

typedef struct {
    int marker;
    int32_t sub[2]; /* index into subs, -1 until asked */
    int32_t ckid[KCACHE]; /* the key ids of this name's last line, in order */
    int ncache;
} name_t;

/* ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *event_cb, *header_cb;
    int nnum, ncat;
    int num_kind[MAXNUM], num_base[MAXNUM];
    int cat_twin[MAXCAT];
    int va_col;
    PyObject *markers; /* tuple of bytes */
    int busy, done;
    uint64_t lines_read;
    uint64_t out_of_range; /* numbers that do not fit their column (IngestStats.values_out_of_range) */

    /* rows */
    size_t rows, cap;
    vec_t ts, cpu, pid, ev;
    vec_t numv[MAXNUM], numm[MAXNUM];
    vec_t cat[MAXCAT];
    vec_t boolv, boolm;
    /* string columns: 0 marker, 1 args */
    vec_t sbits[2], soff[2], sdata[2], snonascii[2];
    size_t snulls[2];

    intern_t cats[MAXCAT];
    intern_t names, keys;
    colmap_t colmap;
    name_t *nm;
    size_t nm_cap;
    sub_t *subs;
    size_t nsubs, subs_cap;

    /* per line scratch: key starts and '=' positions */
    size_t *ks, *eqs;
    int32_t *kid;
    size_t kcap;
} Scanner;

static inline int is_s(uint8_t c) { return c == ' ' || (c >= 9 && c <= 13); }
static inline int is_d(uint8_t c) { return (unsigned)(c - '0') < 10u; }

static uint8_t KEYCH[256], KEY0[256], HEXV[256], DECV[256];

static void tables_init(void)
{
    memset(HEXV, 255, 256);
    memset(DECV, 255, 256);
    for (int c = 0; c < 256; c++) {
        int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        int digit = c >= '0' && c <= '9';
        KEY0[c] = alpha || c == '_';
        KEYCH[c] = alpha || digit || c == '_' || c == '.' || c == '-' || c == '>';
        if (digit) {
            HEXV[c] = (uint8_t)(c - '0');
            DECV[c] = (uint8_t)(c - '0');
        }
        if (c >= 'a' && c <= 'f')
            HEXV[c] = (uint8_t)(c - 'a' + 10);
        if (c >= 'A' && c <= 'F')
            HEXV[c] = (uint8_t)(c - 'A' + 10);
    }
}

/* `parse_ints` on b[s:e): optional '-', optional 0x; base 16 reads hex without 0x. Returns 0 for
 * not a number, 1 for a number whose magnitude (*mag) is below 2^64, with its sign (*neg), and 2
 * for a number whose magnitude is 2^64 or more. Leading zeros do not count: more than 16
 * significant hex or 20 significant decimal digits (or 20 of 18446744073709551616 and above) are
 * 2; every byte is still read, so a non-digit anywhere makes it 0. (Unsigned arithmetic only: a
 * value that overflows is wrapped, which is defined, and then not used.) */
static inline int parse_num(const uint8_t *b, int64_t s, int64_t e, int base, uint64_t *mag, int *neg)
{
    int hex = base == 16;
    *neg = 0;
    if (s < e && b[s] == '-') {
        *neg = 1;
        s++;
    }
    if (e - s >= 2 && b[s] == '0' && (b[s + 1] | 0x20) == 'x') {
        hex = 1;
        s += 2;
    }
    if (e - s <= 0)
        return 0;
    while (e - s > 1 && b[s] == '0')
        s++;
    int64_t ln = e - s;
    uint64_t v = 0;
    int big;
    if (hex) {
        big = ln > 16;
        for (int64_t k = 0; k < ln; k++) {
            uint8_t d = HEXV[b[s + k]];
            if (d == 255)
                return 0;
            v = (v << 4) | d;
        }
    } else {
        big = ln > 20;
        for (int64_t k = 0; k < ln; k++) {
            uint8_t d = DECV[b[s + k]];
            if (d == 255)
                return 0;
            if (k == 19 && v > (UINT64_MAX - d) / 10)
                big = 1;
            v = v * 10 + d;
        }
    }
    if (big)
        return 2;
    *mag = v;
    return 1;
}

static int grow_rows(Scanner *S)
{
    size_t nc = S->cap ? S->cap * 2 : 65536;
    if (vec_reserve(&S->ts, nc * 8) < 0 || vec_reserve(&S->cpu, nc * 4) < 0 || vec_reserve(&S->pid, nc * 4) < 0 ||
        vec_reserve(&S->ev, nc * 4) < 0 || vec_reserve(&S->boolv, nc) < 0 || vec_reserve(&S->boolm, nc) < 0)
        return -1;
    for (int c = 0; c < S->nnum; c++) {
        size_t w = (S->num_kind[c] == K_I32 || S->num_kind[c] == K_U32) ? 4 : 8;
        if (vec_reserve(&S->numv[c], nc * w) < 0 || vec_reserve(&S->numm[c], nc) < 0)
            return -1;
    }
    for (int c = 0; c < S->ncat; c++)
        if (vec_reserve(&S->cat[c], nc * 4) < 0)
            return -1;
    for (int k = 0; k < 2; k++)
        if (vec_reserve(&S->sbits[k], nc / 8 + 8) < 0 || vec_reserve(&S->soff[k], (nc + 1) * 8) < 0)
            return -1;
    S->cap = nc;
    return 0;
}

/* A number (magnitude, sign) into numeric column c of row r, typed as `_typed` does; 0 when it
 * does not fit the column (nothing written). Int64 holds [-2^63, 2^63), Int32 [-2^31, 2^31),
 * UInt32 [0, 2^32), UInt64 any magnitude below 2^64, mod 2^64. Values are formed in unsigned
 * arithmetic and narrowed only once in range (no signed overflow, no out-of-range conversion).
 * The columns live in fresh mappings (zero bytes) and each row is written once, so a null needs
 * no write: value 0 and a valid flag 0, turned into pandas' null mask by `finish`. A column is
 * written at most once per row, or once invalid/valid and then once more valid (an override),
 * never valid then invalid. */
static inline int put_num(Scanner *S, int c, size_t r, uint64_t mag, int neg)
{
    switch (S->num_kind[c]) {
    case K_I64:
        if (mag > (neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1))
            return 0;
        ((uint64_t *)S->numv[c].p)[r] = neg ? (uint64_t)0 - mag : mag; /* int64's bits */
        break;
    case K_U64:
        ((uint64_t *)S->numv[c].p)[r] = neg ? (uint64_t)0 - mag : mag;
        break;
    case K_I32:
        if (mag > (neg ? (uint64_t)1 << 31 : ((uint64_t)1 << 31) - 1))
            return 0;
        ((int32_t *)S->numv[c].p)[r] = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
        break;
    case K_U32:
        if (mag > UINT32_MAX || (neg && mag))
            return 0;
        ((uint32_t *)S->numv[c].p)[r] = (uint32_t)mag;
        break;
    }
    S->numm[c].p[r] = 1;
    return 1;
}

/* the first c in [p, e), reading at most up to lim (the end of the bytes fed) */
static inline const uint8_t *find_byte(const uint8_t *p, const uint8_t *e, const uint8_t *lim, uint8_t c)
{
#ifdef __SSE2__
    const __m128i cc = _mm_set1_epi8((char)c);
    while (p < e && p + 16 <= lim) {
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)p), cc));
        if (m) {
            const uint8_t *r = p + __builtin_ctz(m);
            return r < e ? r : NULL;
        }
        p += 16;
    }
#endif
    for (; p < e; p++)
        if (*p == c)
            return p;
    return NULL;
}

static inline void set_bit(uint8_t *bits, size_t r, int v)
{
    if ((r & 7) == 0)
        bits[r >> 3] = (uint8_t)v;
    else
        bits[r >> 3] |= (uint8_t)(v << (r & 7));
}

/* close string column k of row r: valid when `valid`, its bytes from `start` to the data's end */
static int str_end(Scanner *S, int k, size_t r, int valid, size_t start)
{
    int64_t *off = (int64_t *)S->soff[k].p;
    set_bit(S->sbits[k].p, r, valid);
    off[r + 1] = (int64_t)S->sdata[k].len;
    if (!valid) {
        S->snulls[k]++;
        return 0;
    }
    const uint8_t *p = S->sdata[k].p + start;
    size_t n = S->sdata[k].len - start;
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= p[i];
    if (acc & 0x8080808080808080ULL) {
        int64_t rr = (int64_t)r;
        return vec_put(&S->snonascii[k], &rr, 8);
    }
    return 0;
}

static name_t *name_info(Scanner *S, int32_t id, const uint8_t *p, size_t n)
{
    if ((size_t)id >= S->nm_cap) {
        size_t nc = S->nm_cap ? S->nm_cap * 2 : 64;
        while (nc <= (size_t)id)
            nc *= 2;
        name_t *q = realloc(S->nm, nc * sizeof(name_t));
        if (!q) {
            PyErr_NoMemory();
            return NULL;
        }
        for (size_t i = S->nm_cap; i < nc; i++) {
            memset(&q[i], 0, sizeof(name_t));
            q[i].marker = -1;
            q[i].sub[0] = q[i].sub[1] = -1;
        }
        S->nm = q;
        S->nm_cap = nc;
    }
    name_t *ni = &S->nm[id];
    if (ni->marker < 0) {
        ni->marker = 0;
        Py_ssize_t nmk = PyTuple_GET_SIZE(S->markers);
        for (Py_ssize_t i = 0; i < nmk; i++) {
            PyObject *m = PyTuple_GET_ITEM(S->markers, i);
            if ((size_t)PyBytes_GET_SIZE(m) == n && memcmp(PyBytes_AS_STRING(m), p, n) == 0)
                ni->marker = 1;
        }
    }
    return ni;
}

/* the event (name, kprobe): asked of event_cb the first time */
static sub_t *get_sub(Scanner *S, int32_t name_id, int kprobe)
{
    name_t *ni = &S->nm[name_id];
    if (ni->sub[kprobe] >= 0)
        return &S->subs[ni->sub[kprobe]];
    size_t ln;
    const uint8_t *p = intern_str(&S->names, (size_t)name_id, &ln);
    PyObject *r = PyObject_CallFunction(S->event_cb, "y#O", (const char *)p, (Py_ssize_t)ln, kprobe ? Py_True : Py_False);
    if (!r)
        return NULL;
    long code;
    int known, va;
    PyObject *keymap;
    if (!PyArg_ParseTuple(r, "lppO!", &code, &known, &va, &PyDict_Type, &keymap)) {
        Py_DECREF(r);
        return NULL;
    }
    if (code < 0 || code > INT32_MAX) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_ValueError, "event_cb: code out of range");
        return NULL;
    }
    if (S->nsubs == S->subs_cap) {
        size_t nc = S->subs_cap ? S->subs_cap * 2 : 32;
        sub_t *q = realloc(S->subs, nc * sizeof(sub_t));
        if (!q) {
            Py_DECREF(r);
            PyErr_NoMemory();
            return NULL;
        }
        S->subs = q;
        S->subs_cap = nc;
    }
    sub_t *sb = &S->subs[S->nsubs];
    memset(sb, 0, sizeof(*sb));
    for (int i = 0; i < KCACHE; i++)
        sb->ccol_kid[i] = -1;
    sb->code = (int32_t)code;
    sb->known = known;
    sb->va = va;
    sb->kprobe = kprobe;
    sb->name_id = name_id;
    Py_INCREF(keymap);
    sb->keymap = keymap;
    Py_DECREF(r);
    ni->sub[kprobe] = (int32_t)S->nsubs++;
    return sb;
}

/* the column of key `kid` at position i of event sb's field list (-1: none; -3: error set) */
static inline int col_of(Scanner *S, sub_t *sb, int32_t kid, size_t i)
{
    if (i < KCACHE && sb->ccol_kid[i] == kid)
        return sb->ccol[i];
    uint64_t key = (((uint64_t)(sb - S->subs) << 32) | (uint32_t)kid) + 1;
    size_t slot = colmap_slot(&S->colmap, key);
    int c;
    if (S->colmap.key[slot]) {
        c = S->colmap.col[slot];
    } else {
        size_t ln;
        const uint8_t *p = intern_str(&S->keys, (size_t)kid, &ln);
        PyObject *k = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)ln);
        if (!k)
            return -3;
        PyObject *v = PyDict_GetItemWithError(sb->keymap, k);
        Py_DECREF(k);
        if (!v && PyErr_Occurred())
            return -3;
        c = -1;
        if (v) {
            long x = PyLong_AsLong(v);
            if (x == -1 && PyErr_Occurred())
                return -3;
            int okc = (x >= 0 && x < S->nnum) || (x >= COL_CAT0 + 1 && x < COL_CAT0 + S->ncat) || x == COL_BOOL;
            if (!okc) {
                PyErr_Format(PyExc_ValueError, "event_cb: bad column id %ld", x);
                return -3;
            }
            c = (int)x;
        }
        if (colmap_put(&S->colmap, key, (int8_t)c) < 0)
            return -3;
    }
    if (i < KCACHE) {
        sb->ccol_kid[i] = kid;
        sb->ccol[i] = (int8_t)c;
    }
    return c;
}

static inline int args_part(Scanner *S, int *part, const uint8_t *b, size_t s, size_t e)
{
    vec_t *d = &S->sdata[1];
    size_t n = e > s ? e - s : 0;
    if (d->len + n + 1 > d->cap && vec_reserve(d, d->len + n + 1) < 0)
        return -1;
    if ((*part)++)
        d->p[d->len++] = ' ';
    memcpy(d->p + d->len, b + s, n);
    d->len += n;
    return 0;
}

/* one event line whose header is known: append its row */
static int emit(Scanner *S, const uint8_t *b, const uint8_t *lim, int64_t tns, int64_t cpu, int64_t pid, size_t cs, size_t ce, size_t ns,
                size_t ne, size_t as, size_t ae)
{
    if (S->rows == S->cap && grow_rows(S) < 0)
        return -1;
    size_t r = S->rows;
    ((int64_t *)S->ts.p)[r] = tns;
    ((int32_t *)S->cpu.p)[r] = (int32_t)cpu;
    ((int32_t *)S->pid.p)[r] = (int32_t)pid;
    /* category ids are stored plus one (0: null) until `finish` */
    int64_t cid = intern_get(&S->cats[0], b + cs, ce - cs, NULL);
    if (cid < 0)
        return -1;
    ((int32_t *)S->cat[0].p)[r] = (int32_t)cid + 1;

    int64_t nid = intern_get(&S->names, b + ns, ne - ns, NULL);
    if (nid < 0)
        return -1;
    name_t *ni = name_info(S, (int32_t)nid, b + ns, ne - ns);
    if (!ni)
        return -1;
    size_t a0 = S->sdata[1].len;
    int part = 0;
    if (ni->marker) {
        sub_t *sb = get_sub(S, (int32_t)nid, 0);
        if (!sb)
            return -1;
        ((int32_t *)S->ev.p)[r] = sb->code;
        size_t m0 = S->sdata[0].len;
        if (vec_put(&S->sdata[0], b + as, ae - as) < 0 || str_end(S, 0, r, 1, m0) < 0 || str_end(S, 1, r, 0, a0) < 0)
            return -1;
        S->rows++;
        return 0;
    }
    if (str_end(S, 0, r, 0, S->sdata[0].len) < 0)
        return -1;

    /* keys: each '=' whose run of key characters before it starts the list or follows a blank.
     * The keys of this name's last line are tried first: key k of length L ends at this '=' when
     * the L bytes before it are k and the byte before those is a blank (or the list's start), and
     * then the run of key characters is exactly k, as the walk back would find. */
    size_t nk = 0, q = as;
    while (q < ae) {
        const uint8_t *e = find_byte(b + q, b + ae, lim, '=');
        if (!e)
            break;
        size_t eq = (size_t)(e - b), j = eq;
        int32_t hit = -1;
        if (nk < (size_t)ni->ncache) {
            size_t kl;
            const uint8_t *k = intern_str(&S->keys, (size_t)ni->ckid[nk], &kl);
            if (eq - as >= kl && (eq - kl == as || is_s(b[eq - kl - 1])) && same_bytes(b + eq - kl, k, kl)) {
                hit = ni->ckid[nk];
                j = eq - kl;
            }
        }
        if (hit < 0)
            while (j > as && KEYCH[b[j - 1]])
                j--;
        if (j < eq && KEY0[b[j]] && (j == as || is_s(b[j - 1]))) {
            if (nk == S->kcap) {
                size_t nc = S->kcap ? S->kcap * 2 : 64;
                size_t *a1 = realloc(S->ks, nc * sizeof(size_t));
                if (!a1) {
                    PyErr_NoMemory();
                    return -1;
                }
                S->ks = a1;
                size_t *a2 = realloc(S->eqs, nc * sizeof(size_t));
                if (!a2) {
                    PyErr_NoMemory();
                    return -1;
                }
                S->eqs = a2;
                int32_t *a3 = realloc(S->kid, nc * sizeof(int32_t));
                if (!a3) {
                    PyErr_NoMemory();
                    return -1;
                }
                S->kid = a3;
                S->kcap = nc;
            }
            if (hit < 0) {
                int64_t kid = intern_get(&S->keys, b + j, eq - j, NULL);
                if (kid < 0)
                    return -1;
                hit = (int32_t)kid;
                if (nk < KCACHE) {
                    ni->ckid[nk] = hit;
                    if ((int)nk >= ni->ncache)
                        ni->ncache = (int)nk + 1;
                }
            }
            S->ks[nk] = j;
            S->eqs[nk] = eq;
            S->kid[nk] = hit;
            nk++;
        }
        q = eq + 1;
    }
    size_t pre_end = nk ? S->ks[0] : ae;
    while (pre_end > as && b[pre_end - 1] == ' ')
        pre_end--;
    int kprobe = 0;
    if (pre_end > as && b[as] == '(') {
        size_t pl = pre_end - as;
        kprobe = memmem(b + as, pl, " <- ", 4) != NULL || memmem(b + as, pl, "+0x", 3) != NULL;
    }
    sub_t *sb = get_sub(S, (int32_t)nid, kprobe);
    if (!sb)
        return -1;
    ((int32_t *)S->ev.p)[r] = sb->code;
    if (!sb->known)
        sb->unknown++;
    uint64_t locked = 0, used = 0;
    if (pre_end > as) {
        if (sb->va && S->va_col >= 0) { /* a UInt64 column; the prefix stays in args as it is */
            uint64_t v;
            int ng;
            if (parse_num(b, (int64_t)as + 10, (int64_t)pre_end, 0, &v, &ng) == 1 && put_num(S, S->va_col, r, v, ng))
                locked |= 1ULL << S->va_col;
        }
        if (args_part(S, &part, b, as, pre_end) < 0)
            return -1;
    }
    for (size_t i = 0; i < nk; i++) {
        size_t ks = S->ks[i], eq = S->eqs[i], vs = eq + 1;
        size_t ve = i + 1 < nk ? S->ks[i + 1] - 1 : ae;
        if (ve < vs) /* cannot happen: the next key starts after a blank after this '=' */
            ve = vs;
        while (ve > vs && b[ve - 1] == ' ')
            ve--;
        int c = col_of(S, sb, S->kid[i], i);
        if (c == -3)
            return -1;
        if (c >= 0 && !(used & (1ULL << c))) {
            used |= 1ULL << c;
            if (c < COL_CAT0) {
                /* a number that does not fit the column: null, counted, and `key=value` to args
                 * (whether or not the column was already set from the prefix or gfp_flags) */
                uint64_t v;
                int ng, st = parse_num(b, (int64_t)vs, (int64_t)ve, S->num_base[c], &v, &ng);
                if (st == 1 && (locked & (1ULL << c)))
                    continue;
                if (st == 1 && put_num(S, c, r, v, ng))
                    continue;
                if (st) {
                    S->out_of_range++;
                    if (args_part(S, &part, b, ks, ve) < 0)
                        return -1;
                }
            } else if (c == COL_BOOL) {
                if (ve > vs) {
                    uint8_t c0 = b[vs] | 0x20;
                    int t = c0 == 't' || c0 == '1' || c0 == 'y';
                    int f = c0 == 'f' || c0 == '0' || c0 == 'n';
                    S->boolv.p[r] = (uint8_t)t;
                    S->boolm.p[r] = (uint8_t)(t || f);
                }
            } else {
                int cc = c - COL_CAT0;
                int64_t id = intern_get(&S->cats[cc], b + vs, ve - vs, NULL);
                if (id < 0)
                    return -1;
                ((int32_t *)S->cat[cc].p)[r] = (int32_t)id + 1;
                int tw = S->cat_twin[cc];
                if (tw >= 0) { /* a gfp printed as a number: the (UInt64) numeric column too */
                    uint64_t v;
                    int ng;
                    if (parse_num(b, (int64_t)vs, (int64_t)ve, 0, &v, &ng) == 1 && put_num(S, tw, r, v, ng))
                        locked |= 1ULL << tw;
                }
            }
            continue;
        }
        if (args_part(S, &part, b, ks, ve) < 0)
            return -1;
    }
    if (str_end(S, 1, r, part > 0, a0) < 0)
        return -1;
    S->rows++;
    return 0;
}

/* the first byte of [p, e) that is not ' ' (e when none); e is inside the bytes fed */
static inline size_t skip_spaces(const uint8_t *b, size_t p, size_t e)
{
#ifdef __SSE2__
    const __m128i sp = _mm_set1_epi8(' ');
    while (p + 16 <= e) {
        unsigned m = ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(b + p)), sp)) & 0xFFFFu;
        if (m)
            return p + (size_t)__builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < e && b[p] == ' ')
        p++;
    return p;
}

/* the first ':' or blank in [p, e) (e when none), reading at most up to lim */
static inline size_t to_colon_or_blank(const uint8_t *b, size_t p, size_t e, const uint8_t *lim)
{
#ifdef __SSE2__
    const __m128i colon = _mm_set1_epi8(':'), sp = _mm_set1_epi8(' '), nine = _mm_set1_epi8(9), four = _mm_set1_epi8(4);
    while (p < e && b + p + 16 <= lim) {
        __m128i x = _mm_loadu_si128((const __m128i *)(b + p));
        __m128i c9 = _mm_sub_epi8(x, nine); /* 9..13 → 0..4 */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, colon), _mm_cmpeq_epi8(x, sp)),
                                   _mm_cmpeq_epi8(_mm_min_epu8(c9, four), c9));
        unsigned m = (unsigned)_mm_movemask_epi8(hit);
        if (m) {
            size_t r = p + (size_t)__builtin_ctz(m);
            return r < e ? r : e;
        }
        p += 16;
    }
#endif
    while (p < e && b[p] != ':' && !is_s(b[p]))
        p++;
    return p;
}

static const uint64_t POW10[10] = {1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL, 1000000ULL, 10000000ULL, 100000000ULL,
                                   1000000000ULL};

/* the header that only one reading of the reference regex gives; 0 when the line must go to
 * header_cb. The regex: ^\s*(comm.*?)-(pid\d+)\s+(?:\(\s*[-\d]*\)\s+)?\[(cpu\d+)\]\s+
 * (?:[^\s\d][^\s]*\s+)?(ts\d+(?:\.\d+)?):\s+(event[^:\s]+):\s*(args.*?)\s*$ */
static int fast_header(const uint8_t *b, size_t ls, size_t le, const uint8_t *lim, int64_t *tns, int64_t *cpu,
                       int64_t *pid, size_t *cs, size_t *ce, size_t *ns, size_t *ne, size_t *as, size_t *ae)
{
    size_t i = skip_spaces(b, ls, le);
    while (i < le && is_s(b[i]))
        i++;
    *cs = i;
    /* comm ends at the first '-' followed by digits and a blank: at an earlier '-' the regex
     * fails; if the rest fails at this one, the regex may still match at a later one → slow */
    size_t j = i, k;
    uint64_t v;
    for (;;) {
        if (j >= le)
            return 0;
        const uint8_t *q = find_byte(b + j, b + le, lim, '-');
        if (!q)
            return 0;
        j = (size_t)(q - b);
        k = j + 1;
        v = 0;
        while (k < le && is_d(b[k])) {
            v = v * 10 + (b[k] - '0');
            k++;
        }
        if (k > j + 1 && k < le && is_s(b[k]))
            break;
        j = k > j + 1 ? k : j + 1;
    }
    *ce = j;
    if (k - (j + 1) > 10 || v > INT32_MAX)
        return 0;
    *pid = (int64_t)v;
    size_t m = k;
    while (m < le && is_s(b[m]))
        m++;
    if (m >= le || b[m] != '[') /* a tgid column, or no match at this '-' */
        return 0;
    size_t c0 = m + 1, c1 = c0;
    v = 0;
    while (c1 < le && is_d(b[c1])) {
        v = v * 10 + (b[c1] - '0');
        c1++;
    }
    if (c1 == c0 || c1 >= le || b[c1] != ']' || c1 - c0 > 10 || v > INT32_MAX)
        return 0;
    *cpu = (int64_t)v;
    size_t p = c1 + 1;
    if (p >= le)
        return 0;
    /* No blank before a timestamp that fills its width: trace-cmd prints "[%03d]%12llu" (a raw
     * count) or "[%03d]%5llu.%09llu", so a 12+ digit count or 6+ digit seconds follow "]". */
    if (!is_d(b[p])) {
        if (!is_s(b[p]))
            return 0;
        p = skip_spaces(b, p, le);
        while (p < le && is_s(b[p]))
            p++;
        if (p >= le)
            return 0;
        if (!is_d(b[p])) { /* the flags word */
            while (p < le && !is_s(b[p]))
                p++;
            p = skip_spaces(b, p, le);
            while (p < le && is_s(b[p]))
                p++;
            if (p >= le || !is_d(b[p]))
                return 0;
        }
    }
    uint64_t secs = 0;
    while (p < le && is_d(b[p])) {
        secs = secs * 10 + (b[p] - '0');
        if (secs > 999999999999999999ULL) /* keeps the next step exact; such a line goes to the regex */
            return 0;
        p++;
    }
    uint64_t t;
    if (p < le && b[p] == '.') {
        size_t f0 = p + 1, f1 = f0;
        uint64_t frac = 0;
        while (f1 < le && is_d(b[f1])) {
            if (f1 - f0 < 9)
                frac = frac * 10 + (b[f1] - '0');
            f1++;
        }
        if (f1 == f0 || f1 >= le || b[f1] != ':')
            return 0;
        if (secs > 9223372036ULL)
            return 0;
        size_t nf = f1 - f0 < 9 ? f1 - f0 : 9;
        t = secs * 1000000000ULL + frac * POW10[9 - nf];
        p = f1;
    } else {
        if (p >= le || b[p] != ':')
            return 0;
        t = secs;
    }
    if (t > (uint64_t)INT64_MAX)
        return 0;
    *tns = (int64_t)t;
    p++;
    if (p >= le || !is_s(b[p]))
        return 0;
    while (p < le && is_s(b[p]))
        p++;
    *ns = p;
    p = to_colon_or_blank(b, p, le, lim);
    if (p == *ns || p >= le || b[p] != ':')
        return 0;
    *ne = p;
    p++;
    while (p < le && is_s(b[p]))
        p++;
    *as = p;
    size_t e = le;
    while (e > p && is_s(b[e - 1]))
        e--;
    *ae = e;
    return 1;
}

static int slow_line(Scanner *S, const uint8_t *b, size_t ls, size_t le, const uint8_t *lim)
{
    PyObject *r = PyObject_CallFunction(S->header_cb, "y#", (const char *)(b + ls), (Py_ssize_t)(le - ls));
    if (!r)
        return -1;
    if (r == Py_None) {
        Py_DECREF(r);
        return 0;
    }
    long long tns, cpu, pid;
    Py_ssize_t o[6];
    if (!PyArg_ParseTuple(r, "LLLnnnnnn", &tns, &cpu, &pid, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5])) {
        Py_DECREF(r);
        return -1;
    }
    Py_DECREF(r);
    Py_ssize_t n = (Py_ssize_t)(le - ls);
    for (int i = 0; i < 6; i += 2)
        if (o[i] < 0 || o[i] > o[i + 1] || o[i + 1] > n) {
            PyErr_SetString(PyExc_ValueError, "header_cb: span outside the line");
            return -1;
        }
    if (tns < 0 || cpu < 0 || cpu > INT32_MAX || pid < 0 || pid > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "header_cb: value out of range");
        return -1;
    }
    return emit(S, b, lim, tns, cpu, pid, ls + o[0], ls + o[1], ls + o[2], ls + o[3], ls + o[4], ls + o[5]);
}

static int scan(Scanner *S, const uint8_t *b, size_t start, size_t end)
{
    size_t pos = start;
    while (pos < end) {
        const uint8_t *nl = memchr(b + pos, '\n', end - pos);
        if (!nl)
            break; /* only whole lines are read */
        size_t ls = pos, le = (size_t)(nl - b);
        pos = le + 1;
        S->lines_read++;
        if (le > ls && b[le - 1] == '\r')
            le--;
        if (le == ls || b[ls] == '#')
            continue;
        int64_t tns, cpu, pid;
        size_t cs, ce, ns, ne, as, ae;
        if (fast_header(b, ls, le, b + end, &tns, &cpu, &pid, &cs, &ce, &ns, &ne, &as, &ae)) {
            if (emit(S, b, b + end, tns, cpu, pid, cs, ce, ns, ne, as, ae) < 0)
                return -1;
        } else if (slow_line(S, b, ls, le, b + end) < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

static int Scanner_init(Scanner *S, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"event_cb", "header_cb", "num_kinds", "num_bases", "cat_twins", "va_col", "markers", NULL};
    PyObject *ecb, *hcb, *kinds, *bases, *twins, *markers;
    int va_col;
    if (S->event_cb) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner.__init__ called twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO!O!O!iO!", kwlist, &ecb, &hcb, &PyTuple_Type, &kinds, &PyTuple_Type,
                                     &bases, &PyTuple_Type, &twins, &va_col, &PyTuple_Type, &markers))
        return -1;
    Py_ssize_t nn = PyTuple_GET_SIZE(kinds), nc = PyTuple_GET_SIZE(twins);
    if (nn > MAXNUM || PyTuple_GET_SIZE(bases) != nn || nc < 1 || nc > MAXCAT || va_col >= nn) {
        PyErr_SetString(PyExc_ValueError, "Scanner: bad column spec");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(markers); i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(markers, i))) {
            PyErr_SetString(PyExc_TypeError, "Scanner: markers must be bytes");
            return -1;
        }
    S->nnum = (int)nn;
    S->ncat = (int)nc;
    for (int i = 0; i < S->nnum; i++) {
        long k = PyLong_AsLong(PyTuple_GET_ITEM(kinds, i)), bs = PyLong_AsLong(PyTuple_GET_ITEM(bases, i));
        if (PyErr_Occurred())
            return -1;
        if (k < 0 || k > 3 || (bs != 0 && bs != 16)) {
            PyErr_SetString(PyExc_ValueError, "Scanner: bad numeric column");
            return -1;
        }
        S->num_kind[i] = (int)k;
        S->num_base[i] = (int)bs;
    }
    for (int i = 0; i < S->ncat; i++) {
        long t = PyLong_AsLong(PyTuple_GET_ITEM(twins, i));
        if (PyErr_Occurred())
            return -1;
        if (t >= S->nnum || t < -1) {
            PyErr_SetString(PyExc_ValueError, "Scanner: bad twin column");
            return -1;
        }
        S->cat_twin[i] = (int)t;
    }
    S->va_col = va_col;
    Py_INCREF(ecb);
    Py_INCREF(hcb);
    Py_INCREF(markers);
    S->event_cb = ecb;
    S->header_cb = hcb;
    S->markers = markers;
    vec_t *cols[] = {&S->ts, &S->cpu, &S->pid, &S->ev, &S->boolv, &S->boolm};
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++)
        cols[i]->mapped = 1;
    for (int c = 0; c < MAXNUM; c++)
        S->numv[c].mapped = S->numm[c].mapped = 1;
    for (int c = 0; c < MAXCAT; c++)
        S->cat[c].mapped = 1;
    for (int k = 0; k < 2; k++)
        S->sbits[k].mapped = S->soff[k].mapped = S->sdata[k].mapped = 1;
    for (int i = 0; i < S->ncat; i++)
        if (intern_init(&S->cats[i]) < 0)
            return -1;
    if (intern_init(&S->names) < 0 || intern_init(&S->keys) < 0 || colmap_init(&S->colmap) < 0)
        return -1;
    if (grow_rows(S) < 0)
        return -1;
    for (int k = 0; k < 2; k++) {
        int64_t z = 0;
        memcpy(S->soff[k].p, &z, 8);
    }
    return 0;
}

static void Scanner_free_data(Scanner *S)
{
    vec_t *all[] = {&S->ts, &S->cpu, &S->pid, &S->ev, &S->boolv, &S->boolm};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        vec_free(all[i]);
    for (int c = 0; c < MAXNUM; c++) {
        vec_free(&S->numv[c]);
        vec_free(&S->numm[c]);
    }
    for (int c = 0; c < MAXCAT; c++) {
        vec_free(&S->cat[c]);
        intern_free(&S->cats[c]);
    }
    for (int k = 0; k < 2; k++) {
        vec_free(&S->sbits[k]);
        vec_free(&S->soff[k]);
        vec_free(&S->sdata[k]);
        vec_free(&S->snonascii[k]);
    }
    intern_free(&S->names);
    intern_free(&S->keys);
    for (size_t i = 0; i < S->nsubs; i++)
        Py_CLEAR(S->subs[i].keymap);
    colmap_free(&S->colmap);
    free(S->subs);
    S->subs = NULL;
    S->nsubs = S->subs_cap = 0;
    free(S->nm);
    S->nm = NULL;
    S->nm_cap = 0;
    free(S->ks);
    free(S->eqs);
    free(S->kid);
    S->ks = S->eqs = NULL;
    S->kid = NULL;
    S->kcap = 0;
}

static void Scanner_dealloc(Scanner *S)
{
    PyObject_GC_UnTrack(S);
    Py_CLEAR(S->event_cb);
    Py_CLEAR(S->header_cb);
    Py_CLEAR(S->markers);
    Scanner_free_data(S);
    Py_TYPE(S)->tp_free((PyObject *)S);
}

static int Scanner_traverse(Scanner *S, visitproc visit, void *arg)
{
    Py_VISIT(S->event_cb);
    Py_VISIT(S->header_cb);
    Py_VISIT(S->markers);
    for (size_t i = 0; i < S->nsubs; i++)
        Py_VISIT(S->subs[i].keymap);
    return 0;
}

static int Scanner_clear(Scanner *S)
{
    Py_CLEAR(S->event_cb);
    Py_CLEAR(S->header_cb);
    Py_CLEAR(S->markers);
    for (size_t i = 0; i < S->nsubs; i++)
        Py_CLEAR(S->subs[i].keymap);
    return 0;
}

static int ready(Scanner *S)
{
    if (!S->event_cb) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner not initialised");
        return 0;
    }
    if (S->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner is busy (called from its own callback)");
        return 0;
    }
    if (S->done) {
        PyErr_SetString(PyExc_RuntimeError, "Scanner already finished");
        return 0;
    }
    return 1;
}

static PyObject *Scanner_feed(Scanner *S, PyObject *args)
{
    PyObject *obj;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "Onn", &obj, &start, &end))
        return NULL;
    if (!ready(S))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (start < 0 || end < start || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "feed: span outside the buffer");
        return NULL;
    }
    S->busy = 1;
    int rc = scan(S, (const uint8_t *)view.buf, (size_t)start, (size_t)end);
    S->busy = 0;
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *strings_of(intern_t *t)
{
    PyObject *l = PyList_New((Py_ssize_t)t->count);
    if (!l)
        return NULL;
    for (size_t i = 0; i < t->count; i++) {
        size_t n;
        const uint8_t *p = intern_str(t, i, &n);
        PyObject *s = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
        if (!s) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, (Py_ssize_t)i, s);
    }
    return l;
}

/* add obj under key, stealing the reference; -1 on failure */
static int put(PyObject *d, const char *key, PyObject *obj)
{
    if (!obj)
        return -1;
    int rc = PyDict_SetItemString(d, key, obj);
    Py_DECREF(obj);
    return rc;
}

static PyObject *list_of(PyObject **items, int n)
{
    PyObject *l = PyList_New(n);
    if (!l) {
        for (int i = 0; i < n; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (!items[i]) {
            for (int j = i + 1; j < n; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, i, items[i]);
    }
    return l;
}

static PyObject *Scanner_finish(Scanner *S, PyObject *noargs)
{
    if (!ready(S))
        return NULL;
    S->done = 1;
    size_t n = S->rows;
    for (int c = 0; c < S->nnum; c++)
        for (size_t i = 0; i < n; i++)
            S->numm[c].p[i] ^= 1;
    for (size_t i = 0; i < n; i++)
        S->boolm.p[i] ^= 1;
    for (int c = 0; c < S->ncat; c++) {
        int32_t *ids = (int32_t *)S->cat[c].p;
        for (size_t i = 0; i < n; i++)
            ids[i] -= 1;
    }
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    if (put(d, "n", PyLong_FromSize_t(n)) < 0 || put(d, "lines_read", PyLong_FromUnsignedLongLong(S->lines_read)) < 0 ||
        put(d, "values_out_of_range", PyLong_FromUnsignedLongLong(S->out_of_range)) < 0 ||
        put(d, "ts", buf_take(&S->ts, n * 8)) < 0 || put(d, "cpu", buf_take(&S->cpu, n * 4)) < 0 ||
        put(d, "pid", buf_take(&S->pid, n * 4)) < 0 || put(d, "event", buf_take(&S->ev, n * 4)) < 0 ||
        put(d, "bool", Py_BuildValue("(NN)", buf_take(&S->boolv, n), buf_take(&S->boolm, n))) < 0)
        goto fail;
    PyObject *items[MAXNUM > MAXCAT ? MAXNUM : MAXCAT];
    for (int c = 0; c < S->nnum; c++) {
        size_t w = (S->num_kind[c] == K_I32 || S->num_kind[c] == K_U32) ? 4 : 8;
        items[c] = Py_BuildValue("(NN)", buf_take(&S->numv[c], n * w), buf_take(&S->numm[c], n));
    }
    if (put(d, "num", list_of(items, S->nnum)) < 0)
        goto fail;
    for (int c = 0; c < S->ncat; c++)
        items[c] = Py_BuildValue("(NN)", buf_take(&S->cat[c], n * 4), strings_of(&S->cats[c]));
    if (put(d, "cat", list_of(items, S->ncat)) < 0)
        goto fail;
    for (int k = 0; k < 2; k++) {
        size_t na = S->snonascii[k].len;
        items[k] = Py_BuildValue("(NNNnN)", buf_take(&S->sbits[k], (n + 7) / 8), buf_take(&S->soff[k], (n + 1) * 8),
                                 buf_take(&S->sdata[k], S->sdata[k].len), (Py_ssize_t)S->snulls[k],
                                 buf_take(&S->snonascii[k], na));
    }
    if (put(d, "str", list_of(items, 2)) < 0)
        goto fail;
    PyObject *ev = PyList_New((Py_ssize_t)S->nsubs);
    if (!ev)
        goto fail;
    for (size_t i = 0; i < S->nsubs; i++) {
        sub_t *sb = &S->subs[i];
        size_t ln;
        const uint8_t *p = intern_str(&S->names, (size_t)sb->name_id, &ln);
        PyObject *t = Py_BuildValue("(y#iiL)", (const char *)p, (Py_ssize_t)ln, sb->kprobe, sb->known, (long long)sb->unknown);
        if (!t) {
            Py_DECREF(ev);
            goto fail;
        }
        PyList_SET_ITEM(ev, (Py_ssize_t)i, t);
    }
    if (put(d, "events", ev) < 0)
        goto fail;
    Scanner_free_data(S);
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

static PyObject *Scanner_rows(Scanner *S, void *closure) { return PyLong_FromSize_t(S->rows); }

static PyMethodDef Scanner_methods[] = {
    {"feed", (PyCFunction)Scanner_feed, METH_VARARGS,
     "feed(buffer, start, end): read the whole lines of buffer[start:end] (bytes after the last newline are not read)"},
    {"finish", (PyCFunction)Scanner_finish, METH_NOARGS, "finish() -> dict of column buffers; the scanner is spent"},
    {NULL}};

static PyGetSetDef Scanner_getset[] = {{"rows", (getter)Scanner_rows, NULL, "rows so far", NULL}, {NULL}};

static PyTypeObject ScannerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "memtrace.sources.trace._ftrace_scan.Scanner",
    .tp_basicsize = sizeof(Scanner),
    .tp_dealloc = (destructor)Scanner_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Scanner_traverse,
    .tp_clear = (inquiry)Scanner_clear,
    .tp_doc = "Scanner(event_cb, header_cb, num_kinds, num_bases, cat_twins, va_col, markers)",
    .tp_methods = Scanner_methods,
    .tp_getset = Scanner_getset,
    .tp_init = (initproc)Scanner_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_ftrace_scan", "ftrace text lines → event table columns, in one pass", -1,
                                    NULL};

PyMODINIT_FUNC PyInit__ftrace_scan(void)
{
    tables_init();
    page_size = (size_t)sysconf(_SC_PAGESIZE);
    if (PyType_Ready(&BufType) < 0 || PyType_Ready(&ScannerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    Py_INCREF(&ScannerType);
    if (PyModule_AddObject(m, "Scanner", (PyObject *)&ScannerType) < 0) {
        Py_DECREF(&ScannerType);
        Py_DECREF(m);
        return NULL;
    }
#ifndef SCAN_SOURCE_SHA256
#define SCAN_SOURCE_SHA256 ""
#endif
    if (PyModule_AddIntConstant(m, "COL_CAT0", COL_CAT0) < 0 || PyModule_AddIntConstant(m, "COL_BOOL", COL_BOOL) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE_SHA256", SCAN_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
