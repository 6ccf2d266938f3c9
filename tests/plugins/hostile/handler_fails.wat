;; A handler that returns 3, not 0: a fault at each call.
;; expect: quarantined
;; reason: handler returned 3
(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 3))
