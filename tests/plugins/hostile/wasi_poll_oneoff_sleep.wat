;; Sleeps 100 s through WASI poll_oneoff, and yields: neither waits (issue
;; 17: the sleep was real, and `wprobe trace` stalled and ignored its
;; signals). The clock subscription is reported elapsed at once (one event,
;; error 0); anything else makes the handler fail.
;; expect: contained
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    ;; subscription at 4096: userdata 7, tag 0 (clock), monotonic, 100 s, relative
    (i64.store (i32.const 4096) (i64.const 7))
    (i32.store8 (i32.const 4104) (i32.const 0))
    (i32.store (i32.const 4112) (i32.const 1))
    (i64.store (i32.const 4120) (i64.const 100000000000))
    (i64.store (i32.const 4128) (i64.const 0))
    (i32.store16 (i32.const 4136) (i32.const 0))
    (if (call $poll (i32.const 4096) (i32.const 8192) (i32.const 1) (i32.const 8448))
      (then (return (i32.const 1))))
    (if (i32.ne (i32.load (i32.const 8448)) (i32.const 1)) (then (return (i32.const 2))))
    (if (i64.ne (i64.load (i32.const 8192)) (i64.const 7)) (then (return (i32.const 3))))
    (if (i32.load16_u (i32.const 8200)) (then (return (i32.const 4))))
    (if (call $yield) (then (return (i32.const 5))))
    i32.const 0))
