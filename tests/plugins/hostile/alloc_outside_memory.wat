;; Its allocator answers a pointer 6 bytes before the end of its memory:
;; the event (hundreds of bytes) does not fit there, and is not written.
;; expect: quarantined
;; reason: wprobe_alloc returned 65530, outside its memory
(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 65530)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))
