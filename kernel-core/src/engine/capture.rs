//! Captures: values a probe reads while the thread is stopped (perf probe's
//! fetch-args), so that they are consistent with the registers of the hit.

use crate::arch::native::{Reg, Regs};
use crate::spec::{Capture, CaptureType, Fetch};
use crate::target::{Target, Tid};

/// One captured value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Unsigned(u64),
    Signed(i64),
    Hex(u64),
    /// The bytes before the NUL (or the bound); `truncated` when the bound
    /// was reached before a NUL.
    String {
        bytes: Vec<u8>,
        truncated: bool,
    },
    Bytes(Vec<u8>),
    /// The fetch could not be read (a bad pointer): the message says where.
    Error(String),
}

/// Checks at probe creation that every register a capture names exists.
pub fn validate(c: &Capture) -> Result<(), String> {
    fn walk(f: &Fetch) -> Result<(), String> {
        match f {
            Fetch::Reg(r) => Reg::from_name(r).map(|_| ()).ok_or_else(|| {
                format!("unknown register `%{r}` (x86_64 registers: %rax..%r15, %rip)")
            }),
            Fetch::Deref(_, inner) => walk(inner),
            _ => Ok(()),
        }
    }
    walk(&c.fetch)
}

fn address<T: Target>(t: &mut T, pid: Tid, regs: &Regs, f: &Fetch) -> Result<u64, String> {
    Ok(match f {
        Fetch::Reg(r) => regs.get(Reg::from_name(r).ok_or_else(|| format!("no register {r}"))?),
        Fetch::Arg(n) => regs.args()[(*n - 1) as usize],
        Fetch::StackPointer => regs.sp(),
        Fetch::Stack(n) => read_u64(t, pid, regs.sp().wrapping_add(8 * u64::from(*n)))?,
        Fetch::Absolute(a) => *a,
        Fetch::Deref(off, inner) => {
            let base = address(t, pid, regs, inner)?;
            read_u64(t, pid, base.wrapping_add(*off as u64))?
        }
    })
}

fn read_u64<T: Target>(t: &mut T, pid: Tid, addr: u64) -> Result<u64, String> {
    let mut b = [0u8; 8];
    t.read_memory(pid, addr, &mut b)
        .map_err(|_| format!("cannot read memory at {addr:#x}"))?;
    Ok(u64::from_le_bytes(b))
}

/// Where a fetch points for memory types: `+8(%rdi):string` reads the
/// string at rdi+8, not at the word stored there; a plain `%rdi:string`
/// reads at rdi. Scalar types read the value itself.
fn fetch_for_memory(f: &Fetch) -> (&Fetch, i64) {
    match f {
        Fetch::Deref(off, inner) => (inner, *off),
        other => (other, 0),
    }
}

pub fn evaluate<T: Target>(t: &mut T, pid: Tid, regs: &Regs, c: &Capture) -> Value {
    let r = match c.ty {
        CaptureType::String(max) | CaptureType::Bytes(max) => {
            let (base, off) = fetch_for_memory(&c.fetch);
            address(t, pid, regs, base).and_then(|a| {
                let addr = a.wrapping_add(off as u64);
                read_bounded(t, pid, addr, max, matches!(c.ty, CaptureType::String(_)))
            })
        }
        CaptureType::Unsigned(bits) | CaptureType::Hex(bits) | CaptureType::Signed(bits) => {
            address(t, pid, regs, &c.fetch).map(|v| {
                let mask = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                let v = v & mask;
                match c.ty {
                    CaptureType::Unsigned(_) => Value::Unsigned(v),
                    CaptureType::Hex(_) => Value::Hex(v),
                    _ => {
                        let shift = 64 - u32::from(bits);
                        Value::Signed(((v << shift) as i64) >> shift)
                    }
                }
            })
        }
    };
    r.unwrap_or_else(Value::Error)
}

/// Reads up to `max` bytes at `addr`; strings stop at the first NUL. A read
/// that crosses into an unmapped page keeps what could be read before it.
fn read_bounded<T: Target>(
    t: &mut T,
    pid: Tid,
    addr: u64,
    max: usize,
    string: bool,
) -> Result<Value, String> {
    let mut out = Vec::with_capacity(max.min(256));
    let mut cur = addr;
    while out.len() < max {
        let page_left = (4096 - (cur & 0xfff)) as usize;
        let n = page_left.min(max - out.len()).min(256);
        let mut buf = vec![0u8; n];
        if t.read_memory(pid, cur, &mut buf).is_err() {
            if out.is_empty() {
                return Err(format!("cannot read memory at {addr:#x}"));
            }
            break;
        }
        if string {
            if let Some(z) = buf.iter().position(|&b| b == 0) {
                out.extend_from_slice(&buf[..z]);
                return Ok(Value::String {
                    bytes: out,
                    truncated: false,
                });
            }
        }
        out.extend_from_slice(&buf);
        cur += n as u64;
    }
    Ok(if string {
        Value::String {
            bytes: out,
            truncated: true,
        }
    } else {
        Value::Bytes(out)
    })
}
