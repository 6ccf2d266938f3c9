"""Schemathesis hooks for tests/api_schema.rs (loaded through SCHEMATHESIS_HOOKS).

- The plugin upload's body is application/wasm: raw bytes, sent as they are
  (schemathesis's binary serializer, which it has for application/octet-stream).
- POST /api/targets attaches to a pid or starts a command. Generated data must
  not trace a process of this machine nor run one of its programs, so cases
  whose `pid` names a live process, or whose `spawn` names a program found on
  PATH or by its path, are filtered out; every other case (bad types, missing
  fields, pids that do not exist, commands that cannot run) still goes.
"""

import os
import shutil

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")


def _touches_the_machine(body):
    if not isinstance(body, dict):
        return False
    pid = body.get("pid")
    if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
        if os.path.exists(f"/proc/{pid}"):
            return True
    spawn = body.get("spawn")
    if isinstance(spawn, list) and spawn and isinstance(spawn[0], str):
        program = spawn[0]
        try:
            if "\0" not in program and (shutil.which(program) or os.path.exists(program)):
                return True
        except (OSError, ValueError):
            return True
    return False


@schemathesis.hook
def filter_body(ctx, body):
    operation = ctx.operation
    if operation.method.upper() == "POST" and operation.path == "/api/targets":
        return not _touches_the_machine(body)
    return True
