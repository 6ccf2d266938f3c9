;; A start function that never returns: it runs while the module is
;; instantiated, before any handler, under the same deadline.
;; expect: refused
;; reason: cannot instantiate: its start function ran longer than its
(module
  (memory (export "memory") 1)
  (func $forever (loop $l (br $l)))
  (start $forever)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))
