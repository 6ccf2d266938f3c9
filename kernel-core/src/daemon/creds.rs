//! Who a client is, and what it may trace.
//!
//! In system mode the core runs as root on behalf of clients of any user.
//! Each client is identified with `SO_PEERCRED` when it connects, and may
//! only touch what it could trace with ptrace itself: the rules of the
//! kernel's `__ptrace_may_access` — same real, effective and saved uid and
//! gid, the target's permitted capabilities a subset of the client's (a
//! client of a uid other than 0 counts as holding none: see [`peer_of`]),
//! a dumpable process, unless the client has `CAP_SYS_PTRACE` — and of
//! Yama's `ptrace_scope`, checked here because the core's own root
//! privileges would let everything through.

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
    /// Its permitted and effective capability sets (bit n for capability
    /// n), read when it connected.
    pub cap_permitted: u64,
    pub cap_effective: u64,
}

/// `CAP_SYS_PTRACE`'s bit number.
const CAP_SYS_PTRACE: u32 = 19;

impl Peer {
    /// Root with `CAP_SYS_PTRACE` in effect: it may trace anything, as the
    /// kernel would let it, and sees every client's probes. A uid-0 process
    /// without that capability (in a container that dropped it) is
    /// checked like any user.
    pub fn is_root(&self) -> bool {
        self.uid == 0 && self.may_ptrace_anything()
    }

    /// Whether the kernel's ptrace rules let it skip the uid, capability
    /// and dumpability checks (`ptrace_has_cap`).
    pub fn may_ptrace_anything(&self) -> bool {
        self.cap_effective & (1 << CAP_SYS_PTRACE) != 0
    }
}

/// The named capability set (`CapPrm`, `CapEff`) of /proc/PID/status.
fn caps(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    u64::from_str_radix(line[key.len()..].trim(), 16).ok()
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
    // The capabilities are not in ucred, and /proc can only say what the
    // connecting process holds by the time the core looks: it may have
    // exec'd a set-user-ID or file-capability program since it connected
    // (while another process of its user holds the same socket). So a
    // client of a uid other than 0 is taken to hold no capability at all;
    // a root client's sets are read, and only while every uid of the
    // process is still 0 (an exec cannot give a root process more than it
    // could take itself).
    let (cap_permitted, cap_effective) = if cred.uid == 0 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", cred.pid))?;
        let still_root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l[4..].split_whitespace().all(|u| u == "0"));
        match (caps(&status, "CapPrm:"), caps(&status, "CapEff:")) {
            (Some(p), Some(e)) if still_root => (p, e),
            _ => (0, 0),
        }
    } else {
        (0, 0)
    };
    Ok(Peer {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid,
        cap_permitted,
        cap_effective,
    })
}

/// The names of the capabilities in `bits`, for messages.
fn cap_names(bits: u64) -> String {
    const NAMES: [&str; 41] = [
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    (0..64)
        .filter(|n| bits & (1u64 << n) != 0)
        .map(|n| match NAMES.get(n) {
            Some(name) => format!("cap_{name}"),
            None => format!("capability {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    if peer.may_ptrace_anything() {
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
    // A process holding a capability the client lacks (ambient or file
    // capabilities of a process of the same uid) is out of its reach, as
    // the kernel's cap_ptrace_access_check says.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("process {pid}: {e}"))?;
    let target_caps = caps(&status, "CapPrm:")
        .ok_or_else(|| format!("process {pid}: cannot read its capabilities"))?;
    let beyond = target_caps & !peer.cap_permitted;
    if beyond != 0 {
        return Err(format!(
            "user {} may not trace process {pid}: it holds capabilities this client does not \
             ({}); a user may trace only processes whose permitted capabilities are a subset \
             of its own; ask root to run the probe",
            peer.uid,
            cap_names(beyond)
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
