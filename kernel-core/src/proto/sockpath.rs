//! Unix socket paths of any length.
//!
//! A socket address holds at most 107 bytes of path, so a core listening
//! in a deep data directory could neither bind nor be reached. Both sides
//! therefore go through [`short`]: a path that fits is used as it is; a
//! longer one is reached through its directory, opened `O_PATH` and named
//! `/proc/self/fd/N/NAME`, which the kernel resolves like the long path.
//! The descriptor is closed when the returned guard drops, so call
//! `bind`/`connect` while holding it.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The longest path a `sockaddr_un` holds, without its terminating NUL.
pub const MAX_PATH: usize = 107;

/// A path to `bind` or `connect` standing for a socket path of any length.
pub struct ShortPath {
    path: PathBuf,
    _dir: Option<OwnedFd>,
}

impl ShortPath {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `path` itself if it fits in a socket address, else a name for it
/// through its directory (see the module's text).
pub fn short(path: &Path) -> io::Result<ShortPath> {
    if path.as_os_str().len() <= MAX_PATH {
        return Ok(ShortPath {
            path: path.to_path_buf(),
            _dir: None,
        });
    }
    let too_long = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the socket path {} is longer than a socket address holds ({MAX_PATH} bytes) \
                 and {what}: choose a shorter path",
                path.display()
            ),
        )
    };
    let name = path
        .file_name()
        .ok_or_else(|| too_long("has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| too_long("its directory has a NUL byte"))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("opening the directory {} of a socket: {e}", dir.display()),
        ));
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    let dir_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut short = PathBuf::from(format!("/proc/self/fd/{fd}"));
    short.push(name);
    if short.as_os_str().len() > MAX_PATH {
        return Err(too_long("its file name alone is too long"));
    }
    Ok(ShortPath {
        path: short,
        _dir: Some(dir_fd),
    })
}

/// A listening socket at `path` with permission bits `mode`, which
/// appears at `path` only once it accepts connections and has its mode.
///
/// `bind` makes the file before `listen` lets anyone in, and `chmod` can
/// only follow both: a client that waits for the file and connects at
/// once could be refused, and for a moment the socket would have the
/// umask's mode. So the socket is made under a hidden name beside `path`
/// and renamed into place, refusing to replace anything already there.
pub fn listen(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket path {} has no file name", path.display()),
        )
    })?;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".{}.new", std::process::id()));
    let staging = path.with_file_name(hidden);
    let _ = std::fs::remove_file(&staging);
    let listener = short(&staging).and_then(|s| UnixListener::bind(s.path()))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .and_then(|()| rename_no_replace(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
}

/// `rename(from, to)` that fails with `AlreadyExists` rather than
/// replacing `to`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has a NUL byte", p.display()),
            )
        })
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both are NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("placing the socket at {}: {e}", to.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_socket_deeper_than_an_address_holds_is_bound_and_reached() {
        let mut dir = std::env::temp_dir().join(format!("wprobe-sockpath-{}", std::process::id()));
        while dir.as_os_str().len() < 150 {
            dir.push("a-rather-long-directory-name");
        }
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("core.sock");
        assert!(path.as_os_str().len() > MAX_PATH);
        assert!(
            UnixListener::bind(&path).is_err(),
            "the kernel refuses it directly"
        );
        let s = short(&path).unwrap();
        let listener = UnixListener::bind(s.path()).unwrap();
        drop(s);
        assert!(path.exists(), "the socket is at the long path");
        let c = short(&path).unwrap();
        let _stream = UnixStream::connect(c.path()).unwrap();
        listener.accept().unwrap();
        let top = std::env::temp_dir().join(format!("wprobe-sockpath-{}", std::process::id()));
        std::fs::remove_dir_all(top).unwrap();
    }

    #[test]
    fn a_listening_socket_appears_with_its_mode_and_never_replaces_a_file() {
        let dir = std::env::temp_dir().join(format!("wprobe-sockpath-l-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("core.sock");
        let listener = listen(&path, 0o600).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Whoever sees the file can connect: it was listening before it
        // had this name.
        let _stream = UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        let taken = dir.join("taken");
        std::fs::write(&taken, "someone's file").unwrap();
        let e = listen(&taken, 0o600).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(e.to_string().contains("taken"), "{e}");
        assert_eq!(std::fs::read_to_string(&taken).unwrap(), "someone's file");
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["core.sock", "taken"], "no staging name left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_short_path_is_used_as_it_is() {
        let p = Path::new("/run/wprobe.sock");
        assert_eq!(short(p).unwrap().path(), p);
    }
}
