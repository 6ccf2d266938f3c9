;; Asks for 128 MiB of memory from the start, twice the cap.
;; expect: refused
;; reason: cannot instantiate
(module
  (memory (export "memory") 2048)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))
