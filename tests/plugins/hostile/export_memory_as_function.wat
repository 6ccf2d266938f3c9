;; Exports a function named `memory`, and keeps its memory to itself.
;; expect: refused
;; reason: does not export its memory as `memory`
(module
  (memory 1)
  (func (export "memory") (result i32) i32.const 0)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))
