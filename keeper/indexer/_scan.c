/* keeper.indexer._scan: a raw eth_getLogs answer straight to the indexer's records and events rows.
 *
 * The pure-Python path (keeper/indexer/prepare.py: orjson.loads, then _decode and the compiled
 * per-event decoders of decode.py) costs about 7 us a log, half of a decode worker's CPU. This does
 * the same work on the answer's bytes: it reads the JSON in place, decodes the static events' words
 * from the program decode.py builds for each (EventSpec.native_program), and builds the very objects
 * the Python path builds (LogRecord, the events row tuple, the args JSON text), byte for byte.
 *
 * It handles only what a node sends for a sound range: a {"result": [...]} answer whose strings have
 * no escapes, logs in chain order, of known contracts and events, inside the span, none removed, each
 * with its timestamp. Anything else returns None and the caller runs the Python path on the same bytes,
 * which reports the problem or decodes the odd log exactly as before. So this can only be faster, never
 * different: tests/core/test_scan.py compares the two on generated answers.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ JSON reading */

typedef struct {
    const char *p;
    const char *end;
} Cur;

typedef struct {
    const char *s;
    Py_ssize_t n;
} Span;

static inline void ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static inline int eat(Cur *c, char ch) {
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string of printable ASCII without escapes: all a node writes. Anything else (an escape, a control
 * character that JSON forbids, bytes that may or may not be valid UTF-8) is refused and the caller
 * falls back to the Python path, whose JSON reader then accepts or rejects the answer itself. */
static int str(Cur *c, Span *out) {
    ws(c);
    if (c->p >= c->end || *c->p != '"') return 0;
    const char *s = ++c->p;
    const char *q = s;
    while (q < c->end && *q != '"') {
        unsigned char ch = (unsigned char)*q++;
        if (ch < 0x20 || ch >= 0x7f || ch == '\\') return 0;
    }
    if (q >= c->end) return 0;
    out->s = s;
    out->n = q - s;
    c->p = q + 1;
    return 1;
}

static inline int digits(Cur *c) { /* one or more */
    const char *s = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    return c->p > s;
}

/* A JSON number, by the grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int number(Cur *c) {
    if (c->p < c->end && *c->p == '-') c->p++;
    if (c->p < c->end && *c->p == '0') {
        c->p++;
    } else if (c->p >= c->end || *c->p < '1' || *c->p > '9' || !digits(c)) {
        return 0;
    }
    if (c->p < c->end && *c->p == '.' && (c->p++, !digits(c))) return 0;
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (!digits(c)) return 0;
    }
    return 1;
}

static int literal(Cur *c, const char *lit, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, lit, (size_t)n) != 0) return 0;
    c->p += n;
    return 1;
}

static int skip_value(Cur *c, int depth);

static int skip_container(Cur *c, char close, int depth) {
    if (depth > 64) return 0;
    if (eat(c, close)) return 1;
    for (;;) {
        if (close == '}') {
            Span k;
            if (!str(c, &k) || !eat(c, ':')) return 0;
        }
        if (!skip_value(c, depth + 1)) return 0;
        if (eat(c, ',')) continue;
        return eat(c, close);
    }
}

static int skip_value(Cur *c, int depth) {
    ws(c);
    if (c->p >= c->end) return 0;
    char ch = *c->p;
    if (ch == '"') {
        Span s;
        return str(c, &s);
    }
    if (ch == '{') {
        c->p++;
        return skip_container(c, '}', depth);
    }
    if (ch == '[') {
        c->p++;
        return skip_container(c, ']', depth);
    }
    if (ch == 't') return literal(c, "true", 4);
    if (ch == 'f') return literal(c, "false", 5);
    if (ch == 'n') return literal(c, "null", 4);
    return number(c);
}

static inline int key_is(const Span *k, const char *lit, Py_ssize_t n) {
    return k->n == n && memcmp(k->s, lit, (size_t)n) == 0;
}

/* ------------------------------------------------------------------------------------------ hex */

static signed char HEXV[256];

static void init_hex(void) {
    memset(HEXV, -1, sizeof HEXV);
    for (int i = 0; i < 10; i++) HEXV['0' + i] = (signed char)i;
    for (int i = 0; i < 6; i++) {
        HEXV['a' + i] = (signed char)(10 + i);
        HEXV['A' + i] = (signed char)(10 + i);
    }
}

/* A quantity "0x..." (1 to 16 digits, no leading zero, as JSON-RPC writes them) -> value; 0 when
 * malformed or written otherwise (the Python path tells "0x0a" from "0xa" in places: left to it). */
static int quantity(const Span *s, unsigned long long *out) {
    if (s->n < 3 || s->n > 18 || s->s[0] != '0' || s->s[1] != 'x') return 0;
    if (s->n > 3 && s->s[2] == '0') return 0;
    unsigned long long v = 0;
    for (Py_ssize_t i = 2; i < s->n; i++) {
        int h = HEXV[(unsigned char)s->s[i]];
        if (h < 0) return 0;
        v = (v << 4) | (unsigned)h;
    }
    *out = v;
    return 1;
}

/* 64 hex digits -> 32 bytes; 0 when not hex. */
static int word_bytes(const char *h, unsigned char *out) {
    for (int i = 0; i < 32; i++) {
        int a = HEXV[(unsigned char)h[2 * i]], b = HEXV[(unsigned char)h[2 * i + 1]];
        if ((a | b) < 0) return 0;
        out[i] = (unsigned char)(a << 4 | b);
    }
    return 1;
}

static int all_hex(const char *h, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (HEXV[(unsigned char)h[i]] < 0) return 0;
    return 1;
}

static int lower_hex_only(const char *h, Py_ssize_t n) { /* "0x" + lower-case hex digits */
    if (n < 2 || h[0] != '0' || h[1] != 'x') return 0;
    for (Py_ssize_t i = 2; i < n; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------------------ text buffer */

typedef struct {
    char *b;
    Py_ssize_t n, cap;
} Buf;

static int put(Buf *o, const char *s, Py_ssize_t n) {
    if (o->n + n > o->cap) {
        Py_ssize_t cap = o->cap * 2 > o->n + n ? o->cap * 2 : o->n + n + 256;
        char *b = PyMem_Realloc(o->b, (size_t)cap);
        if (b == NULL) {
            PyErr_NoMemory();
            return 0;
        }
        o->b = b;
        o->cap = cap;
    }
    memcpy(o->b + o->n, s, (size_t)n);
    o->n += n;
    return 1;
}

static inline int putc1(Buf *o, char ch) { return put(o, &ch, 1); }

static int put_str(Buf *o, PyObject *u) { /* an ASCII str */
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(u, &n);
    return s != NULL && put(o, s, n);
}

/* ------------------------------------------------------------------------------------ programs */
/* A program (decode.py, EventSpec.native_program) is a tuple of nodes; a node is
 * (name, kind, source, bits, children): kind 1 uint, 2 int, 3 address, 4 bool, 5 bytesN (bits = N),
 * 6 a topic kept as its lower-case text (indexed dynamic values), 7 tuple, 8 fixed array (children:
 * its elements, names None); source >= 0 a data word, < 0 the topic -1 - source. */

enum { K_UINT = 1, K_INT, K_ADDRESS, K_BOOL, K_BYTES, K_HASH, K_TUPLE, K_ARRAY };

#define JSON_INT_BITS 48

typedef struct {
    const Span *topics; /* the log's topics */
    int n_topics;
    const char *data; /* after "0x" */
    PyObject *addresses; /* lower 40 hex digits -> EIP-55 (decode._ADDRESSES) */
    PyObject *address_of; /* decode._address_of(64 hex digits) on a miss */
} Log;

static const char *word_at(const Log *lg, long src) {
    if (src < 0) return lg->topics[-1 - src].s + 2;
    return lg->data + 64 * src;
}

static PyObject *checksummed(const Log *lg, const char *w) { /* w: 64 hex digits, padding checked */
    char low[40];
    for (int i = 0; i < 40; i++) {
        char ch = w[24 + i];
        low[i] = (ch >= 'A' && ch <= 'F') ? (char)(ch + 32) : ch;
    }
    PyObject *key = PyUnicode_FromStringAndSize(low, 40);
    if (key == NULL) return NULL;
    PyObject *a = PyDict_GetItemWithError(lg->addresses, key);
    Py_DECREF(key);
    if (a != NULL) return Py_NewRef(a);
    if (PyErr_Occurred()) return NULL;
    return PyObject_CallFunction(lg->address_of, "s#", w, (Py_ssize_t)64);
}

/* Decodes one node: its value (new reference) into *val and its JSON into o; returns 1, 0 when the
 * log does not fit (no exception set: the caller falls back), -1 on an error (exception set). */
static int node(const Log *lg, PyObject *nd, PyObject **val, Buf *o) {
    PyObject *kind_o = PyTuple_GET_ITEM(nd, 1);
    long kind = PyLong_AsLong(kind_o);
    long src = PyLong_AsLong(PyTuple_GET_ITEM(nd, 2));
    long bits = PyLong_AsLong(PyTuple_GET_ITEM(nd, 3));
    *val = NULL;
    if (kind == K_TUPLE || kind == K_ARRAY) {
        PyObject *children = PyTuple_GET_ITEM(nd, 4);
        Py_ssize_t n = PyTuple_GET_SIZE(children);
        PyObject *out = kind == K_TUPLE ? PyDict_New() : PyList_New(n);
        if (out == NULL) return -1;
        if (!putc1(o, kind == K_TUPLE ? '{' : '[')) goto fail;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *ch = PyTuple_GET_ITEM(children, i);
            if (i && !putc1(o, ',')) goto fail;
            if (kind == K_TUPLE) {
                PyObject *name = PyTuple_GET_ITEM(ch, 0);
                if (!putc1(o, '"') || !put_str(o, name) || !put(o, "\":", 2)) goto fail;
            }
            PyObject *v;
            int r = node(lg, ch, &v, o);
            if (r <= 0) {
                Py_DECREF(out);
                return r;
            }
            if (kind == K_TUPLE) {
                int e = PyDict_SetItem(out, PyTuple_GET_ITEM(ch, 0), v);
                Py_DECREF(v);
                if (e < 0) goto fail;
            } else {
                PyList_SET_ITEM(out, i, v);
            }
        }
        if (!putc1(o, kind == K_TUPLE ? '}' : ']')) goto fail;
        *val = out;
        return 1;
    fail:
        Py_DECREF(out);
        return -1;
    }
    const char *w = word_at(lg, src);
    if (kind == K_HASH) { /* the topic's text, lower-cased (checked hex already) */
        char t[66];
        t[0] = '0';
        t[1] = 'x';
        for (int i = 0; i < 64; i++) t[2 + i] = (w[i] >= 'A' && w[i] <= 'F') ? (char)(w[i] + 32) : w[i];
        if (!putc1(o, '"') || !put(o, t, 66) || !putc1(o, '"')) return -1;
        *val = PyUnicode_FromStringAndSize(t, 66);
        return *val == NULL ? -1 : 1;
    }
    unsigned char b[32];
    if (!word_bytes(w, b)) return 0;
    if (kind == K_ADDRESS) {
        for (int i = 0; i < 12; i++)
            if (b[i]) return 0;
        PyObject *a = checksummed(lg, w);
        if (a == NULL) return -1;
        if (!putc1(o, '"') || !put_str(o, a) || !putc1(o, '"')) {
            Py_DECREF(a);
            return -1;
        }
        *val = a;
        return 1;
    }
    if (kind == K_BOOL) {
        for (int i = 0; i < 31; i++)
            if (b[i]) return 0;
        if (b[31] > 1) return 0;
        if (!(b[31] ? put(o, "true", 4) : put(o, "false", 5))) return -1;
        *val = PyBool_FromLong(b[31]);
        return 1;
    }
    if (kind == K_BYTES) {
        for (long i = bits; i < 32; i++)
            if (b[i]) return 0;
        char t[66];
        static const char digits[] = "0123456789abcdef";
        t[0] = '0';
        t[1] = 'x';
        for (long i = 0; i < bits; i++) {
            t[2 + 2 * i] = digits[b[i] >> 4];
            t[3 + 2 * i] = digits[b[i] & 15];
        }
        Py_ssize_t n = 2 + 2 * bits;
        if (!putc1(o, '"') || !put(o, t, n) || !putc1(o, '"')) return -1;
        *val = PyUnicode_FromStringAndSize(t, n);
        return *val == NULL ? -1 : 1;
    }
    if (kind != K_UINT && kind != K_INT) {
        PyErr_Format(PyExc_ValueError, "unknown program node kind %ld", kind);
        return -1;
    }
    int negative = kind == K_INT && (b[0] & 0x80);
    unsigned char fill = negative ? 0xff : 0x00;
    int top = (int)(32 - bits / 8); /* bytes above the type's width: sign fill (int) or zero (uint) */
    for (int i = 0; i < top; i++)
        if (b[i] != fill) return 0;
    if (kind == K_INT && bits < 256 && ((b[top] & 0x80) != 0) != negative) return 0;
    /* small values (the common case) without the byte-array path */
    int small = 1;
    for (int i = 0; i < 24; i++)
        if (b[i] != fill) {
            small = 0;
            break;
        }
    PyObject *v;
    if (small && !negative) {
        unsigned long long u = 0;
        for (int i = 24; i < 32; i++) u = u << 8 | b[i];
        v = PyLong_FromUnsignedLongLong(u);
    } else if (small && negative && (b[24] & 0x80)) {
        unsigned long long u = 0;
        for (int i = 24; i < 32; i++) u = u << 8 | b[i];
        v = PyLong_FromLongLong((long long)u);
    } else {
        v = _PyLong_FromByteArray(b, 32, 0, kind == K_INT);
    }
    if (v == NULL) return -1;
    PyObject *s = PyObject_Str(v);
    if (s == NULL) {
        Py_DECREF(v);
        return -1;
    }
    int quoted = bits > JSON_INT_BITS;
    int ok = (!quoted || putc1(o, '"')) && put_str(o, s) && (!quoted || putc1(o, '"'));
    Py_DECREF(s);
    if (!ok) {
        Py_DECREF(v);
        return -1;
    }
    *val = v;
    return 1;
}

/* -------------------------------------------------------------------------------------- one log */

typedef struct {
    Span address, data, block_hash, block_number, timestamp, tx_hash, tx_index, log_index;
    Span topics[4];
    int n_topics, has_timestamp, removed;
} RawLog;

#define NEED_ADDRESS 1
#define NEED_TOPICS 2
#define NEED_DATA 4
#define NEED_BHASH 8
#define NEED_BNUM 16
#define NEED_TXHASH 32
#define NEED_TXINDEX 64
#define NEED_LOGINDEX 128
#define NEED_ALL 255

/* Reads one log object; 1, or 0 when it is not of the expected shape. */
static int read_log(Cur *c, RawLog *lg) {
    int seen = 0, timestamp_seen = 0;
    lg->n_topics = 0;
    lg->has_timestamp = 0;
    lg->removed = 0;
    if (!eat(c, '{')) return 0;
    if (eat(c, '}')) return 0;
    for (;;) {
        Span k;
        if (!str(c, &k) || !eat(c, ':')) return 0;
        Span *target = NULL;
        int bit = 0;
        switch (k.n) {
            case 4:
                if (key_is(&k, "data", 4)) target = &lg->data, bit = NEED_DATA;
                break;
            case 6:
                if (key_is(&k, "topics", 6)) {
                    if ((seen & NEED_TOPICS) || !eat(c, '[')) return 0; /* a key twice: not ours */
                    if (!eat(c, ']')) {
                        for (;;) {
                            if (lg->n_topics == 4) return 0;
                            if (!str(c, &lg->topics[lg->n_topics++])) return 0;
                            if (eat(c, ',')) continue;
                            if (!eat(c, ']')) return 0;
                            break;
                        }
                    }
                    seen |= NEED_TOPICS;
                    goto next;
                }
                break;
            case 7:
                if (key_is(&k, "address", 7)) target = &lg->address, bit = NEED_ADDRESS;
                else if (key_is(&k, "removed", 7)) {
                    ws(c);
                    if (!literal(c, "false", 5) && !literal(c, "null", 4))
                        return 0; /* removed (or odd): the Python path says why */
                    goto next;
                }
                break;
            case 8:
                if (key_is(&k, "logIndex", 8)) target = &lg->log_index, bit = NEED_LOGINDEX;
                break;
            case 9:
                if (key_is(&k, "blockHash", 9)) target = &lg->block_hash, bit = NEED_BHASH;
                break;
            case 11:
                if (key_is(&k, "blockNumber", 11)) target = &lg->block_number, bit = NEED_BNUM;
                break;
            case 14:
                if (key_is(&k, "blockTimestamp", 14)) {
                    if (timestamp_seen++) return 0; /* a key twice: not ours */
                    ws(c);
                    if (literal(c, "null", 4)) goto next;
                    if (!str(c, &lg->timestamp)) return 0;
                    lg->has_timestamp = lg->timestamp.n > 0;
                    goto next;
                }
                break;
            case 15:
                if (key_is(&k, "transactionHash", 15)) target = &lg->tx_hash, bit = NEED_TXHASH;
                break;
            case 16:
                if (key_is(&k, "transactionIndex", 16)) target = &lg->tx_index, bit = NEED_TXINDEX;
                break;
        }
        if (target != NULL) {
            if ((seen & bit) || !str(c, target)) return 0;
            seen |= bit;
        } else if (!skip_value(c, 0)) {
            return 0;
        }
    next:
        if (eat(c, ',')) continue;
        if (!eat(c, '}')) return 0;
        break;
    }
    return seen == NEED_ALL;
}

/* -------------------------------------------------------------------------------------- scan() */

typedef struct {
    /* arguments */
    long long frm, to;
    PyObject *timestamps, *chain_id, *contracts, *programs, *record_cls, *addresses, *address_of,
        *checksum;
    /* results */
    PyObject *records, *rows, *blocks;
    /* the previous log's strings, reused while they repeat (one object per block, per tx) */
    unsigned long long bn, li; /* the previous log's */
    int have_block;
    PyObject *bn_o, *bhash_o, *ts_o;
    Span bhash, tx;
    PyObject *tx_o;
    Span addr;
    PyObject *addr_o, *contract_o, *table_o;
    Buf json;
} Scan;

static PyObject *K_ACCOUNT, *K_MARKET, *K_DECODE_JSON;
static PyObject *MAX_BIGINT;

static PyObject *text(const Span *s) { return PyUnicode_FromStringAndSize(s->s, s->n); }

/* 1 done, 0 fall back, -1 error */
static int scan_log(Scan *S, const RawLog *lg) {
    unsigned long long bn, li, txi;
    if (!quantity(&lg->block_number, &bn) || !quantity(&lg->log_index, &li) ||
        !quantity(&lg->tx_index, &txi))
        return 0;
    if ((long long)bn < S->frm || (long long)bn > S->to) return 0;
    if (lg->block_hash.n != 66 || !lower_hex_only(lg->block_hash.s, 66)) return 0;
    if (lg->tx_hash.n != 66 || !lower_hex_only(lg->tx_hash.s, 66)) return 0;
    if (S->have_block && bn == S->bn) {
        if (li <= S->li) return 0; /* out of order (the Python path sorts) */
    } else {
        if (S->have_block && bn < S->bn) return 0;
        Py_CLEAR(S->bn_o);
        Py_CLEAR(S->bhash_o);
        Py_CLEAR(S->ts_o);
        S->bn = bn;
        S->have_block = 1;
        S->bn_o = PyLong_FromUnsignedLongLong(bn);
        S->bhash_o = text(&lg->block_hash);
        if (S->bn_o == NULL || S->bhash_o == NULL) return -1;
        S->bhash = lg->block_hash;
        int has = PyDict_Contains(S->blocks, S->bn_o);
        if (has != 0) return has < 0 ? -1 : 0; /* a block seen before, not in order */
        if (PyDict_SetItem(S->blocks, S->bn_o, S->bhash_o) < 0) return -1;
        if (lg->has_timestamp) {
            unsigned long long ts;
            if (!quantity(&lg->timestamp, &ts)) return 0;
            S->ts_o = PyLong_FromUnsignedLongLong(ts);
            if (S->ts_o == NULL) return -1;
        } else {
            PyObject *ts = PyObject_GetItem(S->timestamps, S->bn_o);
            if (ts == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_KeyError)) return -1;
                PyErr_Clear();
                return 0; /* missing: the Python path asks for the headers' */
            }
            S->ts_o = ts;
        }
    }
    if (memcmp(lg->block_hash.s, S->bhash.s, 66) != 0) return 0; /* two hashes for one block */
    S->li = li;
    if (S->tx_o == NULL || memcmp(lg->tx_hash.s, S->tx.s, 66) != 0) {
        Py_CLEAR(S->tx_o);
        S->tx_o = text(&lg->tx_hash);
        if (S->tx_o == NULL) return -1;
        S->tx = lg->tx_hash;
    }
    /* the contract: by the lower-case address */
    if (S->addr_o == NULL || lg->address.n != S->addr.n || memcmp(lg->address.s, S->addr.s, 42) != 0) {
        Py_CLEAR(S->addr_o);
        Py_CLEAR(S->contract_o);
        Py_CLEAR(S->table_o);
        if (lg->address.n != 42 || lg->address.s[0] != '0' || lg->address.s[1] != 'x' ||
            !all_hex(lg->address.s + 2, 40))
            return 0;
        char low[42];
        for (int i = 0; i < 42; i++) {
            char ch = lg->address.s[i];
            low[i] = (ch >= 'A' && ch <= 'F') ? (char)(ch + 32) : ch;
        }
        PyObject *key = PyUnicode_FromStringAndSize(low, 42);
        if (key == NULL) return -1;
        PyObject *contract = PyDict_GetItemWithError(S->contracts, key);
        if (contract == NULL) {
            Py_DECREF(key);
            return PyErr_Occurred() ? -1 : 0;
        }
        PyObject *table = PyDict_GetItemWithError(S->programs, contract);
        if (table == NULL) {
            Py_DECREF(key);
            return PyErr_Occurred() ? -1 : 0;
        }
        S->addr_o = PyObject_CallOneArg(S->checksum, key);
        Py_DECREF(key);
        if (S->addr_o == NULL) return -1;
        S->contract_o = Py_NewRef(contract);
        S->table_o = Py_NewRef(table);
        S->addr = lg->address;
    }
    /* the event */
    if (lg->n_topics == 0 || lg->topics[0].n != 66 || !lower_hex_only(lg->topics[0].s, 66)) return 0;
    for (int i = 1; i < lg->n_topics; i++)
        if (lg->topics[i].n != 66 || lg->topics[i].s[0] != '0' || lg->topics[i].s[1] != 'x' ||
            !all_hex(lg->topics[i].s + 2, 64))
            return 0;
    PyObject *t0 = text(&lg->topics[0]);
    if (t0 == NULL) return -1;
    PyObject *entry = PyDict_GetItemWithError(S->table_o, t0);
    Py_DECREF(t0);
    if (entry == NULL) return PyErr_Occurred() ? -1 : 0;
    /* entry: (n_topics, spec, name, program or None) */
    if (PyLong_AsLong(PyTuple_GET_ITEM(entry, 0)) != lg->n_topics) return 0;
    PyObject *spec = PyTuple_GET_ITEM(entry, 1), *name = PyTuple_GET_ITEM(entry, 2);
    PyObject *program = PyTuple_GET_ITEM(entry, 3);
    PyObject *args = NULL, *json = NULL;
    if (program != Py_None) {
        Py_ssize_t words = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 4));
        if (lg->data.n != 2 + 64 * words || lg->data.s[0] != '0' || lg->data.s[1] != 'x') return 0;
        Log L = {lg->topics, lg->n_topics, lg->data.s + 2, S->addresses, S->address_of};
        args = PyDict_New();
        if (args == NULL) return -1;
        S->json.n = 0;
        if (!putc1(&S->json, '{')) goto fail;
        Py_ssize_t n = PyTuple_GET_SIZE(program);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *nd = PyTuple_GET_ITEM(program, i), *key = PyTuple_GET_ITEM(nd, 0);
            if (i && !putc1(&S->json, ',')) goto fail;
            if (!putc1(&S->json, '"') || !put_str(&S->json, key) || !put(&S->json, "\":", 2)) goto fail;
            PyObject *v;
            int r = node(&L, nd, &v, &S->json);
            if (r <= 0) {
                Py_DECREF(args);
                return r;
            }
            int e = PyDict_SetItem(args, key, v);
            Py_DECREF(v);
            if (e < 0) goto fail;
        }
        if (!putc1(&S->json, '}')) goto fail;
        json = PyUnicode_DecodeASCII(S->json.b, S->json.n, NULL);
        if (json == NULL) goto fail;
    } else { /* an event with dynamic data: the spec's own decoder (rare) */
        PyObject *topics = PyList_New(lg->n_topics);
        if (topics == NULL) return -1;
        for (int i = 0; i < lg->n_topics; i++) {
            PyObject *t = text(&lg->topics[i]);
            if (t == NULL) {
                Py_DECREF(topics);
                return -1;
            }
            PyList_SET_ITEM(topics, i, t);
        }
        if (lg->data.n < 2 || lg->data.s[0] != '0' || lg->data.s[1] != 'x' ||
            !all_hex(lg->data.s + 2, lg->data.n - 2)) {
            Py_DECREF(topics);
            return 0;
        }
        PyObject *data = text(&lg->data);
        if (data == NULL) {
            Py_DECREF(topics);
            return -1;
        }
        PyObject *r = PyObject_CallMethodObjArgs(spec, K_DECODE_JSON, topics, data, NULL);
        Py_DECREF(topics);
        Py_DECREF(data);
        if (r == NULL) {
            PyErr_Clear(); /* a DecodeError: the Python path logs it and keeps the raw log */
            return 0;
        }
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2) {
            Py_DECREF(r);
            PyErr_SetString(PyExc_TypeError, "decode_json must return (args, text)");
            return -1;
        }
        args = Py_NewRef(PyTuple_GET_ITEM(r, 0));
        json = Py_NewRef(PyTuple_GET_ITEM(r, 1));
        Py_DECREF(r);
    }
    {
        PyObject *account = PyDict_GetItemWithError(args, K_ACCOUNT);
        if (account == NULL && PyErr_Occurred()) goto fail;
        if (account == NULL || !PyUnicode_CheckExact(account)) account = Py_None;
        PyObject *market = PyDict_GetItemWithError(args, K_MARKET);
        if (market == NULL && PyErr_Occurred()) goto fail;
        if (market != NULL && PyLong_CheckExact(market)) {
            int neg = _PyLong_Sign(market) < 0;
            int big = PyObject_RichCompareBool(market, MAX_BIGINT, Py_GT);
            if (big < 0) goto fail;
            if (neg || big) market = Py_None;
        } else {
            market = Py_None;
        }
        PyObject *li_o = PyLong_FromUnsignedLongLong(li), *txi_o = PyLong_FromUnsignedLongLong(txi);
        if (li_o == NULL || txi_o == NULL) {
            Py_XDECREF(li_o);
            Py_XDECREF(txi_o);
            goto fail;
        }
        PyObject *rec_args[11] = {S->bn_o, S->bhash_o, S->ts_o, S->tx_o, txi_o, li_o,
                                  S->addr_o, S->contract_o, name, args, spec};
        PyObject *rec = PyObject_Vectorcall(S->record_cls, rec_args, 11, NULL);
        PyObject *row = rec == NULL ? NULL
                                    : PyTuple_Pack(13, S->chain_id, S->bn_o, S->bhash_o, S->ts_o, S->tx_o,
                                                   txi_o, li_o, S->addr_o, S->contract_o, name, account,
                                                   market, json);
        Py_DECREF(li_o);
        Py_DECREF(txi_o);
        int e = rec == NULL || row == NULL || PyList_Append(S->records, rec) < 0 ||
                PyList_Append(S->rows, row) < 0;
        Py_XDECREF(rec);
        Py_XDECREF(row);
        if (e) goto fail;
    }
    Py_DECREF(args);
    Py_DECREF(json);
    return 1;
fail:
    Py_XDECREF(args);
    Py_XDECREF(json);
    return -1;
}

PyDoc_STRVAR(scan_doc,
"scan(raw, frm, to, timestamps, chain_id, contracts, programs, record_cls, addresses, address_of,\n"
"     checksum) -> (records, rows, blocks) or None\n\n"
"The records, events rows and block hashes of a raw eth_getLogs answer, as keeper.indexer.prepare's\n"
"Python path builds them, or None when the answer is not one this handles (the caller then runs\n"
"the Python path). See keeper.indexer.scan for the arguments.");

static PyObject *scan(PyObject *self, PyObject *const *a, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 11 arguments");
        return NULL;
    }
    Py_buffer raw;
    if (PyObject_GetBuffer(a[0], &raw, PyBUF_SIMPLE) < 0) return NULL;
    Scan S;
    memset(&S, 0, sizeof S);
    S.frm = PyLong_AsLongLong(a[1]);
    S.to = PyLong_AsLongLong(a[2]);
    S.timestamps = a[3];
    S.chain_id = a[4];
    S.contracts = a[5];
    S.programs = a[6];
    S.record_cls = a[7];
    S.addresses = a[8];
    S.address_of = a[9];
    S.checksum = a[10];
    PyObject *result = NULL;
    int ok = 0; /* 1 done, 0 fall back, -1 error */
    if (PyErr_Occurred()) goto done;
    if (!PyDict_Check(S.contracts) || !PyDict_Check(S.programs) || !PyDict_Check(S.addresses)) {
        PyErr_SetString(PyExc_TypeError, "contracts, programs and addresses must be dicts");
        goto done;
    }
    S.records = PyList_New(0);
    S.rows = PyList_New(0);
    S.blocks = PyDict_New();
    if (S.records == NULL || S.rows == NULL || S.blocks == NULL) goto done;
    Cur c = {(const char *)raw.buf, (const char *)raw.buf + raw.len};
    if (!eat(&c, '{')) goto fallback;
    int found = 0;
    for (;;) {
        Span k;
        if (!str(&c, &k) || !eat(&c, ':')) goto fallback;
        if (key_is(&k, "result", 6)) {
            if (found || !eat(&c, '[')) goto fallback;
            found = 1;
            if (!eat(&c, ']')) {
                for (;;) {
                    RawLog lg;
                    if (!read_log(&c, &lg)) goto fallback;
                    int r = scan_log(&S, &lg);
                    if (r < 0) goto done;
                    if (r == 0) goto fallback;
                    if (eat(&c, ',')) continue;
                    if (!eat(&c, ']')) goto fallback;
                    break;
                }
            }
        } else if (key_is(&k, "error", 5)) {
            goto fallback;
        } else if (!skip_value(&c, 0)) {
            goto fallback;
        }
        if (eat(&c, ',')) continue;
        if (!eat(&c, '}')) goto fallback;
        break;
    }
    ws(&c);
    if (!found || c.p != c.end) goto fallback;
    ok = 1;
    result = PyTuple_Pack(3, S.records, S.rows, S.blocks);
    goto done;
fallback:
    ok = 0;
done:
    if (ok == 0 && !PyErr_Occurred()) result = Py_NewRef(Py_None);
    Py_XDECREF(S.records);
    Py_XDECREF(S.rows);
    Py_XDECREF(S.blocks);
    Py_XDECREF(S.bn_o);
    Py_XDECREF(S.bhash_o);
    Py_XDECREF(S.ts_o);
    Py_XDECREF(S.tx_o);
    Py_XDECREF(S.addr_o);
    Py_XDECREF(S.contract_o);
    Py_XDECREF(S.table_o);
    PyMem_Free(S.json.b);
    PyBuffer_Release(&raw);
    return result;
}

PyDoc_STRVAR(count_logs_doc,
"count_logs(raw) -> int\n\n"
"How many times '\"logIndex\"' occurs in raw: the logs of an eth_getLogs answer, counted without\n"
"parsing it (bytes.count does the same three times slower).");

static PyObject *count_logs(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer raw;
    if (PyObject_GetBuffer(arg, &raw, PyBUF_SIMPLE) < 0) return NULL;
    static const char KEY[] = "\"logIndex\"";
    const size_t k = sizeof KEY - 1;
    const char *p = raw.buf, *end = p + raw.len;
    Py_ssize_t n = 0;
    while ((size_t)(end - p) >= k && (p = memmem(p, (size_t)(end - p), KEY, k)) != NULL) {
        n++;
        p += k;
    }
    PyBuffer_Release(&raw);
    return PyLong_FromSsize_t(n);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, scan_doc},
    {"count_logs", (PyCFunction)count_logs, METH_O, count_logs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "A raw eth_getLogs answer to records and rows, in C.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void) {
    init_hex();
    K_ACCOUNT = PyUnicode_InternFromString("account");
    K_MARKET = PyUnicode_InternFromString("marketId");
    K_DECODE_JSON = PyUnicode_InternFromString("decode_json");
    MAX_BIGINT = PyLong_FromLongLong(0x7fffffffffffffffLL);
    if (!K_ACCOUNT || !K_MARKET || !K_DECODE_JSON || !MAX_BIGINT) return NULL;
    return PyModule_Create(&module);
}
