;; Opens /etc/passwd through WASI (no directory is preopened: fd 3 is
;; not there), and tries every socket call on it: each fails with an errno,
;; none traps, nothing is opened. A call that succeeds makes the handler
;; return its number (a fault).
;; expect: contained
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_recv" (func $sock_recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $sock_send (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $sock_shutdown (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 4096) "/etc/passwd")
  ;; one iovec: 16 bytes at 5000
  (data (i32.const 4200) "\88\13\00\00\10\00\00\00")
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32)
    (local $fd i32)
    ;; fds 3 (a preopen, were there one), 0 (stdin), 1 (stdout)
    (if (i32.eqz (call $path_open (i32.const 3) (i32.const 0) (i32.const 4096) (i32.const 11)
                   (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 4300)))
      (then (return (i32.const 1))))
    (if (i32.eqz (call $path_open (i32.const 1) (i32.const 0) (i32.const 4096) (i32.const 11)
                   (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 4300)))
      (then (return (i32.const 2))))
    (loop $fds
      (if (i32.eqz (call $sock_accept (local.get $fd) (i32.const 0) (i32.const 4300)))
        (then (return (i32.const 3))))
      (if (i32.eqz (call $sock_recv (local.get $fd) (i32.const 4200) (i32.const 1) (i32.const 0)
                     (i32.const 4300) (i32.const 4304)))
        (then (return (i32.const 4))))
      (if (i32.eqz (call $sock_send (local.get $fd) (i32.const 4200) (i32.const 1) (i32.const 0)
                     (i32.const 4300)))
        (then (return (i32.const 5))))
      (if (i32.eqz (call $sock_shutdown (local.get $fd) (i32.const 3)))
        (then (return (i32.const 6))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $fds (i32.lt_u (local.get $fd) (i32.const 4))))
    i32.const 0))
