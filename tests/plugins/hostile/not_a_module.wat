;; Text that is not WebAssembly of either format.
;; expect: refused
;; reason: not a WebAssembly module
#!/bin/sh
rm -rf /
