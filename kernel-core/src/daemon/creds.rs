//! Who a client is, and what it may trace.
//!
//! In system mode the core runs as root on behalf of clients of any user.
//! Each client is identified with `SO_PEERCRED` when it connects, and may
//! only touch what its own user could trace with ptrace: the rules of the
//! kernel's `__ptrace_may_access` (same real, effective and saved uid and
//! gid, a dumpable process) and of Yama's `ptrace_scope`, checked here
//! because the core's own root privileges would let everything through.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

use crate::target::ptrace::Credentials;

/// The process on the other end of a connection, as the kernel saw it when
/// it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl Peer {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The credentials of the peer of `stream` (`SO_PEERCRED`).
pub fn peer_of(stream: &UnixStream) -> std::io::Result<Peer> {
    let mut cred: libc::ucred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Peer {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid,
    })
}

/// The uid and gid lines of /proc/PID/status: (real, effective, saved).
fn ids(pid: i32) -> Result<([u32; 3], [u32; 3]), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("process {pid}: {e} (is the pid right?)"))?;
    let field = |key: &str| -> Option<[u32; 3]> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let v: Vec<u32> = line[key.len()..]
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() >= 3).then(|| [v[0], v[1], v[2]])
    };
    match (field("Uid:"), field("Gid:")) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(format!("process {pid}: cannot read its credentials")),
    }
}

fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("PPid:"))?;
    line[5..].trim().parse().ok()
}

/// Whether `peer`'s user could ptrace `pid` itself. `Err` says why not, in
/// words for that user.
pub fn may_trace(peer: &Peer, pid: i32) -> Result<(), String> {
    if peer.is_root() {
        return Ok(());
    }
    let (uids, gids) = ids(pid)?;
    if uids.iter().any(|&u| u != peer.uid) || gids.iter().any(|&g| g != peer.gid) {
        return Err(format!(
            "user {} may not trace process {pid}, which runs as uid {}/{}/{} gid {}/{}/{} \
             (real/effective/saved): a user may trace only processes whose every uid and \
             gid are its own; ask root to run the probe",
            peer.uid, uids[0], uids[1], uids[2], gids[0], gids[1], gids[2]
        ));
    }
    // A process that is not dumpable (it changed credentials, or called
    // prctl(PR_SET_DUMPABLE, 0)) has its /proc directory owned by root.
    let owner = std::fs::metadata(format!("/proc/{pid}"))
        .map_err(|e| format!("process {pid}: {e}"))?
        .uid();
    if owner != peer.uid {
        return Err(format!(
            "user {} may not trace process {pid}: it is not dumpable (it changed \
             credentials or called prctl(PR_SET_DUMPABLE, 0)); ask root to run the probe",
            peer.uid
        ));
    }
    match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        None | Some(0) => Ok(()),
        Some(1) => {
            // Restricted ptrace: only descendants of the client itself.
            let mut p = pid;
            while p > 1 {
                if p == peer.pid {
                    return Ok(());
                }
                p = parent_of(p).unwrap_or(0);
            }
            Err(format!(
                "user {} may not trace process {pid}: kernel.yama.ptrace_scope is 1, which \
                 allows tracing only one's own descendants (start the program through the \
                 core with Spawn, or ask root)",
                peer.uid
            ))
        }
        Some(n) => Err(format!(
            "user {} may not trace process {pid}: kernel.yama.ptrace_scope is {n}, which \
             allows only root to trace",
            peer.uid
        )),
    }
}

/// What a program spawned for `peer` runs as: the peer's user and groups,
/// in the peer's working directory.
pub fn spawn_credentials(peer: &Peer) -> Credentials {
    Credentials {
        uid: peer.uid,
        gid: peer.gid,
        groups: groups_of(peer.uid, peer.gid),
        cwd: std::fs::read_link(format!("/proc/{}/cwd", peer.pid)).ok(),
    }
}

/// The supplementary groups of `uid`'s user from the group database, or
/// just `gid` when the uid has no name.
fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: passwd is plain data; all-zero is a valid value to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given; the strings in
    // `pw` point into `buf`, which outlives their use below.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if r != 0 || result.is_null() {
        return vec![gid];
    }
    let mut n: libc::c_int = 64;
    loop {
        let asked = n;
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: pw_name is a NUL-terminated string in buf; groups has
        // room for n entries, and n is updated to the count needed.
        let r = unsafe { libc::getgrouplist(pw.pw_name, gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        // Too small: n now holds the count needed.
        n = n.max(asked.saturating_mul(2));
        if n > 65536 {
            return vec![gid];
        }
    }
}
