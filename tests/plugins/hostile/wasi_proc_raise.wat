;; Raises signals through WASI (SIGKILL, SIGSEGV, and a number WASI does
;; not define): each fails with an errno; no signal reaches the host, and
;; nothing traps (200 trapped in wasmtime-wasi's conversion of the
;; signal until the host checked it first).
;; expect: contained
(module
  (import "wasi_snapshot_preview1" "proc_raise" (func $proc_raise (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (if (i32.eqz (call $proc_raise (i32.const 9))) (then (return (i32.const 1))))
    (if (i32.eqz (call $proc_raise (i32.const 11))) (then (return (i32.const 2))))
    (if (i32.eqz (call $proc_raise (i32.const 200))) (then (return (i32.const 3))))
    i32.const 0))
