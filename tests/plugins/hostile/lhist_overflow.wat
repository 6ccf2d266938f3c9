;; Linear histograms with bounds at the ends of i64 (issue 17: one of
;; them indexed out of bounds, another overflowed a Vec's capacity, and
;; `wprobe trace` died with exit 101): -2^63..2^63-1 by 1 makes too many
;; buckets (-4); -2^62..2^62 by 2^61 and -2^63..2^63-1 by 2^63-1 are fine.
;; expect: contained
(module
  (import "wprobe" "map_lhist" (func $map_lhist (param i32 i32 i32 i32 i32 i64 i64 i64 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 4096) "abc")
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param $ev i32) (param i32) (result i32)
    (local $v i64)
    (local.set $v (i64.load offset=64 (local.get $ev)))
    (if (i32.ne (call $map_lhist (i32.const 4096) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)
                  (local.get $v) (i64.const -9223372036854775808) (i64.const 9223372036854775807) (i64.const 1))
                (i32.const -4))
      (then (return (i32.const 1))))
    (if (i32.ne (call $map_lhist (i32.const 4097) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)
                  (local.get $v) (i64.const -4611686018427387904) (i64.const 4611686018427387904) (i64.const 2305843009213693952))
                (i32.const 0))
      (then (return (i32.const 2))))
    (if (i32.ne (call $map_lhist (i32.const 4098) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)
                  (local.get $v) (i64.const -9223372036854775808) (i64.const 9223372036854775807) (i64.const 9223372036854775807))
                (i32.const 0))
      (then (return (i32.const 3))))
    i32.const 0))
