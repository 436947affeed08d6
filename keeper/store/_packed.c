/* keeper.store._packed: rows handed to a SQLite writer as one packed buffer, read by SQLite itself.
 *
 * A backfill's decode workers used to store each range's rows in an in-memory SQLite database and send
 * its bytes (keeper/store/staged.py): SQLite inserted every row twice, once into that scratch database
 * and once into the real tables. Here a worker packs its rows into a flat buffer (pack_rows, a few
 * bytes per value) and the writer copies them with one statement,
 *
 *     INSERT OR ROLLBACK INTO main.t (a, b, ...) SELECT c0, c1, ... FROM packed_rows(?)
 *
 * where packed_rows is a table-valued function over the buffer given as its argument. Each value comes
 * out with the storage class it was packed with (NULL, INTEGER, REAL, TEXT, BLOB), so the real column's
 * affinity converts it exactly as binding the Python value would: the stored rows are the same
 * (tests/core/test_staged.py compares them, storage class by storage class).
 *
 * The function is registered on every SQLite connection the process opens after install() (SQLite's
 * auto-extension). It must be SQLite's own library as Python's sqlite3 module uses it, so its functions
 * are looked up through that module's shared object (dlsym), never linked here: a Python whose sqlite3
 * module hides its SQLite, or any other surprise, makes install() return False and the keeper keeps the
 * staged path.
 *
 * Buffer layout (native byte order: producer and reader are the same machine): "PKR1", u32 columns,
 * u32 rows, then for each row each column: a tag byte (0 NULL, 1 int64, 2 double, 3 text, 4 blob)
 * followed by 8 bytes (int64, double) or a u32 length and that many bytes (text as UTF-8, blob). The
 * reader checks every length against the buffer's end: a malformed buffer is an error, never a read
 * outside it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <sqlite3.h>
#include <stdint.h>
#include <string.h>

#define MAX_COLUMNS 64
#define TAG_NULL 0
#define TAG_INT 1
#define TAG_REAL 2
#define TAG_TEXT 3
#define TAG_BLOB 4
static const char MAGIC[4] = {'P', 'K', 'R', '1'};
#define HEADER 12

/* ------------------------------------------------------------------------------------ packing */

typedef struct {
    char *buf;
    size_t len, cap;
} Out;

static int grow(Out *o, size_t need) {
    if (o->len + need <= o->cap) return 1;
    size_t cap = o->cap ? o->cap : 1 << 16;
    while (cap < o->len + need) cap *= 2;
    char *b = PyMem_Realloc(o->buf, cap);
    if (b == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    o->buf = b;
    o->cap = cap;
    return 1;
}

static int put(Out *o, const void *p, size_t n) {
    if (!grow(o, n)) return 0;
    memcpy(o->buf + o->len, p, n);
    o->len += n;
    return 1;
}

static int put_value(Out *o, PyObject *v) {
    unsigned char tag;
    if (v == Py_None) {
        tag = TAG_NULL;
        return put(o, &tag, 1);
    }
    if (PyLong_Check(v)) { /* bool too, as sqlite3 binds it: 0 or 1 */
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow) {
            PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to SQLite INTEGER");
            return 0;
        }
        if (x == -1 && PyErr_Occurred()) return 0;
        int64_t i = (int64_t)x;
        tag = TAG_INT;
        return put(o, &tag, 1) && put(o, &i, 8);
    }
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        tag = TAG_REAL;
        return put(o, &tag, 1) && put(o, &d, 8);
    }
    const char *s;
    Py_ssize_t n;
    if (PyUnicode_Check(v)) {
        s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) return 0;
        tag = TAG_TEXT;
    } else if (PyBytes_Check(v)) {
        s = PyBytes_AS_STRING(v);
        n = PyBytes_GET_SIZE(v);
        tag = TAG_BLOB;
    } else {
        PyErr_Format(PyExc_TypeError, "cannot pack a value of type %.100s", Py_TYPE(v)->tp_name);
        return 0;
    }
    if ((size_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "a value of 4 GiB or more");
        return 0;
    }
    uint32_t len = (uint32_t)n;
    return put(o, &tag, 1) && put(o, &len, 4) && put(o, s, (size_t)n);
}

static PyObject *pack_rows(PyObject *self, PyObject *args) {
    PyObject *rows;
    int ncols;
    if (!PyArg_ParseTuple(args, "Oi:pack_rows", &rows, &ncols)) return NULL;
    if (ncols < 1 || ncols > MAX_COLUMNS) {
        PyErr_Format(PyExc_ValueError, "between 1 and %d columns, not %d", MAX_COLUMNS, ncols);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(rows, "rows must be a sequence of tuples");
    if (seq == NULL) return NULL;
    Py_ssize_t nrows = PySequence_Fast_GET_SIZE(seq);
    if ((size_t)nrows > UINT32_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_OverflowError, "too many rows");
        return NULL;
    }
    Out o = {NULL, 0, 0};
    uint32_t head[2] = {(uint32_t)ncols, (uint32_t)nrows};
    if (!put(&o, MAGIC, 4) || !put(&o, head, 8)) goto fail;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *row = items[r];
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != ncols) {
            PyErr_Format(PyExc_ValueError, "row %zd is not a tuple of %d values", r, ncols);
            goto fail;
        }
        for (int c = 0; c < ncols; c++)
            if (!put_value(&o, PyTuple_GET_ITEM(row, c))) goto fail;
    }
    Py_DECREF(seq);
    PyObject *res = PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len);
    PyMem_Free(o.buf);
    return res;
fail:
    Py_DECREF(seq);
    PyMem_Free(o.buf);
    return NULL;
}

/* ------------------------------------------------------------------------------------ SQLite's side */

/* SQLite's functions, from the library Python's sqlite3 module uses (see install) */
static struct {
    int (*auto_extension)(void (*)(void));
    int (*create_module_v2)(sqlite3 *, const char *, const sqlite3_module *, void *, void (*)(void *));
    int (*declare_vtab)(sqlite3 *, const char *);
    void *(*malloc)(int);
    void (*free)(void *);
    char *(*mprintf)(const char *, ...);
    void (*result_null)(sqlite3_context *);
    void (*result_int64)(sqlite3_context *, sqlite3_int64);
    void (*result_double)(sqlite3_context *, double);
    void (*result_text)(sqlite3_context *, const char *, int, void (*)(void *));
    void (*result_blob)(sqlite3_context *, const void *, int, void (*)(void *));
    const void *(*value_blob)(sqlite3_value *);
    int (*value_bytes)(sqlite3_value *);
    int (*value_type)(sqlite3_value *);
    sqlite3_value *(*value_dup)(const sqlite3_value *);
    void (*value_free)(sqlite3_value *);
} api;

typedef struct {
    sqlite3_vtab base;
} PackedVtab;

typedef struct {
    sqlite3_vtab_cursor base;
    sqlite3_value *arg;           /* the buffer, copied for the statement's duration */
    const unsigned char *p, *end; /* the next row */
    uint32_t ncols, nrows, row;
    const unsigned char *at[MAX_COLUMNS]; /* the current row's values (their tags) */
} PackedCursor;

static int vt_connect(sqlite3 *db, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                      char **err) {
    char sql[64 * 6 + 64];
    size_t n = (size_t)snprintf(sql, sizeof sql, "CREATE TABLE x(");
    for (int i = 0; i < MAX_COLUMNS; i++) n += (size_t)snprintf(sql + n, sizeof sql - n, "c%d,", i);
    snprintf(sql + n, sizeof sql - n, "buf HIDDEN)");
    int rc = api.declare_vtab(db, sql);
    if (rc != SQLITE_OK) return rc;
    PackedVtab *vt = api.malloc(sizeof *vt);
    if (vt == NULL) return SQLITE_NOMEM;
    memset(vt, 0, sizeof *vt);
    *out = &vt->base;
    return SQLITE_OK;
}

static int vt_disconnect(sqlite3_vtab *vt) {
    api.free(vt);
    return SQLITE_OK;
}

static int vt_best_index(sqlite3_vtab *vt, sqlite3_index_info *info) {
    for (int i = 0; i < info->nConstraint; i++) {
        const struct sqlite3_index_constraint *c = &info->aConstraint[i];
        if (c->iColumn == MAX_COLUMNS && c->op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (!c->usable) return SQLITE_CONSTRAINT;
            info->aConstraintUsage[i].argvIndex = 1;
            info->aConstraintUsage[i].omit = 1;
            info->idxNum = 1;
            info->estimatedCost = 1.0;
            return SQLITE_OK;
        }
    }
    api.free(vt->zErrMsg);
    vt->zErrMsg = api.mprintf("packed_rows takes the packed buffer as its argument");
    return SQLITE_ERROR;
}

static int vt_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out) {
    PackedCursor *cur = api.malloc(sizeof *cur);
    if (cur == NULL) return SQLITE_NOMEM;
    memset(cur, 0, sizeof *cur);
    *out = &cur->base;
    return SQLITE_OK;
}

static int vt_close(sqlite3_vtab_cursor *c) {
    PackedCursor *cur = (PackedCursor *)c;
    api.value_free(cur->arg); /* NULL is fine */
    api.free(cur);
    return SQLITE_OK;
}

static int corrupt(PackedCursor *cur, const char *why) {
    sqlite3_vtab *vt = cur->base.pVtab;
    api.free(vt->zErrMsg);
    vt->zErrMsg = api.mprintf("malformed packed rows: %s", why);
    return SQLITE_ERROR;
}

/* The row at p: each value's position into at (when given), each length checked against end; the next
 * row's start, or NULL with why. */
static const unsigned char *skip_row(const unsigned char *p, const unsigned char *end, uint32_t ncols,
                                     const unsigned char **at, const char **why) {
    for (uint32_t i = 0; i < ncols; i++) {
        if (p >= end) {
            *why = "a row ends early";
            return NULL;
        }
        if (at != NULL) at[i] = p;
        unsigned char tag = *p++;
        if (tag == TAG_NULL) continue;
        if (tag == TAG_INT || tag == TAG_REAL) {
            if ((size_t)(end - p) < 8) {
                *why = "a number ends early";
                return NULL;
            }
            p += 8;
        } else if (tag == TAG_TEXT || tag == TAG_BLOB) {
            uint32_t len;
            if ((size_t)(end - p) < 4) {
                *why = "a length ends early";
                return NULL;
            }
            memcpy(&len, p, 4);
            p += 4;
            if ((size_t)(end - p) < len || len > INT32_MAX) {
                *why = "a value ends early";
                return NULL;
            }
            p += len;
        } else {
            *why = "an unknown tag";
            return NULL;
        }
    }
    return p;
}

/* The whole buffer is checked before the first row comes out: an INSERT ... SELECT from it then never
 * fails half-way (a statement without a statement journal could not undo its first rows on its own). */
static int vt_filter(sqlite3_vtab_cursor *c, int idx, const char *idxStr, int argc, sqlite3_value **argv) {
    PackedCursor *cur = (PackedCursor *)c;
    api.value_free(cur->arg);
    cur->arg = NULL;
    cur->nrows = cur->row = 0;
    if (argc != 1 || api.value_type(argv[0]) != SQLITE_BLOB) return corrupt(cur, "not a blob");
    cur->arg = api.value_dup(argv[0]);
    if (cur->arg == NULL) return SQLITE_NOMEM;
    const unsigned char *b = api.value_blob(cur->arg);
    int n = api.value_bytes(cur->arg);
    if (b == NULL || n < HEADER || memcmp(b, MAGIC, 4) != 0) return corrupt(cur, "no header");
    uint32_t head[2];
    memcpy(head, b + 4, 8);
    if (head[0] < 1 || head[0] > MAX_COLUMNS) return corrupt(cur, "a column count out of range");
    const unsigned char *p = b + HEADER, *end = b + n;
    const char *why = NULL;
    for (uint32_t r = 0; r < head[1]; r++)
        if ((p = skip_row(p, end, head[0], NULL, &why)) == NULL) return corrupt(cur, why);
    if (p != end) return corrupt(cur, "bytes after the last row");
    cur->ncols = head[0];
    cur->nrows = head[1];
    cur->end = end;
    cur->p = b + HEADER;
    if (cur->nrows > 0) cur->p = skip_row(cur->p, end, cur->ncols, cur->at, &why);
    return SQLITE_OK;
}

static int vt_next(sqlite3_vtab_cursor *c) {
    PackedCursor *cur = (PackedCursor *)c;
    const char *why = NULL;
    if (++cur->row < cur->nrows) cur->p = skip_row(cur->p, cur->end, cur->ncols, cur->at, &why);
    return SQLITE_OK; /* checked in vt_filter */
}

static int vt_eof(sqlite3_vtab_cursor *c) {
    PackedCursor *cur = (PackedCursor *)c;
    return cur->row >= cur->nrows;
}

static int vt_column(sqlite3_vtab_cursor *c, sqlite3_context *ctx, int i) {
    PackedCursor *cur = (PackedCursor *)c;
    if (i < 0 || (uint32_t)i >= cur->ncols) { /* a column the rows do not have, or the argument */
        api.result_null(ctx);
        return SQLITE_OK;
    }
    const unsigned char *p = cur->at[i];
    int64_t x;
    double d;
    uint32_t len;
    switch (*p) {
    case TAG_INT:
        memcpy(&x, p + 1, 8);
        api.result_int64(ctx, x);
        break;
    case TAG_REAL:
        memcpy(&d, p + 1, 8);
        api.result_double(ctx, d);
        break;
    case TAG_TEXT:
        memcpy(&len, p + 1, 4);
        api.result_text(ctx, (const char *)p + 5, (int)len, SQLITE_TRANSIENT);
        break;
    case TAG_BLOB:
        memcpy(&len, p + 1, 4);
        api.result_blob(ctx, p + 5, (int)len, SQLITE_TRANSIENT);
        break;
    default:
        api.result_null(ctx);
    }
    return SQLITE_OK;
}

static int vt_rowid(sqlite3_vtab_cursor *c, sqlite3_int64 *rowid) {
    *rowid = ((PackedCursor *)c)->row + 1;
    return SQLITE_OK;
}

static const sqlite3_module packed_module = {
    .iVersion = 0,
    .xCreate = NULL, /* eponymous only: used as packed_rows(?), never created as a table */
    .xConnect = vt_connect,
    .xBestIndex = vt_best_index,
    .xDisconnect = vt_disconnect,
    .xDestroy = vt_disconnect,
    .xOpen = vt_open,
    .xClose = vt_close,
    .xFilter = vt_filter,
    .xNext = vt_next,
    .xEof = vt_eof,
    .xColumn = vt_column,
    .xRowid = vt_rowid,
};

static int on_open(sqlite3 *db, char **err, const void *thunk) {
    return api.create_module_v2(db, "packed_rows", &packed_module, NULL, NULL);
}

static int installed = 0;

static PyObject *install(PyObject *self, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s:install", &path)) return NULL;
    if (installed) Py_RETURN_TRUE;
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL) Py_RETURN_FALSE;
#define FIND(field, name)                                                                                   \
    if ((*(void **)&api.field = dlsym(lib, name)) == NULL) goto missing;
    FIND(auto_extension, "sqlite3_auto_extension")
    FIND(create_module_v2, "sqlite3_create_module_v2")
    FIND(declare_vtab, "sqlite3_declare_vtab")
    FIND(malloc, "sqlite3_malloc")
    FIND(free, "sqlite3_free")
    FIND(mprintf, "sqlite3_mprintf")
    FIND(result_null, "sqlite3_result_null")
    FIND(result_int64, "sqlite3_result_int64")
    FIND(result_double, "sqlite3_result_double")
    FIND(result_text, "sqlite3_result_text")
    FIND(result_blob, "sqlite3_result_blob")
    FIND(value_blob, "sqlite3_value_blob")
    FIND(value_bytes, "sqlite3_value_bytes")
    FIND(value_type, "sqlite3_value_type")
    FIND(value_dup, "sqlite3_value_dup")
    FIND(value_free, "sqlite3_value_free")
#undef FIND
    if (api.auto_extension((void (*)(void))on_open) != SQLITE_OK) goto missing;
    installed = 1; /* the library stays loaded: Python's sqlite3 module holds it */
    dlclose(lib);
    Py_RETURN_TRUE;
missing:
    dlclose(lib);
    Py_RETURN_FALSE;
}

static PyMethodDef methods[] = {
    {"pack_rows", pack_rows, METH_VARARGS, "pack_rows(rows, columns) -> bytes: rows packed for packed_rows."},
    {"install", install, METH_VARARGS,
     "install(sqlite3_module_path) -> bool: packed_rows on every SQLite connection opened from now on."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_packed", "Rows packed for a SQLite writer, and the table function that reads them.",
    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__packed(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "MAX_COLUMNS", MAX_COLUMNS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
