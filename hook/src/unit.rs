//! The systemd unit: installing it into `/etc/systemd/system` from bytes root trusts (the
//! archive, or the root-owned copy of an older release), and what the hook reads from it.

use anyhow::{Context, bail};

use crate::{
    fsx,
    service::Service,
    store::write_atomic,
    util::{Log, failpoint},
};

/// Installs `wanted` as the unit file, and `socket` as its socket unit, when their bytes
/// differ, then reloads systemd; reloads too when systemd's loaded units differ from the files
/// (`NeedDaemonReload`) or an earlier run wrote a unit and died or failed before its reload.
/// Returns whether either file changed.
pub fn install(service: &Service, wanted: &[u8], socket: Option<&[u8]>, log: &Log) -> anyhow::Result<bool> {
    let dest = &service.unit_file;
    let dest_dir = dest.parent().context("a unit file has a directory")?;
    std::fs::create_dir_all(dest_dir).with_context(|| format!("cannot create {}", dest_dir.display()))?;
    let unit_same = fsx::read_trusted(dest, 1 << 20).ok().as_deref() == Some(wanted);
    let socket_same = match socket {
        Some(bytes) if service.socket_activation => {
            fsx::read_trusted(&service.socket_file, 1 << 20).ok().as_deref() == Some(bytes)
        }
        _ => true,
    };
    let owed = service.needs_reload()?;
    if unit_same && socket_same && !owed {
        return Ok(false);
    }
    // Recorded before the first write, cleared after the reload: a kill in between is redone.
    service.mark_reload_pending(true)?;
    if let Some(bytes) = socket {
        service.install_socket(bytes, log)?;
    }
    if !unit_same {
        write_atomic(dest, wanted, 0o644)?;
        log.info(format!("installed {}", dest.display()));
    }
    failpoint("unit: written");
    if owed && unit_same && socket_same {
        log.info(format!(
            "systemd's loaded {} differs from its file (an earlier reload failed or was cut short): reloading",
            service.unit
        ));
    }
    service.daemon_reload(log)?;
    service.mark_reload_pending(false)?;
    Ok(!(unit_same && socket_same))
}

/// The module of the service's ASGI app: the part before `:` of ExecStart's last word.
pub fn asgi_module(unit_text: &str) -> anyhow::Result<String> {
    let exec = packaging::unit_file::exec_start(unit_text).unwrap_or_default();
    match exec.last().and_then(|last| last.split_once(':')) {
        Some((module, _)) if !module.is_empty() => Ok(module.to_owned()),
        _ => bail!("cannot find the ASGI app (MODULE:ATTRIBUTE) at the end of the unit's ExecStart"),
    }
}
