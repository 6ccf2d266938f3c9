/*
 * args — one JSON record per call, with the six integer arguments.
 *
 * The arguments are in the event already (x86_64 SysV: rdi, rsi, rdx,
 * rcx, r8, r9), so the handler reads no target memory: it writes them as a
 * record of the event stream. For `uprobe:libc:write` they are the fd, the
 * buffer address and the length:
 *
 *     {"probe":1,"tid":4242,"addr":"0x7f3a1c0e4870","args":[1,94360117473952,3,0,0,0]}
 */
#include "wprobe.h"

WPROBE_PLUGIN("{\"name\": \"args-c\", \"version\": \"0.1.0\", \"abi\": 1}");

WPROBE_ON_ENTRY(ev) {
    uint64_t args[6];
    for (unsigned i = 0; i < 6; i++)
        args[i] = wprobe_event_arg(ev, i);

    /* The record is written into a buffer on the stack: six 20-digit
     * numbers and the rest fit in 256 bytes. */
    char buf[256];
    wprobe_json j;
    wprobe_json_begin(&j, buf, sizeof buf);
    wprobe_json_u64(&j, "probe", wprobe_event_probe(ev));
    wprobe_json_i64(&j, "tid", wprobe_event_tid(ev));
    wprobe_json_hex(&j, "addr", wprobe_event_addr(ev));
    wprobe_json_u64_array(&j, "args", args, 6);
    return wprobe_json_emit(&j);
}
