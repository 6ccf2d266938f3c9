//! Property tests of the decoder and the slot builder on arbitrary bytes:
//! `arch_prepare_kprobe` and `arch_prepare_slot` never panic, and every
//! out-of-line decision round-trips through iced: the slot's copy decodes,
//! at the slot, to the same instruction, its RIP-relative operand re-pointed
//! so it reaches the same absolute address.

use iced_x86::{InstructionInfoFactory, Register};
use proptest::collection::vec;
use proptest::prelude::*;

use super::super::decode::decode;
use super::super::{
    arch_abort_xol, arch_post_xol, arch_prepare_kprobe, arch_prepare_slot, arch_simulate,
    insn_boundaries, Action, Regs, SlotMode, SLOT_SIZE,
};
use super::FakeMem;

/// The modes a slot can be asked for.
const MODES: [SlotMode; 3] = [SlotMode::Boost, SlotMode::TrapAfter, SlotMode::Step];

/// Decodes `code` at `addr`, builds its slot at `slot_addr` in every mode,
/// and checks what each built slot holds. Returns the decision, for
/// coverage counts.
fn check(code: &[u8], addr: u64, slot_addr: u64) -> &'static str {
    let p = match arch_prepare_kprobe(code, addr) {
        Ok(p) => p,
        Err(r) => {
            assert_eq!(r.addr, addr);
            assert!(!r.reason.is_empty());
            return "refused";
        }
    };
    assert!(
        p.len >= 1 && p.len <= code.len().min(15),
        "{p:?} from {code:02x?}"
    );
    assert_eq!(p.insn(), &code[..p.len]);
    let original = decode(p.insn(), addr).expect("a prepared instruction decodes");
    assert_eq!(original.len(), p.len);

    let xol = match &p.action {
        Action::Simulate(sim) => {
            for mode in MODES {
                assert!(
                    arch_prepare_slot(&p, slot_addr, mode).is_err(),
                    "a simulated `{}` got a slot",
                    p.text
                );
            }
            // Simulation on arbitrary registers: a memory error or a result,
            // never a panic.
            let mut regs = Regs {
                rip: addr,
                rsp: 0x1000_0100,
                rcx: addr ^ slot_addr,
                eflags: slot_addr,
                ..Regs::default()
            };
            let mut mem = FakeMem::new(0x1000_0000, 0x200);
            let _ = arch_simulate(&p, sim, &mut regs, &mut mem);
            return p.decision();
        }
        Action::OutOfLine(xol) => xol.clone(),
    };
    assert_eq!(xol.rip_relative, original.is_ip_rel_memory_operand());

    for mode in MODES {
        let slot = match arch_prepare_slot(&p, slot_addr, mode) {
            Ok(slot) => slot,
            Err(r) => {
                assert_eq!(r.addr, addr);
                continue;
            }
        };
        let what = format!(
            "`{}` ({code:02x?}) at {addr:#x}, slot {slot_addr:#x} {mode:?}",
            p.text
        );
        assert!(
            mode != SlotMode::Boost || xol.boostable,
            "{what}: boosted an unboostable instruction"
        );
        assert_eq!(slot.mode, mode, "{what}");
        assert!(
            slot.code.len() <= SLOT_SIZE,
            "{what}: {} bytes",
            slot.code.len()
        );

        // The copy is one instruction, the original re-pointed.
        let copy = decode(&slot.code[..slot.copy_len], slot_addr)
            .unwrap_or_else(|e| panic!("{what}: the copy does not decode: {e}"));
        assert_eq!(
            copy.len(),
            slot.copy_len,
            "{what}: the copy is not one instruction"
        );
        match slot.scratch {
            None => {
                // iced's `==` compares everything but the instruction's own
                // address and length; a RIP-relative operand compares as its
                // absolute target, so this is "re-pointed to the same place".
                assert_eq!(copy, original, "{what}: the copy differs");
                if !xol.rip_relative {
                    assert_eq!(
                        &slot.code[..slot.copy_len],
                        p.insn(),
                        "{what}: copied byte for byte"
                    );
                }
            }
            Some((reg, value)) => {
                assert!(
                    xol.rip_relative,
                    "{what}: a scratch register without a RIP-relative operand"
                );
                assert_eq!(
                    mode,
                    SlotMode::Step,
                    "{what}: a scratch rewrite must be stepped"
                );
                assert_eq!(value, p.next_ip(), "{what}");
                assert_eq!(copy.memory_base(), reg.iced(), "{what}");
                assert_eq!(
                    value.wrapping_add(copy.memory_displacement64()),
                    original.ip_rel_memory_address(),
                    "{what}: the rewrite reaches another address"
                );
                let used: Vec<Register> = InstructionInfoFactory::new()
                    .info(&original)
                    .used_registers()
                    .iter()
                    .map(|u| u.register().full_register())
                    .collect();
                assert!(
                    !used.contains(&reg.iced()),
                    "{what}: the scratch {reg} is in use"
                );
                // Put the operand back as it was: the rest is the original.
                let mut back = copy;
                back.set_memory_base(Register::RIP);
                back.set_memory_displacement64(original.ip_rel_memory_address());
                back.set_memory_displ_size(original.memory_displ_size());
                assert_eq!(
                    back, original,
                    "{what}: the rewrite changed more than the operand"
                );
            }
        }

        // What follows the copy.
        let tail = &slot.code[slot.copy_len..];
        match mode {
            SlotMode::Boost => {
                let end = slot_addr.wrapping_add(slot.copy_len as u64);
                let jmp = decode(tail, end).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!((tail.len(), tail[0]), (5, 0xe9), "{what}: not a jmp rel32");
                assert_eq!(
                    jmp.near_branch_target(),
                    p.next_ip(),
                    "{what}: the jump back misses"
                );
            }
            SlotMode::TrapAfter => assert_eq!(tail, [0xcc], "{what}"),
            SlotMode::Step => assert!(tail.is_empty(), "{what}"),
        }

        // Mapping back from anywhere in or around the slot never panics, and
        // from the two ends gives the probe's address or the next one.
        let mut mem = FakeMem::new(0x1000_0000, 0x200);
        for rip in [
            slot_addr,
            slot_addr.wrapping_add(slot.copy_len as u64),
            slot_addr ^ addr,
        ] {
            let mut regs = Regs {
                rip,
                rsp: 0x1000_0100,
                ..Regs::default()
            };
            let _ = arch_post_xol(&p, &slot, slot_addr, Some(7), &mut regs.clone(), &mut mem);
            arch_abort_xol(&p, &slot, slot_addr, Some(7), &mut regs);
            if rip == slot_addr {
                assert_eq!(regs.rip, addr, "{what}");
            } else if rip == slot_addr.wrapping_add(slot.copy_len as u64) {
                assert_eq!(regs.rip, p.next_ip(), "{what}");
            }
        }
    }
    p.decision()
}

/// Bytes shaped like an instruction with a RIP-relative operand (prefixes,
/// an optional REX, a one- to three-byte or VEX opcode, a ModRM with mod=00
/// rm=101, then displacement and immediate bytes), which random bytes reach
/// only now and then.
fn rip_relative_shaped() -> impl Strategy<Value = Vec<u8>> {
    let prefixes = vec(
        prop::sample::select(vec![0x66u8, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x3e, 0x64, 0x65]),
        0..3,
    );
    let rex = proptest::option::of(0x40u8..=0x4f);
    let opcode = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        any::<u8>().prop_map(|b| vec![0x0f, b]),
        (prop::sample::select(vec![0x38u8, 0x3a]), any::<u8>()).prop_map(|(m, b)| vec![0x0f, m, b]),
        (any::<u8>(), any::<u8>()).prop_map(|(v, b)| vec![0xc5, v, b]),
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(v1, v2, b)| vec![0xc4, v1, v2, b]),
    ];
    let modrm = (0u8..8).prop_map(|reg| (reg << 3) | 0b101);
    (prefixes, rex, opcode, modrm, vec(any::<u8>(), 4..10)).prop_map(
        |(prefixes, rex, opcode, modrm, tail)| {
            let mut code = prefixes;
            code.extend(rex);
            code.extend(opcode);
            code.push(modrm);
            code.extend(tail);
            code
        },
    )
}

fn code() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..18), rip_relative_shaped()]
}

/// A probe address: anywhere, in a usual text segment, or at the very top
/// of the address space where `next_ip` and targets wrap.
fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0x40_0000u64..0x80_0000,
        (u64::MAX - 40)..=u64::MAX,
    ]
}

/// A slot address: within reach of the probe (so the copy is re-encoded),
/// or anywhere (so it mostly needs the scratch rewrite).
fn slot_addr(addr: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        (-(1i64 << 31)..(1i64 << 31)).prop_map(move |d| addr.wrapping_add(d as u64)),
        any::<u64>(),
    ]
}

fn case() -> impl Strategy<Value = (Vec<u8>, u64, u64)> {
    (code(), addr()).prop_flat_map(|(code, addr)| (Just(code), Just(addr), slot_addr(addr)))
}

proptest! {
    #![proptest_config(crate::fuzz_corpus::config(4000))]

    #[test]
    fn prepare_and_slot_never_panic_and_round_trip((code, addr, slot_addr) in case()) {
        check(&code, addr, slot_addr);
    }

    #[test]
    fn boundaries_never_panic(code in vec(any::<u8>(), 0..64)) {
        let b = insn_boundaries(&code);
        prop_assert!(b.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(b.iter().all(|&o| o < code.len()));
    }
}

/// The committed seeds (`tests/fuzz-corpus/x86/`: instructions that reach
/// the rare paths) at a near slot, a far one, and the top of the address
/// space; each is also checked to reach the decision its name says.
#[test]
fn corpus_round_trips() {
    let mut decisions = std::collections::BTreeSet::new();
    for (name, code) in crate::fuzz_corpus::seeds("x86") {
        for (addr, slot_addr) in [
            (0x40_1000, 0x7000_0000),
            (0x40_1000, 0x7fff_f7ff_0000),
            (u64::MAX - 4, 0x1000),
        ] {
            let decision = check(&code, addr, slot_addr);
            if addr == 0x40_1000 {
                assert!(name.starts_with(decision), "{name}: {decision}");
                decisions.insert(decision);
            }
        }
    }
    assert_eq!(
        decisions.len(),
        4,
        "the corpus covers every decision: {decisions:?}"
    );
}
