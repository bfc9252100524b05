//! The systemd unit: installing it into `/etc/systemd/system` from bytes root trusts (the
//! archive, or the root-owned copy of an older release), and what the hook reads from it.

use anyhow::{Context, bail};

use crate::{fsx, process::UnitSpec, service::Service, store::write_atomic, util::Log};

/// Installs `wanted` as the unit file, and `socket` as its socket unit, when their bytes
/// differ, then reloads systemd. Returns whether either changed.
pub fn install(service: &Service, wanted: &[u8], socket: Option<&[u8]>, log: &Log) -> anyhow::Result<bool> {
    let dest = &service.unit_file;
    let dest_dir = dest.parent().context("a unit file has a directory")?;
    std::fs::create_dir_all(dest_dir).with_context(|| format!("cannot create {}", dest_dir.display()))?;
    let socket_changed = match socket {
        Some(bytes) => service.install_socket(bytes, log)?,
        None => false,
    };
    if fsx::read_trusted(dest, 1 << 20).ok().as_deref() == Some(wanted) {
        if socket_changed {
            service.daemon_reload(log)?;
        }
        return Ok(socket_changed);
    }
    write_atomic(dest, wanted, 0o644)?;
    log.info(format!("installed {}", dest.display()));
    service.daemon_reload(log)?;
    Ok(true)
}

/// The module of the service's ASGI app: the part before `:` of ExecStart's last word.
pub fn asgi_module(unit_text: &str) -> anyhow::Result<String> {
    let spec = UnitSpec::parse(unit_text);
    match spec.exec.last().and_then(|last| last.split_once(':')) {
        Some((module, _)) if !module.is_empty() => Ok(module.to_owned()),
        _ => bail!("cannot find the ASGI app (MODULE:ATTRIBUTE) at the end of the unit's ExecStart"),
    }
}
