/*
 * strings — the strings a function is given, emitted and counted.
 *
 * For each hit the plugin takes a string argument — a path passed to open
 * or openat, a command to system — emits it, and counts it in the map
 * `strings`. Which argument is configuration: {"arg": 1} for
 * openat(dirfd, path, ...); the default is {"arg": 0}, and "max" bounds
 * the length read (default 256 bytes).
 *
 * If the probe captures a string (`path=+0($arg2):string`), the plugin
 * uses that capture instead: it was read while the thread was stopped, so
 * it is consistent even when the handler runs after the thread resumed.
 * Otherwise it reads the target's memory with read_string.
 *
 *     {"probe":1,"tid":4242,"string":"/etc/ld.so.cache","truncated":false,"source":"memory"}
 *     @strings[/etc/ld.so.cache]: 1
 */
#include "wprobe.h"

WPROBE_PLUGIN("{\"name\": \"strings-c\", \"version\": \"0.1.0\", \"abi\": 1}");

/* Set once by the configuration. */
static unsigned arg_index = 0;
static size_t max_len = 256;

/* The largest "max": PATH_MAX, and a record that stays well below the
 * 65536 bytes emit takes even when every byte needs escaping. */
#define MAX_LIMIT 4096

/* Room for the longest string read and its NUL. */
static char text[MAX_LIMIT + 1];

/* Refuses a configuration it cannot follow, saying what to write. */
WPROBE_INIT(config, len) {
    (void)len;
    uint64_t v;
    if (!wprobe_json_is_object(config)) {
        wprobe_log_str(WPROBE_LOG_ERROR, "configuration: not a JSON object; give e.g. {\"arg\": 1}");
        return 1;
    }
    if (wprobe_json_find(config, "arg")) {
        if (wprobe_json_get_u64(config, "arg", &v) != 0 || v > 5) {
            wprobe_log_str(WPROBE_LOG_ERROR, "configuration: \"arg\" must be an argument index, 0 to 5");
            return 1;
        }
        arg_index = (unsigned)v;
    }
    if (wprobe_json_find(config, "max")) {
        if (wprobe_json_get_u64(config, "max", &v) != 0 || v < 1 || v > MAX_LIMIT) {
            wprobe_log_str(WPROBE_LOG_ERROR, "configuration: \"max\" must be a length from 1 to 4096");
            return 1;
        }
        max_len = (size_t)v;
    }
    return 0;
}

WPROBE_ON_ENTRY(ev) {
    const char *source = "capture";
    const char *s = NULL;
    size_t n = 0;
    int truncated = 0;

    /* The first string capture, if the probe has one. */
    wprobe_capture c;
    wprobe_capture_iter it = wprobe_captures(ev);
    while (wprobe_capture_next(&it, &c)) {
        if (c.tag == WPROBE_CAP_STRING) {
            s = (const char *)c.value;
            n = c.value_len;
            truncated = c.truncated;
            break;
        }
    }

    /* Otherwise the argument: a pointer into the target. */
    if (s == NULL) {
        int32_t got = wprobe_read_cstr(wprobe_event_arg(ev, arg_index), text, max_len + 1, &truncated);
        if (got < 0)
            return got;
        s = text;
        n = (size_t)got;
        source = "memory";
    }

    /* The map key keeps the bytes (shown as hex if not UTF-8); the record
     * shows them with U+FFFD for bad bytes. A key is at most 256 bytes:
     * longer strings are counted by their start. */
    size_t key_len = n < WPROBE_MAX_KEY_BYTES ? n : WPROBE_MAX_KEY_BYTES;
    int32_t rc = wprobe_count("strings", wprobe_key_bytes(s, key_len));
    if (rc < 0)
        return rc;

    /* Room for the record: every byte of the string escaped as \uXXXX at
     * worst, and the other fields. Static: the wasm stack is small. */
    static char buf[6 * MAX_LIMIT + 256];
    wprobe_json j;
    wprobe_json_begin(&j, buf, sizeof buf);
    wprobe_json_u64(&j, "probe", wprobe_event_probe(ev));
    wprobe_json_i64(&j, "tid", wprobe_event_tid(ev));
    wprobe_json_strn(&j, "string", s, n);
    wprobe_json_bool(&j, "truncated", truncated);
    wprobe_json_str(&j, "source", source);
    return wprobe_json_emit(&j);
}
