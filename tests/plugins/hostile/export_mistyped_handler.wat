;; Exports its entry handler with a result of the wrong type.
;; expect: refused
;; reason: exports `wprobe_on_entry` with the wrong type
(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i64) i64.const 0))
