;; Emits records until the host refuses one (-7: 10 000 a second at
;; most), at every hit: the rest are dropped and counted. Any other answer,
;; or no refusal within 20 000, makes the handler fail. (A deadline of 5 s:
;; one call emits 10 000, and must not be cut however busy the machine.)
;; expect: contained
;; stat: records_dropped > 0
;; args: --plugin-deadline 5000
(module
  (import "wprobe" "emit" (func $emit (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 4096) "{\"flood\":1}")
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (local $i i32)
    (local $r i32)
    (loop $more
      (local.set $r (call $emit (i32.const 4096) (i32.const 11)))
      (if (i32.eq (local.get $r) (i32.const -7)) (then (return (i32.const 0))))
      (if (i32.ne (local.get $r) (i32.const 0)) (then (return (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 20000))))
    i32.const 2))
