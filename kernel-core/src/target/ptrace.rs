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

use super::{Event, Result, Resume, SigInfo, SpawnConfig, Stop, Target, TargetError, Tid};
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
    /// Stops of other tracees taken while waiting for one thread, handed
    /// out first by the next waits.
    stash: std::collections::VecDeque<Stop>,
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
    /// program has run yet. `argv[0]` is searched in the `PATH` of the
    /// environment it gets.
    ///
    /// Between fork and execve the child takes what `how` gives (its
    /// descriptors 0–2, a session of its own), closes every other
    /// descriptor it inherited, puts every signal back to its default
    /// disposition with nothing blocked (a tracer that ignores SIGPIPE must
    /// not pass that on: `yes | head` would say "Broken pipe"), and drops
    /// to the credentials of [`Ptrace::spawning_as`].
    fn spawn_child(&mut self, argv: &[String], how: SpawnConfig) -> Result<Tid> {
        let cmd = argv.first().cloned().unwrap_or_default();
        let spawn_err = |source| TargetError::Spawn {
            cmd: cmd.clone(),
            source,
        };
        let invalid = |what: &str| {
            spawn_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} holds a NUL byte"),
            ))
        };
        let search_path = match &how.env {
            Some(env) => env
                .iter()
                .find_map(|v| v.strip_prefix("PATH="))
                .map(std::ffi::OsString::from),
            None => std::env::var_os("PATH"),
        };
        let path = find_in_path(&cmd, search_path.as_deref()).ok_or_else(|| {
            spawn_err(io::Error::new(
                io::ErrorKind::NotFound,
                "not found (give a path, or put it in PATH)",
            ))
        })?;
        let path = CString::new(path.into_os_string().into_encoded_bytes())
            .map_err(|_| invalid("the program's path"))?;
        let cargs = c_strings(argv).map_err(|_| invalid("an argument"))?;
        let mut cptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
        cptrs.push(std::ptr::null());
        let cenv = match &how.env {
            Some(env) => Some(c_strings(env).map_err(|_| invalid("an environment variable"))?),
            None => None,
        };
        let envp: Option<Vec<*const libc::c_char>> = cenv.as_ref().map(|e| {
            e.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        });
        let stdio: Option<[i32; 3]> = how.stdio.as_ref().map(|fds| {
            use std::os::fd::AsRawFd;
            [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()]
        });
        let new_session = how.new_session;

        let creds = self.spawn_as.clone();
        let groups: Vec<libc::gid_t> = creds.as_ref().map(|c| c.groups.clone()).unwrap_or_default();
        let cwd = match creds.as_ref().and_then(|c| c.cwd.as_ref()) {
            Some(d) => Some(
                CString::new(d.clone().into_os_string().into_encoded_bytes())
                    .map_err(|_| invalid("the working directory"))?,
            ),
            None => None,
        };
        let (go_r, go_w) = pipe().map_err(spawn_err)?;
        let (err_r, err_w) = pipe().map_err(spawn_err)?;
        // SAFETY: the child only calls async-signal-safe functions (read,
        // dup2, fcntl, setsid, sigaction, sigprocmask, set*id, prctl,
        // chdir, close_range, execv(e), write, _exit) on memory prepared
        // before the fork.
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
                let ok = child_setup(stdio, new_session)
                    && match &creds {
                        None => true,
                        Some(c) => {
                            libc::setgroups(groups.len(), groups.as_ptr()) == 0
                                && libc::setresgid(c.gid, c.gid, c.gid) == 0
                                && libc::setresuid(c.uid, c.uid, c.uid) == 0
                                && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                                // A directory the user cannot enter is not
                                // an error: the program starts in / instead.
                                && (cwd.as_ref().is_none_or(|d| libc::chdir(d.as_ptr()) == 0)
                                    || libc::chdir(c"/".as_ptr()) == 0)
                        }
                    };
                if ok {
                    match &envp {
                        Some(envp) => libc::execve(path.as_ptr(), cptrs.as_ptr(), envp.as_ptr()),
                        None => libc::execv(path.as_ptr(), cptrs.as_ptr()),
                    };
                }
                let e = *libc::__errno_location();
                libc::write(err_w, (&e as *const i32).cast(), 4);
                libc::_exit(127);
            }
        }
        // The child has its own copies of the descriptors it was given.
        drop(how);
        // SAFETY: closing our copies of the child's ends of the pipes.
        unsafe {
            libc::close(go_r);
            libc::close(err_w);
        }
        // SAFETY: err_r is ours and open; the File takes ownership.
        let mut err_file = unsafe { File::from_raw_fd(err_r) };
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
                // The child wrote its errno before it exited; a pipe has no
                // offset, so this is a plain read (pread would fail).
                use std::io::Read;
                let mut b = [0u8; 4];
                let errno = match err_file.read(&mut b) {
                    Ok(4) => Some(i32::from_ne_bytes(b)),
                    _ => None,
                };
                // SAFETY: reaping our child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL | libc::__WNOTHREAD);
                }
                Err(spawn_err(explain_exec_error(&path, errno)))
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

    /// Waits for `which` (-1: any tracee), stops taken earlier first.
    ///
    /// A wait for one thread takes the stops of every tracee as they come
    /// and keeps the others for later: a thread-group leader killed while
    /// other threads live (another thread's `exit_group`) reports only
    /// once they are reaped, so `waitpid` on the leader alone would never
    /// return. Only the wait for any tracee gives way to a signal to the
    /// tracer (Ctrl-C); a wait for one thread is the middle of an
    /// operation on it (a step, an injected call) and must see it through,
    /// or the thread is left stopped and traced.
    fn waitpid(&mut self, which: Tid) -> Result<Stop> {
        if which == -1 {
            if let Some(s) = self.stash.pop_front() {
                return Ok(s);
            }
            return self.waitpid_blocking(-1);
        }
        if let Some(i) = self.stash.iter().position(|s| s.tid() == which) {
            return Ok(self.stash.remove(i).expect("found"));
        }
        // Not a tracee of ours: said at once, never waited for.
        if let Some(s) = self.waitpid_one(which, libc::WNOHANG)? {
            return Ok(s);
        }
        loop {
            match self.waitpid_blocking(-1) {
                Ok(s) if s.tid() == which => return Ok(s),
                Ok(s) => self.stash.push_back(s),
                Err(TargetError::Interrupted) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn waitpid_blocking(&mut self, which: Tid) -> Result<Stop> {
        Ok(self
            .waitpid_one(which, 0)?
            .expect("a blocking waitpid returns a stop"))
    }

    /// One `waitpid`; `None` when `WNOHANG` found nothing yet.
    fn waitpid_one(&mut self, which: Tid, flags: libc::c_int) -> Result<Option<Stop>> {
        let mut status: libc::c_int = 0;
        let tid = loop {
            // SAFETY: status is a valid out-pointer.
            // __WNOTHREAD: only this thread's tracees. Other threads of
            // the process may run engines of their own (one per client in
            // wprobe-core), and must not have their stops taken.
            let r = unsafe {
                libc::waitpid(which, &mut status, libc::__WALL | libc::__WNOTHREAD | flags)
            };
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
        if tid == 0 {
            return Ok(None);
        }
        self.decode(tid, status).map(Some)
    }
}

impl Target for Ptrace {
    fn spawn(&mut self, argv: &[String], how: SpawnConfig) -> Result<Tid> {
        self.spawn_child(argv, how)
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

    fn is_zombie(&mut self, tid: Tid) -> bool {
        // The state is the field after the command's closing parenthesis.
        std::fs::read_to_string(format!("/proc/{tid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_string())
            })
            .is_some_and(|rest| rest.starts_with('Z') || rest.starts_with('X'))
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

fn find_in_path(cmd: &str, path: Option<&std::ffi::OsStr>) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    // A path is run as it is: execve says what is wrong with it (ENOENT,
    // EACCES, ENOEXEC), as a shell would.
    if cmd.contains('/') {
        return Some(std::path::PathBuf::from(cmd));
    }
    std::env::split_paths(path?)
        .map(|d| d.join(cmd))
        .find(|p| is_exec(p))
}

fn c_strings(v: &[String]) -> std::result::Result<Vec<CString>, std::ffi::NulError> {
    v.iter().map(|a| CString::new(a.as_bytes())).collect()
}

/// In a forked child before execve: descriptors 0–2 from `stdio`, every
/// other descriptor closed at execve, a new session if asked, default
/// signal dispositions and an empty mask. Only async-signal-safe calls.
/// False (errno set) when a step failed.
///
/// # Safety
/// Call only in a child between fork and execve.
unsafe fn child_setup(stdio: Option<[i32; 3]>, new_session: bool) -> bool {
    // SAFETY: plain system calls on descriptors and signal numbers; the
    // sigaction and sigset values live on this stack.
    unsafe {
        if let Some(fds) = stdio {
            // Moved above 2 first, so that a given descriptor that is
            // itself 0, 1 or 2 is not overwritten before it is used.
            let mut high = [0i32; 3];
            for (h, &fd) in high.iter_mut().zip(&fds) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3);
                if *h < 0 {
                    return false;
                }
            }
            for (target, &h) in high.iter().enumerate() {
                if libc::dup2(h, target as i32) < 0 {
                    return false;
                }
            }
        }
        if new_session && libc::setsid() < 0 {
            return false;
        }
        // Every descriptor above 2 closes at execve (the error pipe stays
        // usable until then). Before Linux 5.11 close_range has no
        // CLOEXEC flag: mark them one by one.
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            let mut rl: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
                rl.rlim_cur.min(1 << 20) as i32
            } else {
                4096
            };
            for fd in 3..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // Numbers the libc reserves fail with EINVAL: harmless.
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) == 0
    }
}

/// Why execve of `path` failed, from the errno the child sent (`None`: it
/// ended before it could say). ENOENT for a file that exists is about its
/// interpreter, which is named when it can be read.
fn explain_exec_error(path: &CString, errno: Option<i32>) -> io::Error {
    use std::os::unix::ffi::OsStrExt;
    let Some(errno) = errno else {
        return io::Error::other("the program ended before it could start");
    };
    let err = io::Error::from_raw_os_error(errno);
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.as_bytes()));
    if errno != libc::ENOENT || !path.exists() {
        return err;
    }
    let mut head = [0u8; 256];
    let n = File::open(path)
        .and_then(|mut f| io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    let head = &head[..n];
    let interp = if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let word = line
            .split(|b| b.is_ascii_whitespace())
            .find(|w| !w.is_empty())
            .unwrap_or_default();
        format!(
            "the interpreter `{}` named on its #! line",
            String::from_utf8_lossy(word)
        )
    } else if head.starts_with(b"\x7fELF") {
        "its ELF interpreter (the dynamic loader named in PT_INTERP; a program built for \
         another architecture or C library?)"
            .to_string()
    } else {
        "its interpreter".to_string()
    };
    io::Error::new(err.kind(), format!("{err}: {} does not exist", interp))
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
