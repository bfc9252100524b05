//! Checks that a binary is a static ELF for the expected machine: no PT_INTERP, no DT_NEEDED.
//! (x86_64 musl binaries are static-pie: ET_DYN with a dynamic section, and that is fine.)

use anyhow::Context;

/// What [`check_static_elf`] found.
#[derive(Debug)]
pub struct StaticElf {
    /// ELF `e_machine`.
    pub machine: u16,
}

/// Fails unless `bytes` is an ELF for `machine` with no interpreter and no needed libraries.
pub fn check_static_elf(bytes: &[u8], machine: u16) -> anyhow::Result<StaticElf> {
    let elf = goblin::elf::Elf::parse(bytes).context("not an ELF file")?;
    if let Some(interp) = elf.interpreter {
        anyhow::bail!("dynamically linked: program interpreter {interp}");
    }
    if !elf.libraries.is_empty() {
        anyhow::bail!("needs shared libraries: {}", elf.libraries.join(", "));
    }
    if elf.header.e_machine != machine {
        anyhow::bail!("ELF machine {} is not the expected {machine}", elf.header.e_machine);
    }
    Ok(StaticElf { machine })
}
