//! The one reader of ELF binaries (the hook and the bundled uv): what [`ElfInfo`] reads is
//! checked by `cargo xtask bundle` ([`check_static_elf`], which refuses) and by `cargo xtask
//! verify` (which reports each problem as a finding). Static means no PT_INTERP and no DT_NEEDED:
//! x86_64 musl binaries are static-pie, ET_DYN with a dynamic section, and that is fine.

use anyhow::Context;

/// What an ELF file says about where it can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// ELF `e_machine`.
    pub machine: u16,
    /// The program interpreter (PT_INTERP), when it is dynamically linked.
    pub interpreter: Option<String>,
    /// The shared libraries it needs (DT_NEEDED).
    pub libraries: Vec<String>,
}

impl ElfInfo {
    /// Reads the ELF header, program headers and dynamic section of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<ElfInfo, goblin::error::Error> {
        let elf = goblin::elf::Elf::parse(bytes)?;
        Ok(ElfInfo {
            machine: elf.header.e_machine,
            interpreter: elf.interpreter.map(str::to_owned),
            libraries: elf.libraries.iter().map(|l| (*l).to_owned()).collect(),
        })
    }
}

/// The architecture name of an ELF `e_machine`: `x86_64`, `aarch64` or `machine N`.
pub fn machine_name(machine: u16) -> String {
    match machine {
        62 => "x86_64".to_owned(),
        183 => "aarch64".to_owned(),
        other => format!("machine {other}"),
    }
}

/// What [`check_static_elf`] found.
#[derive(Debug)]
pub struct StaticElf {
    /// ELF `e_machine`.
    pub machine: u16,
}

/// Fails unless `bytes` is an ELF for `machine` with no interpreter and no needed libraries.
pub fn check_static_elf(bytes: &[u8], machine: u16) -> anyhow::Result<StaticElf> {
    let elf = ElfInfo::parse(bytes).context("not an ELF file")?;
    if let Some(interp) = elf.interpreter {
        anyhow::bail!("dynamically linked: program interpreter {interp}");
    }
    if !elf.libraries.is_empty() {
        anyhow::bail!("needs shared libraries: {}", elf.libraries.join(", "));
    }
    if elf.machine != machine {
        anyhow::bail!("ELF machine {} is not the expected {machine}", elf.machine);
    }
    Ok(StaticElf { machine })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-byte ELF64 little-endian header with no program headers: a static binary.
    fn minimal_elf(machine: u16) -> Vec<u8> {
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        elf.extend(2u16.to_le_bytes()); // ET_EXEC
        elf.extend(machine.to_le_bytes());
        elf.extend(1u32.to_le_bytes());
        elf.extend([0; 24]); // entry, phoff, shoff
        elf.extend(0u32.to_le_bytes()); // flags
        for half in [64u16, 56, 0, 64, 0, 0] {
            elf.extend(half.to_le_bytes());
        }
        elf
    }

    #[test]
    fn static_and_machine() {
        let info = ElfInfo::parse(&minimal_elf(183)).unwrap();
        assert_eq!(info, ElfInfo { machine: 183, interpreter: None, libraries: vec![] });
        assert_eq!(check_static_elf(&minimal_elf(62), 62).unwrap().machine, 62);
        let err = check_static_elf(&minimal_elf(183), 62).unwrap_err().to_string();
        assert_eq!(err, "ELF machine 183 is not the expected 62");
        assert_eq!(check_static_elf(b"#!/bin/sh\n", 62).unwrap_err().to_string(), "not an ELF file");
        assert_eq!(
            (machine_name(62), machine_name(183), machine_name(3)),
            ("x86_64".into(), "aarch64".into(), "machine 3".into())
        );
    }

    #[test]
    fn a_dynamic_binary_names_its_loader_and_libraries() {
        let Ok(bytes) = std::fs::read("/bin/true") else { return };
        let info = ElfInfo::parse(&bytes).unwrap();
        assert!(info.interpreter.is_some() && !info.libraries.is_empty(), "{info:?}");
        let err = check_static_elf(&bytes, info.machine).unwrap_err().to_string();
        assert!(err.starts_with("dynamically linked: program interpreter /"), "{err}");
    }
}
