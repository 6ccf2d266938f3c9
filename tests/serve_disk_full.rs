//! A full disk under the data directory: a write the store cannot make is
//! a 507 that names the data directory and says what to do, stores
//! nothing, and the service works again once there is space.
//!
//! For real: the data directory is on a small tmpfs mounted for the test
//! (root only; unmounted at the end, failure or not), filled with a file
//! until the kernel says ENOSPC.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use wprobe_tests::service::{data_dir, Server};

/// A tmpfs mounted at a directory, unmounted (lazily, so that a process
/// still holding a file there does not stop it) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs on {} failed",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A valid plugin (WebAssembly text) of about `pad` bytes, unique to `n`:
/// a comment pads it, so that no two share a blob.
fn module(n: usize, pad: usize) -> Vec<u8> {
    let mut m = format!(";; module {n}\n");
    while m.len() < pad {
        m += &format!(";; {n:08} padding padding padding padding padding padding\n");
    }
    m += r#"(module
  (memory (export "memory") 1)
  (func (export "wprobe_abi_version") (result i32) i32.const 1)
  (func (export "wprobe_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wprobe_on_entry") (param i32 i32) (result i32) i32.const 0))"#;
    m.into_bytes()
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0xa5u8; 16 << 10];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // What fit in part of a chunk.
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
}

fn plugin_count(s: &Server) -> usize {
    s.plugins().len()
}

#[test]
fn a_full_disk_is_507_naming_the_data_directory_and_changes_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but not root: the test mounts a tmpfs");
        }
        println!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mount = data_dir("disk-full");
    let tmpfs = Tmpfs::mount(&mount, "4m");
    let dir = tmpfs.0.join("data");
    let s = Server::start(&dir, &[]);
    let auth = format!("Bearer {}", s.token);
    let upload = |n: usize| {
        s.raw(
            "POST",
            &format!("/api/plugins?name=p{n}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/wasm"),
            ],
            &module(n, 64 << 10),
        )
    };
    let first = upload(0);
    assert_eq!(first.status, 201, "{}", first.text);

    let filler = tmpfs.0.join("filler");
    fill(&filler);
    // Every upload now meets a full disk, however much of it SQLite had
    // kept free in its files: a few at most are stored.
    let mut refused = None;
    for n in 1..=20 {
        let r = upload(n);
        if r.status != 201 {
            refused = Some((n, r));
            break;
        }
    }
    let (n, r) = refused.expect("20 uploads of 64 KiB fit on a full disk");
    assert_eq!(r.status, 507, "{}", r.text);
    let msg = r.json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", r.text));
    for words in [
        dir.to_str().expect("UTF-8 path"),
        "full",
        "free space",
        "--data-dir",
    ] {
        assert!(msg.contains(words), "`{words}` is not in: {msg}");
    }
    // Nothing of the refused upload was stored.
    let before = plugin_count(&s);
    assert_eq!(before, n, "plugins after the refusal");
    assert!(
        !s.plugins().iter().any(|p| p["name"] == format!("p{n}")),
        "the refused plugin p{n} is listed"
    );

    // Space again: the same upload is stored, and the store is whole.
    std::fs::remove_file(&filler).expect("remove the filler");
    let again = upload(n);
    assert_eq!(again.status, 201, "after freeing space: {}", again.text);
    assert_eq!(plugin_count(&s), before + 1);
    let got = s.call("GET", &format!("/api/plugins/{}", again.json["id"]), b"");
    assert_eq!(got.status, 200, "{}", got.text);
    drop(s);
    let db = rusqlite::Connection::open(dir.join("wprobe.db")).expect("open the db");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    let blobs: i64 = db
        .query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))
        .expect("count blobs");
    assert_eq!(
        blobs as usize,
        before + 1,
        "one blob per stored plugin, none left over"
    );
    drop(db);
    drop(tmpfs);
}
