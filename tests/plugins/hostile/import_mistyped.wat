;; Imports `wprobe.read_memory` with a 32-bit address: the host would read
;; its arguments wrongly.
;; expect: refused
;; reason: imports `wprobe.read_memory` with the wrong type
(module
  (import "wprobe" "read_memory" (func $read (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (call $read (i32.const 0) (i32.const 2048) (i32.const 8))))
