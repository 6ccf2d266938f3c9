//! Register names of each architecture the event can come from.
//!
//! The event says its architecture as an ELF `e_machine` number
//! ([`crate::Event::arch`]) and carries the registers in the kernel's
//! `struct user_regs_struct` order, so a name is an index into that order.
//! Every architecture module exports the same items: `NAMES` and `index`.

/// ELF `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;

/// The index of register `name` in the event's register order for
/// architecture `arch`, or `None` for an unknown register or architecture.
/// A leading `%` (AT&T syntax, as in probe specs) is accepted.
pub fn reg_index(arch: u16, name: &str) -> Option<usize> {
    let name = name.strip_prefix('%').unwrap_or(name);
    match arch {
        EM_X86_64 => x86_64::index(name),
        _ => None,
    }
}

/// The name of the register at `index` for architecture `arch`.
pub fn reg_name(arch: u16, index: usize) -> Option<&'static str> {
    match arch {
        EM_X86_64 => x86_64::NAMES.get(index).copied(),
        _ => None,
    }
}

/// x86_64: `struct user_regs_struct` of `<sys/user.h>`.
pub mod x86_64 {
    /// The registers in the event's order (27).
    pub const NAMES: [&str; 27] = [
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds",
        "es", "fs", "gs",
    ];

    /// Index of `rax` (the return value), for `set_register`.
    pub const RAX: usize = 10;
    /// Index of `rdi` (the first argument).
    pub const RDI: usize = 14;
    /// Index of `rsi` (the second argument).
    pub const RSI: usize = 13;
    /// Index of `rdx` (the third argument).
    pub const RDX: usize = 12;
    /// Index of `rip`: changing it on an entry event skips the probed
    /// instruction (docs/plugin-abi.md, "Mutation").
    pub const RIP: usize = 16;
    /// Index of `rsp`.
    pub const RSP: usize = 19;

    /// The index of register `name` (without `%`).
    pub fn index(name: &str) -> Option<usize> {
        NAMES.iter().position(|n| *n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(arch: u16, name: &str, expect: Option<usize>) {
        assert_eq!(reg_index(arch, name), expect, "{arch} {name}");
        if let Some(i) = expect {
            assert_eq!(reg_name(arch, i), Some(name.trim_start_matches('%')));
        }
    }

    #[test]
    fn names_map_to_user_regs_struct_order() {
        check(EM_X86_64, "r15", Some(0));
        check(EM_X86_64, "rax", Some(x86_64::RAX));
        check(EM_X86_64, "%rdi", Some(x86_64::RDI));
        check(EM_X86_64, "rsi", Some(x86_64::RSI));
        check(EM_X86_64, "rdx", Some(x86_64::RDX));
        check(EM_X86_64, "rip", Some(x86_64::RIP));
        check(EM_X86_64, "rsp", Some(x86_64::RSP));
        check(EM_X86_64, "gs", Some(26));
        check(EM_X86_64, "eax", None);
        check(183, "x0", None); // aarch64 is not described yet
    }
}
