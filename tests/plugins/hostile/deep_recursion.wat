;; Recursion without end: the wasm stack (512 KiB) overflows, a trap, not
;; the host's stack.
;; expect: quarantined
;; reason: overflowed its wasm stack
(module
  (memory (export "memory") 1)
  (func $deep (param i64) (result i64)
    (call $deep (i64.add (local.get 0) (i64.const 1))))
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (drop (call $deep (i64.const 0)))
    i32.const 0))
