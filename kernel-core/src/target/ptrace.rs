//! The Linux ptrace backend.
//!
//! Threads are taken with `PTRACE_SEIZE` (never `PTRACE_ATTACH`): seized
//! tracees report group-stops as `PTRACE_EVENT_STOP`, can be stopped with
//! `PTRACE_INTERRUPT` without a signal, and can sit in job-control stops
//! with `PTRACE_LISTEN`, so Ctrl-Z and SIGCONT work as without a tracer.
//! Memory goes through `/proc/PID/mem`, which may write to read-only text
//! (the kernel copies the page on write, as for any debugger).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::FromRawFd;

use super::{Event, Result, Resume, SigInfo, Stop, Target, TargetError, Tid};
use crate::arch::native::Regs;

const OPTIONS: libc::c_int = libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACEVFORKDONE
    | libc::PTRACE_O_TRACEEXEC;

/// The ptrace backend. One value traces any number of processes; it must
/// stay on the thread that seized them (ptrace ties a tracee to a thread).
#[derive(Default)]
pub struct Ptrace {
    mem: HashMap<Tid, File>,
    spawn_as: Option<Credentials>,
}

/// Whom spawned programs run as, when not as the tracer itself: the
/// client's user, for a core running as root on its behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The working directory to start in.
    pub cwd: Option<std::path::PathBuf>,
}

fn os(op: &'static str, tid: Tid) -> TargetError {
    TargetError::Os {
        op,
        tid,
        source: io::Error::last_os_error(),
    }
}

fn ptrace(req: libc::c_uint, tid: Tid, addr: usize, data: usize) -> libc::c_long {
    // SAFETY: every request passed here either ignores addr/data or is given
    // a pointer to a live, correctly sized buffer by its caller below.
    unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    }
}

impl Ptrace {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend whose spawned programs drop to `creds` before execve,
    /// with `no_new_privs` set so that a set-user-ID program cannot gain
    /// privileges its user lacks while traced by a privileged tracer.
    pub fn spawning_as(creds: Credentials) -> Self {
        Ptrace {
            spawn_as: Some(creds),
            ..Self::default()
        }
    }

    fn mem_file(&mut self, pid: Tid) -> Result<&File> {
        use std::collections::hash_map::Entry;
        match self.mem.entry(pid) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(v) => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(format!("/proc/{pid}/mem"))
                    .map_err(|source| TargetError::Memory {
                        pid,
                        addr: 0,
                        len: 0,
                        source,
                    })?;
                Ok(v.insert(f))
            }
        }
    }

    /// Starts `argv` as a traced child. The child is seized before it calls
    /// execve, so the first thing reported is its exec stop: nothing of the
    /// program has run yet. `argv[0]` is searched in `PATH`.
    fn spawn_child(&mut self, argv: &[String]) -> Result<Tid> {
        let cmd = argv.first().cloned().unwrap_or_default();
        let spawn_err = |source| TargetError::Spawn {
            cmd: cmd.clone(),
            source,
        };
        let path = find_in_path(&cmd).ok_or_else(|| {
            spawn_err(io::Error::new(
                io::ErrorKind::NotFound,
                "not found (give a path, or put it in PATH)",
            ))
        })?;
        let path = CString::new(path.into_os_string().into_encoded_bytes())
            .map_err(|_| spawn_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let cargs: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| spawn_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let mut cptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
        cptrs.push(std::ptr::null());

        let creds = self.spawn_as.clone();
        let groups: Vec<libc::gid_t> = creds.as_ref().map(|c| c.groups.clone()).unwrap_or_default();
        let cwd = match creds.as_ref().and_then(|c| c.cwd.as_ref()) {
            Some(d) => Some(
                CString::new(d.clone().into_os_string().into_encoded_bytes())
                    .map_err(|_| spawn_err(io::Error::from(io::ErrorKind::InvalidInput)))?,
            ),
            None => None,
        };
        let (go_r, go_w) = pipe().map_err(spawn_err)?;
        let (err_r, err_w) = pipe().map_err(spawn_err)?;
        // SAFETY: the child only calls async-signal-safe functions (read,
        // execv, write, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(spawn_err(io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: see above; these descriptors and pointers are valid
            // in the child, which never returns from this block.
            unsafe {
                libc::close(go_w);
                libc::close(err_r);
                let mut b = 0u8;
                // Wait until the parent has seized us (it closes go_w).
                while libc::read(go_r, (&mut b as *mut u8).cast(), 1) < 0 {}
                let dropped = match &creds {
                    None => true,
                    Some(c) => {
                        libc::setgroups(groups.len(), groups.as_ptr()) == 0
                            && libc::setresgid(c.gid, c.gid, c.gid) == 0
                            && libc::setresuid(c.uid, c.uid, c.uid) == 0
                            && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                            // A directory the user cannot enter is not an
                            // error: the program starts in / instead.
                            && (cwd.as_ref().is_none_or(|d| libc::chdir(d.as_ptr()) == 0)
                                || libc::chdir(c"/".as_ptr()) == 0)
                    }
                };
                if dropped {
                    libc::execv(path.as_ptr(), cptrs.as_ptr());
                }
                let e = *libc::__errno_location();
                libc::write(err_w, (&e as *const i32).cast(), 4);
                libc::_exit(127);
            }
        }
        // SAFETY: closing our copies of the child's ends of the pipes.
        unsafe {
            libc::close(go_r);
            libc::close(err_w);
        }
        // SAFETY: err_r is ours and open; the File takes ownership.
        let err_file = unsafe { File::from_raw_fd(err_r) };
        let seized = ptrace(libc::PTRACE_SEIZE, pid, 0, OPTIONS as usize);
        let seize_err = io::Error::last_os_error();
        // SAFETY: go_w is ours; closing it releases the child.
        unsafe { libc::close(go_w) };
        if seized < 0 {
            // SAFETY: reaping the child we just forked.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL | libc::__WNOTHREAD);
            }
            return Err(spawn_err(seize_err));
        }
        match self.wait_for(pid)? {
            Stop::Event {
                event: Event::Exec(_),
                ..
            } => Ok(pid),
            _ => {
                let mut b = [0u8; 4];
                let errno = match err_file.read_at(&mut b, 0) {
                    Ok(4) => i32::from_ne_bytes(b),
                    _ => libc::ENOEXEC,
                };
                // SAFETY: reaping our child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL | libc::__WNOTHREAD);
                }
                Err(spawn_err(io::Error::from_raw_os_error(errno)))
            }
        }
    }

    /// Seizes every thread of `pid` and asks each to stop. Returns the tids;
    /// the caller collects their stops with `wait_for`. Threads created
    /// while this runs are caught by listing the tasks again until the list
    /// is stable.
    fn seize_all(&mut self, pid: Tid) -> Result<Vec<Tid>> {
        let mut seized: Vec<Tid> = Vec::new();
        loop {
            let tids = list_threads(pid).map_err(|e| {
                TargetError::Attach(format!(
                    "cannot attach to process {pid}: {e} (is the pid right? `ps -p {pid}`)"
                ))
            })?;
            let fresh: Vec<Tid> = tids.into_iter().filter(|t| !seized.contains(t)).collect();
            if fresh.is_empty() {
                return Ok(seized);
            }
            for tid in fresh {
                if ptrace(libc::PTRACE_SEIZE, tid, 0, OPTIONS as usize) < 0 {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() == Some(libc::ESRCH) && tid != pid {
                        continue; // the thread exited meanwhile
                    }
                    for &t in &seized {
                        ptrace(libc::PTRACE_DETACH, t, 0, 0);
                    }
                    return Err(TargetError::Attach(explain_attach_error(pid, &err)));
                }
                // A thread that exits right after being seized fails here;
                // its exit is reported by wait like any other.
                ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0);
                seized.push(tid);
            }
        }
    }

    fn decode(&mut self, tid: Tid, status: libc::c_int) -> Result<Stop> {
        if libc::WIFEXITED(status) {
            self.mem.remove(&tid);
            return Ok(Stop::Exited {
                tid,
                code: libc::WEXITSTATUS(status),
            });
        }
        if libc::WIFSIGNALED(status) {
            self.mem.remove(&tid);
            return Ok(Stop::Killed {
                tid,
                signo: libc::WTERMSIG(status),
            });
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        let msg_of = || -> Result<u64> {
            let mut m: libc::c_ulong = 0;
            if ptrace(
                libc::PTRACE_GETEVENTMSG,
                tid,
                0,
                &mut m as *mut libc::c_ulong as usize,
            ) < 0
            {
                return Err(os("PTRACE_GETEVENTMSG", tid));
            }
            Ok(m)
        };
        let needs_msg = matches!(
            event,
            libc::PTRACE_EVENT_CLONE
                | libc::PTRACE_EVENT_FORK
                | libc::PTRACE_EVENT_VFORK
                | libc::PTRACE_EVENT_EXEC
                | libc::PTRACE_EVENT_EXIT
        );
        let m = if needs_msg {
            match msg_of() {
                Ok(m) => m,
                Err(e) if e.is_gone() => return Ok(Stop::Interrupted { tid }),
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        let msg = || -> Result<u64> { Ok(m) };
        // A thread killed right after its stop was reported (another thread
        // called exit_group) cannot be asked anything more: report a bare
        // stop; its exit follows.
        let gone = |e: &TargetError| e.is_gone();
        Ok(match event {
            0 => match self.get_siginfo(tid) {
                Ok(info) => Stop::Signal { tid, info },
                Err(e) if gone(&e) => Stop::Interrupted { tid },
                Err(e) => return Err(e),
            },
            libc::PTRACE_EVENT_STOP => match sig {
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                    Stop::GroupStop { tid, signo: sig }
                }
                _ => Stop::Interrupted { tid },
            },
            libc::PTRACE_EVENT_CLONE => Stop::Event {
                tid,
                event: Event::Clone(msg()? as Tid),
            },
            libc::PTRACE_EVENT_FORK => Stop::Event {
                tid,
                event: Event::Fork(msg()? as Tid),
            },
            libc::PTRACE_EVENT_VFORK => Stop::Event {
                tid,
                event: Event::Vfork(msg()? as Tid),
            },
            libc::PTRACE_EVENT_VFORK_DONE => Stop::Event {
                tid,
                event: Event::VforkDone,
            },
            libc::PTRACE_EVENT_EXEC => {
                self.mem.remove(&tid);
                Stop::Event {
                    tid,
                    event: Event::Exec(msg()? as Tid),
                }
            }
            libc::PTRACE_EVENT_EXIT => Stop::Event {
                tid,
                event: Event::Exit(msg()? as i32),
            },
            _ => Stop::Interrupted { tid },
        })
    }

    /// Waits for `which` (-1: any tracee). Only the wait for any tracee
    /// gives way to a signal to the tracer (Ctrl-C); a wait for one thread
    /// is the middle of an operation on it (a step, an injected call) and
    /// must see it through, or the thread is left stopped and traced.
    fn waitpid(&mut self, which: Tid) -> Result<Stop> {
        let mut status: libc::c_int = 0;
        let tid = loop {
            // SAFETY: status is a valid out-pointer.
            // __WNOTHREAD: only this thread's tracees. Other threads of
            // the process may run engines of their own (one per client in
            // wprobe-core), and must not have their stops taken.
            let r = unsafe { libc::waitpid(which, &mut status, libc::__WALL | libc::__WNOTHREAD) };
            if r < 0
                && which != -1
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {
                continue;
            }
            break r;
        };
        if tid < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Err(TargetError::Interrupted);
            }
            return Err(TargetError::Os {
                op: "waitpid",
                tid: which,
                source: err,
            });
        }
        self.decode(tid, status)
    }
}

impl Target for Ptrace {
    fn spawn(&mut self, argv: &[String]) -> Result<Tid> {
        self.spawn_child(argv)
    }

    fn attach(&mut self, pid: Tid) -> Result<Vec<Tid>> {
        self.seize_all(pid)
    }

    fn threads(&mut self, pid: Tid) -> Result<Vec<Tid>> {
        list_threads(pid).map_err(|source| TargetError::Os {
            op: "listing /proc/PID/task",
            tid: pid,
            source,
        })
    }

    fn read_memory(&mut self, pid: Tid, addr: u64, buf: &mut [u8]) -> Result<()> {
        let f = self.mem_file(pid)?;
        f.read_exact_at(buf, addr)
            .map_err(|source| TargetError::Memory {
                pid,
                addr,
                len: buf.len(),
                source,
            })
    }

    fn write_memory(&mut self, pid: Tid, addr: u64, buf: &[u8]) -> Result<()> {
        let f = self.mem_file(pid)?;
        f.write_all_at(buf, addr)
            .map_err(|source| TargetError::Memory {
                pid,
                addr,
                len: buf.len(),
                source,
            })
    }

    fn memory_changed(&mut self, pid: Tid) {
        self.mem.remove(&pid);
    }

    fn get_regs(&mut self, tid: Tid) -> Result<Regs> {
        let mut regs = Regs::default();
        // `Regs` has the layout of `struct user_regs_struct`.
        if ptrace(
            libc::PTRACE_GETREGS,
            tid,
            0,
            &mut regs as *mut Regs as usize,
        ) < 0
        {
            return Err(os("PTRACE_GETREGS", tid));
        }
        Ok(regs)
    }

    fn set_regs(&mut self, tid: Tid, regs: &Regs) -> Result<()> {
        if ptrace(libc::PTRACE_SETREGS, tid, 0, regs as *const Regs as usize) < 0 {
            return Err(os("PTRACE_SETREGS", tid));
        }
        Ok(())
    }

    fn get_siginfo(&mut self, tid: Tid) -> Result<SigInfo> {
        let mut info = SigInfo { raw: [0; 128] };
        if ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            0,
            info.raw.as_mut_ptr() as usize,
        ) < 0
        {
            return Err(os("PTRACE_GETSIGINFO", tid));
        }
        Ok(info)
    }

    fn set_siginfo(&mut self, tid: Tid, info: &SigInfo) -> Result<()> {
        if ptrace(libc::PTRACE_SETSIGINFO, tid, 0, info.raw.as_ptr() as usize) < 0 {
            return Err(os("PTRACE_SETSIGINFO", tid));
        }
        Ok(())
    }

    fn resume(&mut self, tid: Tid, how: Resume, signal: i32) -> Result<()> {
        let (req, name) = match how {
            Resume::Continue => (libc::PTRACE_CONT, "PTRACE_CONT"),
            Resume::Step => (libc::PTRACE_SINGLESTEP, "PTRACE_SINGLESTEP"),
            Resume::Listen => (libc::PTRACE_LISTEN, "PTRACE_LISTEN"),
        };
        if ptrace(req, tid, 0, signal as usize) < 0 {
            return Err(os(name, tid));
        }
        Ok(())
    }

    fn interrupt(&mut self, tid: Tid) -> Result<()> {
        if ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) < 0 {
            return Err(os("PTRACE_INTERRUPT", tid));
        }
        Ok(())
    }

    fn wait(&mut self) -> Result<Stop> {
        self.waitpid(-1)
    }

    fn wait_for(&mut self, tid: Tid) -> Result<Stop> {
        self.waitpid(tid)
    }

    fn detach(&mut self, tid: Tid, signal: i32) -> Result<()> {
        if ptrace(libc::PTRACE_DETACH, tid, 0, signal as usize) < 0 {
            return Err(os("PTRACE_DETACH", tid));
        }
        Ok(())
    }

    fn get_sigmask(&mut self, tid: Tid) -> Result<u64> {
        let mut mask: u64 = 0;
        // PTRACE_GETSIGMASK takes the size of the set in addr.
        if ptrace(0x420a, tid, 8, &mut mask as *mut u64 as usize) < 0 {
            return Err(os("PTRACE_GETSIGMASK", tid));
        }
        Ok(mask)
    }

    fn set_sigmask(&mut self, tid: Tid, mask: u64) -> Result<()> {
        if ptrace(0x420b, tid, 8, &mask as *const u64 as usize) < 0 {
            return Err(os("PTRACE_SETSIGMASK", tid));
        }
        Ok(())
    }

    fn same_memory(&mut self, a: Tid, b: Tid) -> bool {
        const KCMP_VM: libc::c_long = 1;
        // SAFETY: kcmp takes two pids and a type; no pointers.
        let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_VM, 0, 0) };
        r == 0
    }

    fn trap_pending(&mut self, tid: Tid) -> bool {
        // SigPnd is the thread's own pending set, in hex; signal n is bit n-1.
        status_field(tid, "SigPnd:")
            .and_then(|m| u64::from_str_radix(&m, 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGTRAP - 1)) != 0)
    }
}

fn pipe() -> io::Result<(i32, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid two-element out-array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

fn find_in_path(cmd: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = std::path::PathBuf::from(cmd);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| is_exec(p))
}

/// The tids of every thread of `pid`.
pub fn list_threads(pid: Tid) -> io::Result<Vec<Tid>> {
    let mut tids: Vec<Tid> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The pid of the thread group `tid` belongs to, from /proc.
pub fn thread_group_of(tid: Tid) -> Option<Tid> {
    status_field(tid, "Tgid:")?.parse().ok()
}

fn status_field(pid: Tid, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

fn explain_attach_error(pid: Tid, err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::ESRCH) => format!("cannot attach to process {pid}: no such process"),
        Some(libc::EPERM) => {
            if status_field(pid, "State:").is_some_and(|s| s.starts_with('Z')) {
                let others = list_threads(pid).map_or(0, |t| t.len().saturating_sub(1));
                if others > 0 {
                    return format!(
                        "cannot attach to process {pid}: its main thread has exited while {others} \
                         other thread(s) run on; attaching to such a process is not supported yet"
                    );
                }
                return format!(
                    "cannot attach to process {pid}: it has exited (a zombie waiting for its parent)"
                );
            }
            if let Some(tracer) = status_field(pid, "TracerPid:").filter(|t| t != "0") {
                // TracerPid is the tracing thread; name its process.
                let tracer_tid: Tid = tracer.parse().unwrap_or(0);
                let tracer_pid = thread_group_of(tracer_tid).unwrap_or(tracer_tid);
                if tracer_pid == std::process::id() as Tid {
                    return format!(
                        "cannot attach to process {pid}: another client of this wprobe-core \
                         (process {tracer_pid}) traces it; a process has one tracer at a time"
                    );
                }
                let name = std::fs::read_to_string(format!("/proc/{tracer_pid}/comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                return format!(
                    "cannot attach to process {pid}: it is already traced by process {tracer_pid} ({name}); \
                     detach that debugger or tracer first"
                );
            }
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                return format!(
                    "cannot attach to process {pid}: the kernel refused PTRACE_SEIZE even to root \
                     (the process may be exiting, or be a kernel thread or protected by an LSM)"
                );
            }
            let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
                .map(|s| s.trim().to_string())
                .ok();
            let mut msg = format!(
                "cannot attach to process {pid}: permission denied. Tracing a process that is \
                 not our child needs CAP_SYS_PTRACE (run as root, or `setcap cap_sys_ptrace+ep` \
                 on the binary), and the process must belong to our user"
            );
            if let Some(s) = scope.filter(|s| s != "0") {
                msg.push_str(&format!(
                    "; kernel.yama.ptrace_scope is {s}, which forbids attaching to non-children \
                     (`sysctl kernel.yama.ptrace_scope=0` allows it)"
                ));
            }
            msg
        }
        _ => format!("cannot attach to process {pid}: {err}"),
    }
}
