;; Adds 300 new keys to map "k" at every hit: past 10 000 keys the host
;; answers -7 and counts the update refused. 100 hits: 30 000 updates,
;; 20 000 refused. Any other answer makes the handler fail. (A deadline of
;; 5 s: a call must not be cut however busy the machine.)
;; expect: contained
;; stat: map_updates_refused = 20000
;; args: --plugin-deadline 5000
(module
  (import "wprobe" "map_update" (func $map_update (param i32 i32 i32 i32 i32 i32 i64) (result i32)))
  (memory (export "memory") 1)
  (global $next (mut i64) (i64.const 0))
  (data (i32.const 4096) "k")
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (local $i i32)
    (local $r i32)
    (loop $more
      (i64.store (i32.const 4104) (global.get $next))
      (global.set $next (i64.add (global.get $next) (i64.const 1)))
      (local.set $r (call $map_update (i32.const 0) (i32.const 4096) (i32.const 1) (i32.const 2)
                                      (i32.const 4104) (i32.const 8) (i64.const 0)))
      (if (i32.and (i32.ne (local.get $r) (i32.const 0)) (i32.ne (local.get $r) (i32.const -7)))
        (then (return (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 300))))
    i32.const 0))
