;; Says it is written for ABI version 7.
;; expect: refused
;; reason: exports ABI version 7; this host serves version 1
(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 7)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))
