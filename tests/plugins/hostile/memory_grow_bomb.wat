;; Grows its memory as far as it goes: 4 GiB at once fails, then page by
;; page up to the 64 MiB cap (1024 pages), where memory.grow returns -1;
;; then it writes past the end: a trap. A memory that grew past the cap
;; returns 1 instead (a fault of another reason).
;; expect: quarantined
;; reason: out of bounds
(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (if (i32.ne (memory.grow (i32.const 65535)) (i32.const -1))
      (then (return (i32.const 1))))
    (block $full
      (loop $more
        (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $more)))
    (if (i32.ne (memory.size) (i32.const 1024))
      (then (return (i32.const 2))))
    (i32.store (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))
    i32.const 0))
