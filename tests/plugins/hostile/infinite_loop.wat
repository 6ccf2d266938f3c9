;; A handler that never returns: cut at its deadline at each call (5 ms
;; of CPU time, or 1 s of wall time on a machine too busy to give it
;; those), quarantined after 5 faults in a row.
;; expect: quarantined
;; reason: ran longer than its
(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (loop $l (br $l))
    i32.const 0))
