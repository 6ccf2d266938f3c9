;; Imports a `wprobe` function that ABI version 1 does not have.
;; expect: refused
;; reason: imports `wprobe.write_memory`, which ABI version 1 does not have
(module
  (import "wprobe" "write_memory" (func $write (param i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (call $write (i64.const 0) (i32.const 0) (i32.const 8))))
