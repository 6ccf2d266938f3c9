;; Exports `_initialize` as `(i32) -> i32` (issue 17: it was silently not
;; called).
;; expect: refused
;; reason: exports `_initialize` with the wrong type
(module
  (memory (export "memory") 1)
  (func (export "_initialize") (param i32) (result i32) i32.const 0)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))
