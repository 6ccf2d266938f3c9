//! A plugin's module is compiled in a child process (`wprobe
//! __compile-plugin`) under a memory limit: a module that passes the
//! pre-scan but whose compilation needs more than the limit is refused,
//! naming the limit, and nothing of it is compiled in the process that
//! loads it. The runtime is driven as `wprobe serve` and `wprobe trace`
//! drive it, with the real `wprobe` executable as the compiler; and
//! through `wprobe trace --plugin-compile-memory`.

use wprobe_host::plugin::{CompileLimits, Compiler, Limits, Runtime};
use wprobe_tests::*;

/// A plugin in the text format whose memory starts with `data` bytes of
/// initial data: compiling it copies them several times (the module read,
/// its memory image, the artifact), a cost the pre-scan does not bound.
fn plugin_with_data(data: usize) -> String {
    format!(
        r#"(module
  (memory (export "memory") 256)
  (data (i32.const 0) "{}")
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 16)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#,
        "a".repeat(data)
    )
}

/// Loads a plugin with `data` bytes of data, compiled in a child under
/// `mib` MiB: `Ok`, or the refusal.
fn load(data: usize, mib: u64) -> Result<(), String> {
    let defaults = Limits::default();
    let rt = Runtime::new(Limits {
        compile: CompileLimits {
            memory_bytes: mib << 20,
            ..defaults.compile
        },
        ..defaults
    })
    .expect("runtime")
    .with_compiler(Compiler::Child(wprobe_bin()));
    rt.load(plugin_with_data(data).as_bytes(), None, "data.wat")
        .map(|_| ())
}

#[test]
fn a_module_whose_compilation_needs_more_than_the_limit_is_refused() {
    // (data bytes, limit MiB, what the refusal says, or None: loaded)
    let cases: &[(usize, u64, Option<&str>)] = &[
        (0, 16, None),
        (
            6 << 20,
            16,
            Some("compiling it needed more than 16 MiB of memory"),
        ),
        (6 << 20, 512, None),
    ];
    for &(data, mib, want) in cases {
        let got = load(data, mib);
        match (want, &got) {
            (None, Ok(())) => {}
            (Some(w), Err(e)) if e.contains(w) => {}
            _ => panic!("{data} bytes of data under {mib} MiB: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn trace_refuses_a_plugin_over_its_compile_memory() {
    let dir = scratch_dir().join("plugin-compile");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let path = dir.join("data.wasm");
    std::fs::write(&path, plugin_with_data(6 << 20)).expect("write the plugin");
    let p = path.to_string_lossy();
    let t = trace(&[
        "--plugin-compile-memory",
        "16",
        "--plugin",
        &p,
        "-e",
        "uprobe:libc:malloc",
        "--",
        "true",
    ]);
    assert_ne!(t.status, Some(0), "stderr:\n{}", t.stderr);
    assert!(
        t.stderr.contains(&format!(
            "plugin {p} refused: compiling it needed more than 16 MiB"
        )),
        "stderr:\n{}",
        t.stderr
    );
}

#[test]
fn serve_refuses_an_upload_over_its_compile_memory_and_stores_nothing() {
    let dir = wprobe_tests::service::data_dir("plugin-compile-serve");
    let s = wprobe_tests::service::Server::start(
        &dir,
        &[
            "--plugin-compile-memory",
            "16",
            "--max-upload",
            &(32usize << 20).to_string(),
        ],
    );
    let auth = format!("Bearer {}", s.token);
    let r = s.raw(
        "POST",
        "/api/plugins?name=data",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/wasm"),
        ],
        plugin_with_data(6 << 20).as_bytes(),
    );
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(
        r.text.contains("compiling it needed more than 16 MiB"),
        "{}",
        r.text
    );
    assert!(s.plugins().is_empty(), "a refused upload stores nothing");
    // A small one still loads.
    let r = s.raw(
        "POST",
        "/api/plugins?name=small",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/wasm"),
        ],
        plugin_with_data(0).as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.text);
}
