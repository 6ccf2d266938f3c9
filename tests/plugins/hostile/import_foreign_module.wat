;; Imports a function from a module other than `wprobe` and
;; `wasi_snapshot_preview1`.
;; expect: refused
;; reason: imports `env.system`: plugins may import only from `wprobe` and `wasi_snapshot_preview1`
(module
  (import "env" "system" (func $system (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (call $system (i32.const 0))))
