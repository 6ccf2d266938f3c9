;; Imports a function `wasi_snapshot_preview1` does not have.
;; expect: refused
;; reason: cannot instantiate
(module
  (import "wasi_snapshot_preview1" "proc_fork" (func $fork (result i32)))
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (call $fork)))
