//! The x86_64 register file, in the layout the kernel hands to ptrace.

/// Register file in the exact layout of Linux `struct user_regs_struct`
/// (`PTRACE_GETREGS` / `PTRACE_SETREGS`), so the engine can pass a pointer
/// to it straight to ptrace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

// `struct user_regs_struct` is 27 unsigned longs with no padding.
const _: () = assert!(core::mem::size_of::<Regs>() == 27 * 8);

impl Regs {
    /// The register file from its words in `user_regs_struct` order (an
    /// optimized probe's event in the ring).
    pub fn from_words(w: &[u64; 27]) -> Regs {
        let [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs] =
            *w;
        Regs {
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        }
    }

    /// The instruction pointer (`rip`), Linux's `instruction_pointer()`.
    pub fn ip(&self) -> u64 {
        self.rip
    }

    /// Sets the instruction pointer, Linux's `instruction_pointer_set()`.
    pub fn set_ip(&mut self, v: u64) {
        self.rip = v;
    }

    /// The stack pointer (`rsp`), Linux's `kernel_stack_pointer()` / `user_stack_pointer()`.
    pub fn sp(&self) -> u64 {
        self.rsp
    }

    /// The function return value (`rax`), Linux's `regs_return_value()`.
    pub fn return_value(&self) -> u64 {
        self.rax
    }

    /// The first six integer arguments under the System V AMD64 ABI:
    /// `rdi, rsi, rdx, rcx, r8, r9` (the view a jprobe handler had).
    ///
    /// At a function's first instruction they are the caller's arguments; on
    /// return from a `syscall`, the kernel ABI uses `r10` instead of `rcx`.
    pub fn args(&self) -> [u64; 6] {
        [self.rdi, self.rsi, self.rdx, self.rcx, self.r8, self.r9]
    }

    /// Every register by name, in `user_regs_struct` order.
    pub fn named(&self) -> [(&'static str, u64); 27] {
        [
            ("r15", self.r15),
            ("r14", self.r14),
            ("r13", self.r13),
            ("r12", self.r12),
            ("rbp", self.rbp),
            ("rbx", self.rbx),
            ("r11", self.r11),
            ("r10", self.r10),
            ("r9", self.r9),
            ("r8", self.r8),
            ("rax", self.rax),
            ("rcx", self.rcx),
            ("rdx", self.rdx),
            ("rsi", self.rsi),
            ("rdi", self.rdi),
            ("orig_rax", self.orig_rax),
            ("rip", self.rip),
            ("cs", self.cs),
            ("eflags", self.eflags),
            ("rsp", self.rsp),
            ("ss", self.ss),
            ("fs_base", self.fs_base),
            ("gs_base", self.gs_base),
            ("ds", self.ds),
            ("es", self.es),
            ("fs", self.fs),
            ("gs", self.gs),
        ]
    }

    /// Reads one general-purpose register (or `rip`).
    pub fn get(&self, r: Reg) -> u64 {
        match r {
            Reg::Rax => self.rax,
            Reg::Rbx => self.rbx,
            Reg::Rcx => self.rcx,
            Reg::Rdx => self.rdx,
            Reg::Rsi => self.rsi,
            Reg::Rdi => self.rdi,
            Reg::Rbp => self.rbp,
            Reg::Rsp => self.rsp,
            Reg::R8 => self.r8,
            Reg::R9 => self.r9,
            Reg::R10 => self.r10,
            Reg::R11 => self.r11,
            Reg::R12 => self.r12,
            Reg::R13 => self.r13,
            Reg::R14 => self.r14,
            Reg::R15 => self.r15,
            Reg::Rip => self.rip,
        }
    }

    /// Writes one general-purpose register (or `rip`).
    pub fn set(&mut self, r: Reg, v: u64) {
        let slot = match r {
            Reg::Rax => &mut self.rax,
            Reg::Rbx => &mut self.rbx,
            Reg::Rcx => &mut self.rcx,
            Reg::Rdx => &mut self.rdx,
            Reg::Rsi => &mut self.rsi,
            Reg::Rdi => &mut self.rdi,
            Reg::Rbp => &mut self.rbp,
            Reg::Rsp => &mut self.rsp,
            Reg::R8 => &mut self.r8,
            Reg::R9 => &mut self.r9,
            Reg::R10 => &mut self.r10,
            Reg::R11 => &mut self.r11,
            Reg::R12 => &mut self.r12,
            Reg::R13 => &mut self.r13,
            Reg::R14 => &mut self.r14,
            Reg::R15 => &mut self.r15,
            Reg::Rip => &mut self.rip,
        };
        *slot = v;
    }
}

/// A general-purpose register (or `rip`), for captures such as `%rdi` and for
/// the scratch register of a rewritten RIP-relative instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    Rsp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
}

impl Reg {
    /// Every register, in the order their names are usually listed.
    pub const ALL: [Reg; 17] = [
        Reg::Rax,
        Reg::Rbx,
        Reg::Rcx,
        Reg::Rdx,
        Reg::Rsi,
        Reg::Rdi,
        Reg::Rbp,
        Reg::Rsp,
        Reg::R8,
        Reg::R9,
        Reg::R10,
        Reg::R11,
        Reg::R12,
        Reg::R13,
        Reg::R14,
        Reg::R15,
        Reg::Rip,
    ];

    /// Parses a register name as users write it: `rdi`, `%rdi` (the kprobe
    /// tracing syntax) or `RDI`. Only full 64-bit names are accepted.
    pub fn from_name(name: &str) -> Option<Reg> {
        let bare = name.strip_prefix('%').unwrap_or(name);
        Reg::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(bare))
    }

    /// The lower-case name without `%`, e.g. `"rdi"`.
    pub fn name(self) -> &'static str {
        match self {
            Reg::Rax => "rax",
            Reg::Rbx => "rbx",
            Reg::Rcx => "rcx",
            Reg::Rdx => "rdx",
            Reg::Rsi => "rsi",
            Reg::Rdi => "rdi",
            Reg::Rbp => "rbp",
            Reg::Rsp => "rsp",
            Reg::R8 => "r8",
            Reg::R9 => "r9",
            Reg::R10 => "r10",
            Reg::R11 => "r11",
            Reg::R12 => "r12",
            Reg::R13 => "r13",
            Reg::R14 => "r14",
            Reg::R15 => "r15",
            Reg::Rip => "rip",
        }
    }

    /// The iced register for this one, for instruction rewriting.
    pub(crate) fn iced(self) -> iced_x86::Register {
        use iced_x86::Register as I;
        match self {
            Reg::Rax => I::RAX,
            Reg::Rbx => I::RBX,
            Reg::Rcx => I::RCX,
            Reg::Rdx => I::RDX,
            Reg::Rsi => I::RSI,
            Reg::Rdi => I::RDI,
            Reg::Rbp => I::RBP,
            Reg::Rsp => I::RSP,
            Reg::R8 => I::R8,
            Reg::R9 => I::R9,
            Reg::R10 => I::R10,
            Reg::R11 => I::R11,
            Reg::R12 => I::R12,
            Reg::R13 => I::R13,
            Reg::R14 => I::R14,
            Reg::R15 => I::R15,
            Reg::Rip => I::RIP,
        }
    }
}

impl std::fmt::Display for Reg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
