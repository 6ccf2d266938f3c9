/*
 * mallocsize — what sizes each thread asks malloc for.
 *
 * Attach it to `uprobe:libc:malloc`: the first argument is the size. The
 * handler adds it to a log2 histogram keyed by the calling thread, like
 * bpftrace's `@malloc_size[tid] = hist(arg0)`:
 *
 *     @malloc_size[4242]:
 *     [16, 32)      310 |@@@@@@@@@@@@@@@@@@@@|
 *     [32, 64)       97 |@@@@@@              |
 */
#include "wprobe.h"

WPROBE_PLUGIN("{\"name\": \"mallocsize-c\", \"version\": \"0.1.0\", \"abi\": 1}");

WPROBE_ON_ENTRY(ev) {
    uint64_t size = wprobe_event_arg(ev, 0);
    /* A size above INT64_MAX (a bug, or malloc(-1)) lands in the
     * histogram's negative bucket, where it stands out. */
    return wprobe_hist("malloc_size", wprobe_key_int(wprobe_event_tid(ev)), (int64_t)size);
}
