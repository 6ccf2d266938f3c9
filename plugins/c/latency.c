/*
 * latency — a log2 histogram of how long a function takes.
 *
 * Attach it to a return probe (`uretprobe:libc:malloc`): the host then
 * calls the entry handler when the function is entered and the return
 * handler when that same call returns. The entry handler keeps the entry
 * time as per-call data; the return handler takes it back and adds the
 * difference to the histogram `latency_ns`. The host keys call data by
 * thread and call, so recursion and threads cannot mix.
 *
 * In bpftrace's notation, for a fast function:
 *
 *     @latency_ns:
 *     [64, 128)     12 |@@@@                |
 *     [128, 256)    51 |@@@@@@@@@@@@@@@@@@@@|
 */
#include "wprobe.h"

WPROBE_PLUGIN("{\"name\": \"latency-c\", \"version\": \"0.1.0\", \"abi\": 1}");

/* Keeps the time of the entry hit (8 bytes; a later version that keeps
 * something else should tag the bytes with a version, since a replacement
 * gets the call data its predecessor kept). */
WPROBE_ON_ENTRY(ev) {
    return wprobe_call_data_set_u64(wprobe_event_time_ns(ev));
}

WPROBE_ON_RETURN(ev) {
    uint64_t entered;
    int32_t rc = wprobe_call_data_get_u64(&entered);
    if (rc == WPROBE_ENOENT)
        /* No call data: the function was entered before the plugin was
         * attached. The event knows the entry time too; use it. */
        entered = wprobe_event_entry_time_ns(ev);
    else if (rc < 0)
        return rc;

    /* The return event's own time rather than wprobe_now_ns(): an async
     * handler may run a little after the return, and that delay is not the
     * function's. */
    uint64_t now = wprobe_event_time_ns(ev);
    uint64_t latency = now > entered ? now - entered : 0;
    return wprobe_hist("latency_ns", WPROBE_KEY_NONE, (int64_t)latency);
}
