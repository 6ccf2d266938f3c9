/*
 * count — how often each probe fires, and on which threads.
 *
 * The smallest useful plugin: every entry hit adds one to two counters
 * kept by the host, one keyed by the probe id and one by the thread id,
 * like bpftrace's `@hits_by_probe[probe] = count(); @hits_by_tid[tid] =
 * count();`. Nothing is emitted per hit; the maps are the result, and the
 * host shows them (and keeps them if the plugin is replaced). On
 * `uprobe:libc:malloc`, in bpftrace's notation:
 *
 *     @hits_by_probe[1]: 1234
 *     @hits_by_tid[4242]: 1200
 */
#include "wprobe.h"

/* The exports every plugin has, and the manifest (a custom section). */
WPROBE_PLUGIN("{\"name\": \"count-c\", \"version\": \"0.1.0\", \"abi\": 1}");

/* Called for every entry hit (and, on a return probe, for every call). */
WPROBE_ON_ENTRY(ev) {
    /* A negative result is a refusal (e.g. the 10 000-key cap,
     * WPROBE_ELIMIT); returning it has it logged as a warning. */
    int32_t rc = wprobe_count("hits_by_probe", wprobe_key_int(wprobe_event_probe(ev)));
    if (rc < 0)
        return rc;
    return wprobe_count("hits_by_tid", wprobe_key_int(wprobe_event_tid(ev)));
}
