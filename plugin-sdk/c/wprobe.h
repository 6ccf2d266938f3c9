/*
 * wprobe.h — write wprobe handler plugins in C (plugin ABI version 1,
 * docs/plugin-abi.md). One header, no library: everything is a
 * `static inline` function or a macro, so a plugin pays only for what it
 * uses.
 *
 * Build a plugin with clang and wasi-libc, as a WASI reactor:
 *
 *     clang --target=wasm32-wasi -mexec-model=reactor -O2 \
 *           -I plugin-sdk/c -Wl,--strip-debug -o count.wasm count.c
 *
 * A complete plugin that counts hits per thread:
 *
 *     #include "wprobe.h"
 *
 *     WPROBE_PLUGIN("{\"name\": \"hits\", \"version\": \"0.1.0\", \"abi\": 1}");
 *
 *     WPROBE_ON_ENTRY(ev) {
 *         return wprobe_count("hits", wprobe_key_int(wprobe_event_tid(ev)));
 *     }
 *
 * What is here, in order: error codes; the host functions (imports of
 * module "wprobe"); the event and its captures; maps; call data; reading
 * target memory; logging; a JSON writer for emit; a JSON reader for the
 * configuration; and the export macros (WPROBE_PLUGIN, WPROBE_INIT,
 * WPROBE_ON_ENTRY, WPROBE_ON_RETURN, WPROBE_ON_POST, WPROBE_MANIFEST).
 *
 * Handlers return an int32_t: 0, a positive value, or a negative error
 * code of a host function (so `return wprobe_count(...)` works). A
 * negative value is logged as a warning and the export still returns 0 to
 * the host: a failed read of a bad pointer is no fault of the plugin. A
 * malformed event is logged as an error and the export returns 1, which
 * the host counts as a fault. To make the host count a fault, call
 * abort() (a trap).
 */
#ifndef WPROBE_H
#define WPROBE_H

#ifndef __wasm__
#error "wprobe.h is for wasm plugins: build with clang --target=wasm32-wasi -mexec-model=reactor"
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WPROBE_ABI_VERSION 1

/* ------------------------------------------------------------------------
 * Error codes: what a host function returns when it refuses.
 */

enum {
    WPROBE_EFAULT_TARGET = -1, /* the target address cannot be read */
    WPROBE_EFAULT_PLUGIN = -2, /* a pointer and length outside the plugin's memory */
    WPROBE_E2BIG = -3,         /* a length above the function's bound */
    WPROBE_EINVAL = -4,        /* a bad argument */
    WPROBE_EPERM = -5,         /* not allowed here */
    WPROBE_ENOENT = -6,        /* no per-call data for this call */
    WPROBE_ELIMIT = -7,        /* a cap was reached (counted by the host) */
    WPROBE_ESRCH = -8,         /* the target process is gone */
};

/* The ABI's name and meaning of a negative code. */
static inline const char *wprobe_strerror(int32_t code) {
    switch (code) {
    case WPROBE_EFAULT_TARGET: return "EFAULT_TARGET: the target address cannot be read (unmapped, or a guard page)";
    case WPROBE_EFAULT_PLUGIN: return "EFAULT_PLUGIN: a pointer and length outside the plugin's memory";
    case WPROBE_E2BIG: return "E2BIG: a length above the function's bound (reads and emits: 65536 bytes, call data: 1024)";
    case WPROBE_EINVAL: return "EINVAL: a bad argument (map name, a map updated with another kind, invalid JSON, lhist bounds)";
    case WPROBE_EPERM: return "EPERM: not allowed here (mutation needs a sync event of a probe that allows it; call_data_set needs an entry handler)";
    case WPROBE_ENOENT: return "ENOENT: no per-call data for this call";
    case WPROBE_ELIMIT: return "ELIMIT: a cap was reached (map keys, histogram series or records per second); the host counted it";
    case WPROBE_ESRCH: return "ESRCH: the target process is gone";
    default: return code >= 0 ? "success" : "an error code this header does not know (is the host newer?)";
    }
}

/* ------------------------------------------------------------------------
 * Host functions: the imports of module "wprobe", as the ABI types them
 * (a pointer is an i32 in wasm32, an address an i64).
 */

#define WPROBE_IMPORT(name) __attribute__((import_module("wprobe"), import_name(#name)))

/* Copies `len` (<= 65536) bytes of the target at `addr`; returns `len`. */
WPROBE_IMPORT(read_memory) int32_t wprobe_read_memory(uint64_t addr, void *buf, int32_t len);
/* Copies the string at `addr` without its NUL, at most `max` bytes;
 * returns its length, `max` when no NUL came within `max` bytes. No NUL
 * is written: see wprobe_read_cstr. */
WPROBE_IMPORT(read_string) int32_t wprobe_read_string(uint64_t addr, void *buf, int32_t max);
/* A record for the event stream: UTF-8 JSON text, <= 65536 bytes. */
WPROBE_IMPORT(emit) int32_t wprobe_emit(const char *json, int32_t len);
WPROBE_IMPORT(map_update)
int32_t wprobe_map_update(int32_t op, const char *name, int32_t name_len, int32_t key_kind,
                          const void *key, int32_t key_len, int64_t value);
WPROBE_IMPORT(map_lhist)
int32_t wprobe_map_lhist(const char *name, int32_t name_len, int32_t key_kind, const void *key,
                         int32_t key_len, int64_t value, int64_t min, int64_t max, int64_t step);
/* Entry handlers: keep `len` (<= 1024) bytes for this call's return. */
WPROBE_IMPORT(call_data_set) int32_t wprobe_call_data_set(const void *buf, int32_t len);
/* Return handlers: copy at most `max` kept bytes; returns their full
 * length, or WPROBE_ENOENT. */
WPROBE_IMPORT(call_data_get) int32_t wprobe_call_data_get(void *buf, int32_t max);
WPROBE_IMPORT(log) int32_t wprobe_log(int32_t level, const char *msg, int32_t len);
/* CLOCK_MONOTONIC, nanoseconds: the clock of the events' time_ns. */
WPROBE_IMPORT(now_ns) uint64_t wprobe_now_ns(void);
/* Sync handlers of probes with mutation allowed. */
WPROBE_IMPORT(set_register) int32_t wprobe_set_register(int32_t index, uint64_t value);
WPROBE_IMPORT(set_return) int32_t wprobe_set_return(uint64_t value);

/* ------------------------------------------------------------------------
 * The event. wprobe_event_parse checks the whole layout once (header,
 * registers, every capture record); after it, the accessors stay in
 * bounds. Bytes past the last capture are ignored (a later ABI may add
 * fields there).
 */

#define WPROBE_EVENT_HEADER_LEN 120u
#define WPROBE_CAPTURE_HEADER_LEN 12u

enum { WPROBE_KIND_ENTRY = 0, WPROBE_KIND_POST = 1, WPROBE_KIND_RETURN = 2 };
enum { WPROBE_FLAG_SYNC = 1, WPROBE_FLAG_MUTATION = 2, WPROBE_FLAG_LIVE_READS = 4 };
#define WPROBE_EM_X86_64 62

/* Capture tags. */
enum {
    WPROBE_CAP_UNSIGNED = 0,
    WPROBE_CAP_SIGNED = 1,
    WPROBE_CAP_HEX = 2,
    WPROBE_CAP_STRING = 3, /* the bytes before the NUL, not NUL-terminated */
    WPROBE_CAP_BYTES = 4,
    WPROBE_CAP_ERROR = 5, /* UTF-8 text: why the fetch failed */
};

typedef struct wprobe_event {
    const uint8_t *bytes; /* the event, `size` bytes */
    uint32_t size;
    uint32_t nregs;
    uint32_t ncaptures;
    uint32_t captures_at; /* offset of the first capture record */
} wprobe_event;

typedef struct wprobe_capture {
    const char *name; /* UTF-8, not NUL-terminated */
    uint32_t name_len;
    uint8_t tag;       /* WPROBE_CAP_* */
    uint8_t truncated; /* strings: the bound was reached before a NUL */
    const uint8_t *value;
    uint32_t value_len;
} wprobe_capture;

static inline uint32_t wprobe__u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v); /* wasm is little-endian, as the ABI */
    return v;
}

static inline uint64_t wprobe__u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Decodes the capture record at `at`; returns NULL and sets *next, or
 * says what is wrong. Arithmetic in 64 bits: no wrap-around. */
static inline const char *wprobe__capture_at(const wprobe_event *ev, uint32_t at,
                                             wprobe_capture *out, uint32_t *next) {
    if ((uint64_t)at + WPROBE_CAPTURE_HEADER_LEN > ev->size)
        return "a capture record runs past the end of the event";
    const uint8_t *h = ev->bytes + at;
    uint64_t name_len = wprobe__u32(h), value_len = wprobe__u32(h + 4);
    uint64_t end = (uint64_t)at + WPROBE_CAPTURE_HEADER_LEN + name_len + value_len;
    if (end > ev->size)
        return "a capture record runs past the end of the event";
    out->name = (const char *)h + WPROBE_CAPTURE_HEADER_LEN;
    out->name_len = (uint32_t)name_len;
    out->tag = h[8];
    out->truncated = h[9] != 0;
    out->value = h + WPROBE_CAPTURE_HEADER_LEN + name_len;
    out->value_len = (uint32_t)value_len;
    if (out->tag <= WPROBE_CAP_HEX && value_len != 8)
        return "an integer capture is not 8 bytes";
    *next = (uint32_t)end;
    return NULL;
}

/* Checks `len` bytes at `buf` against the layout and fills *ev. Returns
 * NULL, or what is wrong with the buffer. */
static inline const char *wprobe_event_parse(wprobe_event *ev, const void *buf, size_t len) {
    const uint8_t *b = (const uint8_t *)buf;
    if (b == NULL || len < WPROBE_EVENT_HEADER_LEN)
        return "the event is shorter than the 120-byte header (does the host speak ABI v1?)";
    uint32_t size = wprobe__u32(b);
    if (size < WPROBE_EVENT_HEADER_LEN || size > len)
        return "the event's size field does not fit its buffer";
    ev->bytes = b;
    ev->size = size;
    ev->nregs = wprobe__u32(b + 112);
    ev->ncaptures = wprobe__u32(b + 20);
    uint64_t regs_end = WPROBE_EVENT_HEADER_LEN + 8 * (uint64_t)ev->nregs;
    if (regs_end > size)
        return "the event's registers do not fit in it";
    ev->captures_at = (uint32_t)regs_end;
    uint32_t at = ev->captures_at;
    for (uint32_t i = 0; i < ev->ncaptures; i++) {
        wprobe_capture c;
        const char *why = wprobe__capture_at(ev, at, &c, &at);
        if (why)
            return why;
    }
    return NULL;
}

static inline uint32_t wprobe_event_probe(const wprobe_event *ev) { return wprobe__u32(ev->bytes + 4); }
/* WPROBE_KIND_ENTRY, _POST or _RETURN. */
static inline uint8_t wprobe_event_kind(const wprobe_event *ev) { return ev->bytes[8]; }
static inline uint8_t wprobe_event_flags(const wprobe_event *ev) { return ev->bytes[9]; }
/* The thread waits for the handler; reads are consistent. */
static inline int wprobe_event_is_sync(const wprobe_event *ev) { return (ev->bytes[9] & WPROBE_FLAG_SYNC) != 0; }
/* set_register and set_return are allowed. */
static inline int wprobe_event_may_mutate(const wprobe_event *ev) { return (ev->bytes[9] & WPROBE_FLAG_MUTATION) != 0; }
/* The thread has resumed: reads see the process after the hit. */
static inline int wprobe_event_live_reads(const wprobe_event *ev) { return (ev->bytes[9] & WPROBE_FLAG_LIVE_READS) != 0; }
/* ELF e_machine (WPROBE_EM_X86_64). */
static inline uint16_t wprobe_event_arch(const wprobe_event *ev) { return (uint16_t)(ev->bytes[10] | ev->bytes[11] << 8); }
static inline int32_t wprobe_event_pid(const wprobe_event *ev) { return (int32_t)wprobe__u32(ev->bytes + 12); }
static inline int32_t wprobe_event_tid(const wprobe_event *ev) { return (int32_t)wprobe__u32(ev->bytes + 16); }
/* CLOCK_MONOTONIC of the hit. */
static inline uint64_t wprobe_event_time_ns(const wprobe_event *ev) { return wprobe__u64(ev->bytes + 24); }
/* The probed address in the process. */
static inline uint64_t wprobe_event_addr(const wprobe_event *ev) { return wprobe__u64(ev->bytes + 32); }
/* Return events: when the function was entered; otherwise time_ns. */
static inline uint64_t wprobe_event_entry_time_ns(const wprobe_event *ev) { return wprobe__u64(ev->bytes + 40); }
/* time_ns - entry_time_ns, 0 rather than a wrap-around. */
static inline uint64_t wprobe_event_latency_ns(const wprobe_event *ev) {
    uint64_t t = wprobe_event_time_ns(ev), e = wprobe_event_entry_time_ns(ev);
    return t > e ? t - e : 0;
}
/* Return events: rax; otherwise 0. */
static inline uint64_t wprobe_event_retval(const wprobe_event *ev) { return wprobe__u64(ev->bytes + 48); }
/* Return events: where the function returns to; otherwise 0. */
static inline uint64_t wprobe_event_return_address(const wprobe_event *ev) { return wprobe__u64(ev->bytes + 56); }
/* Argument i (0-5: rdi, rsi, rdx, rcx, r8, r9); 0 for another i. */
static inline uint64_t wprobe_event_arg(const wprobe_event *ev, unsigned i) {
    return i < 6 ? wprobe__u64(ev->bytes + 64 + 8 * i) : 0;
}
static inline uint32_t wprobe_event_nregs(const wprobe_event *ev) { return ev->nregs; }
/* Register i in struct user_regs_struct order; 0 past nregs. */
static inline uint64_t wprobe_event_reg(const wprobe_event *ev, uint32_t i) {
    return i < ev->nregs ? wprobe__u64(ev->bytes + WPROBE_EVENT_HEADER_LEN + 8 * i) : 0;
}

/* x86_64 register indexes (struct user_regs_struct of <sys/user.h>). */
enum {
    WPROBE_X86_64_R15, WPROBE_X86_64_R14, WPROBE_X86_64_R13, WPROBE_X86_64_R12,
    WPROBE_X86_64_RBP, WPROBE_X86_64_RBX, WPROBE_X86_64_R11, WPROBE_X86_64_R10,
    WPROBE_X86_64_R9, WPROBE_X86_64_R8, WPROBE_X86_64_RAX, WPROBE_X86_64_RCX,
    WPROBE_X86_64_RDX, WPROBE_X86_64_RSI, WPROBE_X86_64_RDI, WPROBE_X86_64_ORIG_RAX,
    WPROBE_X86_64_RIP, WPROBE_X86_64_CS, WPROBE_X86_64_EFLAGS, WPROBE_X86_64_RSP,
    WPROBE_X86_64_SS, WPROBE_X86_64_FS_BASE, WPROBE_X86_64_GS_BASE, WPROBE_X86_64_DS,
    WPROBE_X86_64_ES, WPROBE_X86_64_FS, WPROBE_X86_64_GS,
};

/* The index of register `name` ("rdi" or "%rdi") for the event's
 * architecture, or -1. */
static inline int wprobe_event_reg_index(const wprobe_event *ev, const char *name) {
    static const char *const x86_64[] = {
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9",
        "r8", "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs",
        "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
    };
    if (name[0] == '%')
        name++;
    if (wprobe_event_arch(ev) != WPROBE_EM_X86_64)
        return -1;
    for (int i = 0; i < (int)(sizeof x86_64 / sizeof x86_64[0]); i++)
        if (strcmp(x86_64[i], name) == 0)
            return (uint32_t)i < ev->nregs ? i : -1;
    return -1;
}

/* Register `name` into *out; 0, or -1 for a name the event does not have. */
static inline int wprobe_event_reg_by_name(const wprobe_event *ev, const char *name, uint64_t *out) {
    int i = wprobe_event_reg_index(ev, name);
    if (i < 0)
        return -1;
    *out = wprobe_event_reg(ev, (uint32_t)i);
    return 0;
}

/* Iterating over captures:
 *
 *     wprobe_capture_iter it = wprobe_captures(ev);
 *     wprobe_capture c;
 *     while (wprobe_capture_next(&it, &c)) { ... }
 */
typedef struct wprobe_capture_iter {
    const wprobe_event *ev;
    uint32_t at;
    uint32_t index;
} wprobe_capture_iter;

static inline wprobe_capture_iter wprobe_captures(const wprobe_event *ev) {
    wprobe_capture_iter it = {ev, ev->captures_at, 0};
    return it;
}

/* The next capture into *out: 1, or 0 at the end. */
static inline int wprobe_capture_next(wprobe_capture_iter *it, wprobe_capture *out) {
    if (it->index >= it->ev->ncaptures)
        return 0;
    if (wprobe__capture_at(it->ev, it->at, out, &it->at) != NULL) {
        it->index = it->ev->ncaptures; /* parse checked them: not reached */
        return 0;
    }
    it->index++;
    return 1;
}

/* Whether capture *c is called `name`. */
static inline int wprobe_capture_is(const wprobe_capture *c, const char *name) {
    return strlen(name) == c->name_len && memcmp(c->name, name, c->name_len) == 0;
}

/* The first capture called `name` into *out: 1, or 0 when there is none. */
static inline int wprobe_capture_find(const wprobe_event *ev, const char *name, wprobe_capture *out) {
    wprobe_capture_iter it = wprobe_captures(ev);
    while (wprobe_capture_next(&it, out))
        if (wprobe_capture_is(out, name))
            return 1;
    return 0;
}

/* The integer of an unsigned, signed or hex capture (0 for other tags). */
static inline uint64_t wprobe_capture_u64(const wprobe_capture *c) {
    return c->tag <= WPROBE_CAP_HEX && c->value_len == 8 ? wprobe__u64(c->value) : 0;
}

/* ------------------------------------------------------------------------
 * Maps, kept by the host (the bpftrace functions count, sum, min, max,
 * avg, hist, lhist). A key is made with wprobe_key_int, wprobe_key_str,
 * wprobe_key_bytes or WPROBE_KEY_NONE.
 */

enum { WPROBE_KEY_KIND_NONE = 0, WPROBE_KEY_KIND_BYTES = 1, WPROBE_KEY_KIND_INT = 2 };
#define WPROBE_MAX_KEY_BYTES 256 /* the longest bytes key */
#define WPROBE_MAX_NAME_BYTES 64 /* the longest map name */
enum {
    WPROBE_OP_COUNT = 0,
    WPROBE_OP_SUM = 1,
    WPROBE_OP_MIN = 2,
    WPROBE_OP_MAX = 3,
    WPROBE_OP_AVG = 4,
    WPROBE_OP_HIST = 5,
};

typedef struct wprobe_key {
    int32_t kind;    /* WPROBE_KEY_KIND_* */
    const void *ptr; /* bytes keys */
    int32_t len;
    int64_t ival; /* integer keys */
} wprobe_key;

/* No key: the map has one value (bpftrace's @x). */
#define WPROBE_KEY_NONE (wprobe__key(WPROBE_KEY_KIND_NONE, NULL, 0, 0))

static inline wprobe_key wprobe__key(int32_t kind, const void *ptr, int32_t len, int64_t ival) {
    wprobe_key k = {kind, ptr, len, ival};
    return k;
}

/* An integer key (a tid, a probe id, an argument). */
static inline wprobe_key wprobe_key_int(int64_t v) { return wprobe__key(WPROBE_KEY_KIND_INT, NULL, 8, v); }
/* A text key (<= 256 bytes). */
static inline wprobe_key wprobe_key_str(const char *s) {
    return wprobe__key(WPROBE_KEY_KIND_BYTES, s, (int32_t)strlen(s), 0);
}
/* A bytes key (<= 256 bytes; shown as text when UTF-8, else as hex). */
static inline wprobe_key wprobe_key_bytes(const void *p, size_t n) {
    return wprobe__key(WPROBE_KEY_KIND_BYTES, p, (int32_t)n, 0);
}

/* Applies `op` with `value` to map `name` at `key`. */
static inline int32_t wprobe_map(int32_t op, const char *name, wprobe_key key, int64_t value) {
    const void *kp = key.kind == WPROBE_KEY_KIND_INT ? (const void *)&key.ival : key.ptr;
    int32_t kl = key.kind == WPROBE_KEY_KIND_INT ? 8 : key.len;
    return wprobe_map_update(op, name, (int32_t)strlen(name), key.kind, kp, kl, value);
}

/* @name[key] = count() */
static inline int32_t wprobe_count(const char *name, wprobe_key key) { return wprobe_map(WPROBE_OP_COUNT, name, key, 0); }
/* @name[key] = sum(v) */
static inline int32_t wprobe_sum(const char *name, wprobe_key key, int64_t v) { return wprobe_map(WPROBE_OP_SUM, name, key, v); }
/* @name[key] = min(v) */
static inline int32_t wprobe_min(const char *name, wprobe_key key, int64_t v) { return wprobe_map(WPROBE_OP_MIN, name, key, v); }
/* @name[key] = max(v) */
static inline int32_t wprobe_max(const char *name, wprobe_key key, int64_t v) { return wprobe_map(WPROBE_OP_MAX, name, key, v); }
/* @name[key] = avg(v) */
static inline int32_t wprobe_avg(const char *name, wprobe_key key, int64_t v) { return wprobe_map(WPROBE_OP_AVG, name, key, v); }
/* @name[key] = hist(v): log2 buckets. */
static inline int32_t wprobe_hist(const char *name, wprobe_key key, int64_t v) { return wprobe_map(WPROBE_OP_HIST, name, key, v); }
/* @name[key] = lhist(v, min, max, step); the first call fixes the bounds. */
static inline int32_t wprobe_lhist(const char *name, wprobe_key key, int64_t v, int64_t min, int64_t max, int64_t step) {
    const void *kp = key.kind == WPROBE_KEY_KIND_INT ? (const void *)&key.ival : key.ptr;
    int32_t kl = key.kind == WPROBE_KEY_KIND_INT ? 8 : key.len;
    return wprobe_map_lhist(name, (int32_t)strlen(name), key.kind, kp, kl, v, min, max, step);
}

/* ------------------------------------------------------------------------
 * Per-call data, target memory, mutation.
 */

/* Entry handler: keep one integer for this call's return handler. A plugin
 * that may change what it keeps should put a version in the bytes: a
 * replacement's return handler gets what the old version kept. */
static inline int32_t wprobe_call_data_set_u64(uint64_t v) { return wprobe_call_data_set(&v, 8); }

/* Return handler: what wprobe_call_data_set_u64 kept, into *out. 0,
 * WPROBE_ENOENT when nothing was kept, WPROBE_EINVAL when it is not 8
 * bytes. */
static inline int32_t wprobe_call_data_get_u64(uint64_t *out) {
    int32_t n = wprobe_call_data_get(out, 8);
    if (n < 0)
        return n;
    return n == 8 ? 0 : WPROBE_EINVAL;
}

/* Reads the NUL-terminated string at `addr` into `buf` of `size` bytes
 * (2 <= size <= 65537: at most 65536 bytes of text and the NUL), and
 * NUL-terminates it. Returns its length or an error code; *truncated (if
 * not NULL) says that no NUL came within size - 1 bytes, so `buf` holds
 * the string's first part. */
static inline int32_t wprobe_read_cstr(uint64_t addr, char *buf, size_t size, int *truncated) {
    if (size < 2 || size > 65537)
        return WPROBE_E2BIG;
    /* Asking for `size` bytes, one more than fit before the NUL, tells a
     * string of size - 1 bytes from a longer one (the host's answer for
     * `max` bytes cannot). */
    int32_t ask = size > 65536 ? 65536 : (int32_t)size;
    int32_t n = wprobe_read_string(addr, buf, ask);
    if (n < 0)
        return n;
    int cut = n >= ask;
    if ((size_t)n >= size)
        n = (int32_t)size - 1;
    buf[n] = '\0';
    if (truncated)
        *truncated = cut;
    return n;
}

/* Reads the 8-byte integer at `addr` into *out; 0 or an error code. */
static inline int32_t wprobe_read_u64(uint64_t addr, uint64_t *out) {
    int32_t n = wprobe_read_memory(addr, out, 8);
    return n < 0 ? n : 0;
}

/* ------------------------------------------------------------------------
 * Logging: lines in the plugin's log.
 */

enum { WPROBE_LOG_ERROR = 0, WPROBE_LOG_WARN = 1, WPROBE_LOG_INFO = 2, WPROBE_LOG_DEBUG = 3 };

static inline int32_t wprobe_log_str(int32_t level, const char *msg) {
    return wprobe_log(level, msg, (int32_t)strlen(msg));
}

/* Logs the concatenation of up to three texts (NULLs skipped), without
 * printf, which would make a module several times larger. */
static inline int32_t wprobe_log3(int32_t level, const char *a, const char *b, const char *c) {
    char line[512];
    size_t n = 0;
    const char *parts[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        for (const char *p = parts[i]; p && *p && n < sizeof line; p++)
            line[n++] = *p;
    return wprobe_log(level, line, (int32_t)n);
}

/* ------------------------------------------------------------------------
 * A JSON writer for emit: an object of fields into a caller's buffer.
 *
 *     char buf[256];
 *     wprobe_json j;
 *     wprobe_json_begin(&j, buf, sizeof buf);
 *     wprobe_json_u64(&j, "probe", wprobe_event_probe(ev));
 *     wprobe_json_str(&j, "path", path);
 *     return wprobe_json_emit(&j);
 *
 * Text is escaped, and bytes that are not UTF-8 become U+FFFD, so the
 * record is always valid JSON. A record that does not fit the buffer is
 * not emitted: wprobe_json_end and wprobe_json_emit return WPROBE_E2BIG.
 */

typedef struct wprobe_json {
    char *buf;
    size_t cap;
    size_t len;
    int fields;
    int overflow;
} wprobe_json;

static inline void wprobe__json_put(wprobe_json *j, const char *s, size_t n) {
    if (j->overflow || n > j->cap - j->len) {
        j->overflow = 1;
        return;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
}

static inline void wprobe__json_u64(wprobe_json *j, uint64_t v) {
    char d[20];
    int n = 0;
    do {
        d[sizeof d - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    wprobe__json_put(j, d + sizeof d - n, (size_t)n);
}

/* The length of the UTF-8 sequence at s (of n bytes), or 0 if invalid. */
static inline size_t wprobe__utf8_len(const unsigned char *s, size_t n) {
    size_t len;
    uint32_t min, cp;
    if (s[0] < 0x80)
        return 1;
    else if ((s[0] & 0xe0) == 0xc0)
        len = 2, min = 0x80, cp = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        len = 3, min = 0x800, cp = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        len = 4, min = 0x10000, cp = s[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000))
        return 0;
    return len;
}

/* `n` bytes of `s` as a JSON string, quotes included. */
static inline void wprobe__json_text(wprobe_json *j, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    wprobe__json_put(j, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            wprobe__json_put(j, e, 2);
            i++;
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            if (c == '\n')
                wprobe__json_put(j, "\\n", 2);
            else if (c == '\t')
                wprobe__json_put(j, "\\t", 2);
            else if (c == '\r')
                wprobe__json_put(j, "\\r", 2);
            else
                wprobe__json_put(j, e, 6);
            i++;
        } else {
            size_t len = wprobe__utf8_len(u + i, n - i);
            if (len == 0) {
                wprobe__json_put(j, "\\ufffd", 6);
                i++;
            } else {
                wprobe__json_put(j, s + i, len);
                i += len;
            }
        }
    }
    wprobe__json_put(j, "\"", 1);
}

static inline void wprobe__json_key(wprobe_json *j, const char *key) {
    if (j->fields++)
        wprobe__json_put(j, ",", 1);
    wprobe__json_text(j, key, strlen(key));
    wprobe__json_put(j, ":", 1);
}

static inline void wprobe_json_begin(wprobe_json *j, char *buf, size_t cap) {
    j->buf = buf;
    j->cap = cap;
    j->len = 0;
    j->fields = 0;
    j->overflow = 0;
    wprobe__json_put(j, "{", 1);
}

static inline void wprobe_json_u64(wprobe_json *j, const char *key, uint64_t v) {
    wprobe__json_key(j, key);
    wprobe__json_u64(j, v);
}

static inline void wprobe_json_i64(wprobe_json *j, const char *key, int64_t v) {
    wprobe__json_key(j, key);
    if (v < 0)
        wprobe__json_put(j, "-", 1);
    wprobe__json_u64(j, v < 0 ? 0 - (uint64_t)v : (uint64_t)v);
}

static inline void wprobe_json_bool(wprobe_json *j, const char *key, int v) {
    wprobe__json_key(j, key);
    wprobe__json_put(j, v ? "true" : "false", v ? 4 : 5);
}

/* A NUL-terminated string. */
static inline void wprobe_json_str(wprobe_json *j, const char *key, const char *s) {
    wprobe__json_key(j, key);
    wprobe__json_text(j, s, strlen(s));
}

/* `n` bytes that may hold NULs or not be UTF-8 (target memory). */
static inline void wprobe_json_strn(wprobe_json *j, const char *key, const void *s, size_t n) {
    wprobe__json_key(j, key);
    wprobe__json_text(j, (const char *)s, n);
}

/* An address as a "0x..." string, as the host shows addresses. */
static inline void wprobe_json_hex(wprobe_json *j, const char *key, uint64_t v) {
    static const char hex[] = "0123456789abcdef";
    char d[19];
    int n = 0;
    do {
        d[sizeof d - 1 - n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    d[sizeof d - 1 - n++] = 'x';
    d[sizeof d - 1 - n++] = '0';
    wprobe__json_key(j, key);
    wprobe__json_put(j, "\"", 1);
    wprobe__json_put(j, d + sizeof d - n, (size_t)n);
    wprobe__json_put(j, "\"", 1);
}

static inline void wprobe_json_u64_array(wprobe_json *j, const char *key, const uint64_t *v, size_t n) {
    wprobe__json_key(j, key);
    wprobe__json_put(j, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            wprobe__json_put(j, ",", 1);
        wprobe__json_u64(j, v[i]);
    }
    wprobe__json_put(j, "]", 1);
}

/* A field whose value is JSON text the caller vouches for. */
static inline void wprobe_json_raw(wprobe_json *j, const char *key, const char *json) {
    wprobe__json_key(j, key);
    wprobe__json_put(j, json, strlen(json));
}

/* Closes the object and NUL-terminates it when there is room; returns its
 * length, or WPROBE_E2BIG when it did not fit. */
static inline int32_t wprobe_json_end(wprobe_json *j) {
    wprobe__json_put(j, "}", 1);
    if (j->overflow)
        return WPROBE_E2BIG;
    if (j->len < j->cap)
        j->buf[j->len] = '\0';
    return (int32_t)j->len;
}

/* Closes the object and emits it. */
static inline int32_t wprobe_json_emit(wprobe_json *j) {
    int32_t n = wprobe_json_end(j);
    return n < 0 ? n : wprobe_emit(j->buf, n);
}

/* ------------------------------------------------------------------------
 * A JSON reader for the configuration: a top-level field of an object.
 */

static inline void wprobe__json_ws(const char **p) {
    while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')
        (*p)++;
}

/* Skips a string at *p; 0, or -1 if it is not one. */
static inline int wprobe__json_skip_string(const char **p) {
    if (**p != '"')
        return -1;
    for ((*p)++; **p != '"'; (*p)++) {
        if ((unsigned char)**p < 0x20)
            return -1;
        if (**p == '\\' && *++*p == '\0')
            return -1;
    }
    (*p)++;
    return 0;
}

/* Skips any value at *p; 0, or -1 if the text is not JSON (strings and
 * brackets are checked, scalars only roughly). */
static inline int wprobe__json_skip_value(const char **p) {
    int depth = 0;
    do {
        wprobe__json_ws(p);
        char c = **p;
        if (c == '"') {
            if (wprobe__json_skip_string(p))
                return -1;
        } else if (c == '{' || c == '[') {
            if (++depth > 64)
                return -1;
            (*p)++;
        } else if (c == '}' || c == ']') {
            if (--depth < 0)
                return -1;
            (*p)++;
        } else if (c == ',' || c == ':') {
            if (depth == 0)
                return -1;
            (*p)++;
        } else if ((c >= '0' && c <= '9') || c == '-' || c == 't' || c == 'f' || c == 'n') {
            while (**p && strchr(",}] \t\r\n", **p) == NULL)
                (*p)++;
        } else {
            return -1;
        }
    } while (depth > 0);
    return 0;
}

/* Whether `json` (NUL-terminated) is one JSON object: 1 or 0. Strings and
 * brackets are checked, scalars only roughly. */
static inline int wprobe_json_is_object(const char *json) {
    const char *p = json;
    wprobe__json_ws(&p);
    if (*p != '{' || wprobe__json_skip_value(&p) != 0)
        return 0;
    wprobe__json_ws(&p);
    return *p == '\0';
}

/* Finds field `key` of the JSON object `json` (NUL-terminated; keys with
 * escapes are not matched). Returns a pointer to its value's text, or
 * NULL when there is no such field or the text is not an object. */
static inline const char *wprobe_json_find(const char *json, const char *key) {
    const char *p = json, *found = NULL;
    size_t klen = strlen(key);
    wprobe__json_ws(&p);
    if (*p++ != '{')
        return NULL;
    wprobe__json_ws(&p);
    if (*p == '}')
        return NULL;
    for (;;) {
        wprobe__json_ws(&p);
        const char *k = p;
        if (wprobe__json_skip_string(&p))
            return NULL;
        int match = (size_t)(p - k) == klen + 2 && memcmp(k + 1, key, klen) == 0;
        wprobe__json_ws(&p);
        if (*p++ != ':')
            return NULL;
        wprobe__json_ws(&p);
        if (match)
            found = p;
        if (wprobe__json_skip_value(&p))
            return NULL;
        wprobe__json_ws(&p);
        if (*p == ',') {
            p++;
            continue;
        }
        return *p == '}' ? found : NULL;
    }
}

/* Field `key` of `json` as a non-negative integer into *out: 0, or -1 when
 * it is missing or not such an integer (*out unchanged). */
static inline int wprobe_json_get_u64(const char *json, const char *key, uint64_t *out) {
    const char *p = wprobe_json_find(json, key);
    uint64_t v = 0;
    if (p == NULL || *p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (*p == '.' || *p == 'e' || *p == 'E')
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------------
 * Exports.
 *
 * WPROBE_PLUGIN(manifest) — once per plugin, at file scope, followed by a
 * semicolon: exports wprobe_abi_version (1) and wprobe_alloc, and embeds
 * the manifest (a string literal of JSON; see WPROBE_MANIFEST).
 *
 * WPROBE_INIT(config, len) { ... } — optional: called once with the
 * configuration (`config` is a NUL-terminated copy of the JSON text, `len`
 * its length); return 0 to accept it, anything else refuses the
 * attachment.
 *
 * WPROBE_ON_ENTRY(ev) { ... }, WPROBE_ON_RETURN(ev) { ... },
 * WPROBE_ON_POST(ev) { ... } — the handlers; `ev` is a parsed
 * `const wprobe_event *`. The host calls a plugin only for the kinds it
 * has handlers for. Return values: see the top of this file.
 *
 * wprobe_alloc uses malloc and never frees: the host writes the
 * configuration and every event into memory it got from wprobe_alloc, and
 * keeps using the event buffer for the instance's life.
 *
 * The manifest: clang 14 puts `__attribute__((section(...)))` data into a
 * data segment, never a custom section, so WPROBE_MANIFEST writes the
 * custom section in file-scope assembly (".section .custom_section.NAME"
 * is how LLVM's wasm assembler names one). The JSON must be one string
 * literal (not several pasted together) whose escapes are the common ones
 * (\" \\ \n \t); the preprocessor's # operator turns it into the
 * assembler's own string syntax.
 */

#define WPROBE__STR(x) #x
#define WPROBE_MANIFEST(json)                                                                  \
    __asm__(".section .custom_section.wprobe.manifest,\"\",@\n"                                \
            ".ascii " WPROBE__STR(json) "\n"                                                   \
            ".text\n")

#define WPROBE_PLUGIN(manifest)                                                                \
    WPROBE_MANIFEST(manifest);                                                                 \
    __attribute__((export_name("wprobe_abi_version"))) int32_t wprobe__abi_version(void) {     \
        return WPROBE_ABI_VERSION;                                                             \
    }                                                                                          \
    __attribute__((export_name("wprobe_alloc"))) void *wprobe__alloc(int32_t size) {           \
        return size < 0 ? NULL : malloc(size ? (size_t)size : 1);                              \
    }                                                                                          \
    extern int wprobe__plugin_defined_once

#define WPROBE_INIT(config, len)                                                               \
    static int32_t wprobe__init(const char *config, size_t len);                               \
    __attribute__((export_name("wprobe_init"))) int32_t wprobe__init_export(const char *buf,   \
                                                                            int32_t n) {       \
        if (n < 0 || (buf == NULL && n > 0))                                                   \
            return 1;                                                                          \
        char *copy = (char *)malloc((size_t)n + 1);                                            \
        if (copy == NULL)                                                                      \
            return 1;                                                                          \
        memcpy(copy, buf, (size_t)n);                                                          \
        copy[n] = '\0';                                                                        \
        int32_t rc = wprobe__init(copy, (size_t)n);                                            \
        free(copy);                                                                            \
        if (rc != 0)                                                                           \
            wprobe_log_str(WPROBE_LOG_ERROR, "wprobe_init: the configuration was refused");    \
        return rc != 0;                                                                        \
    }                                                                                          \
    static int32_t wprobe__init(const char *config, size_t len)

/* The body of every handler export: parse, call, report. */
static inline int32_t wprobe__dispatch(const char *export_name, const uint8_t *buf, int32_t len,
                                       int32_t (*handler)(const wprobe_event *)) {
    wprobe_event ev;
    const char *why = wprobe_event_parse(&ev, buf, len < 0 ? 0 : (size_t)len);
    if (why) {
        wprobe_log3(WPROBE_LOG_ERROR, export_name, ": ", why);
        return 1;
    }
    int32_t rc = handler(&ev);
    if (rc < 0)
        wprobe_log3(WPROBE_LOG_WARN, export_name, ": ", wprobe_strerror(rc));
    return 0;
}

#define WPROBE__HANDLER(xname, fn, ev)                                                         \
    static int32_t fn(const wprobe_event *ev);                                                 \
    __attribute__((export_name(xname))) int32_t fn##_export(const uint8_t *buf, int32_t len) { \
        return wprobe__dispatch(xname, buf, len, fn);                                          \
    }                                                                                          \
    static int32_t fn(const wprobe_event *ev)

#define WPROBE_ON_ENTRY(ev) WPROBE__HANDLER("wprobe_on_entry", wprobe__on_entry, ev)
#define WPROBE_ON_RETURN(ev) WPROBE__HANDLER("wprobe_on_return", wprobe__on_return, ev)
#define WPROBE_ON_POST(ev) WPROBE__HANDLER("wprobe_on_post", wprobe__on_post, ev)

#endif /* WPROBE_H */
