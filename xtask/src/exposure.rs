//! A unit's exposure as `systemd-analyze security --offline=true` rates it (0 best, 10 worst).

use std::process::Command;

/// Rates `text` as the unit `unit_name`; None when systemd-analyze is missing or says nothing.
pub fn of_unit(unit_name: &str, text: &str) -> Option<f64> {
    let tool = crate::find_in_path("systemd-analyze")?;
    let dir = tempfile::tempdir().ok()?;
    let unit = dir.path().join(unit_name);
    std::fs::write(&unit, text).ok()?;
    let out =
        Command::new(tool).args(["security", "--offline=true", "--no-pager"]).arg(&unit).output().ok()?;
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// The number in `→ Overall exposure level for NAME: 1.3 OK`.
pub fn parse(output: &str) -> Option<f64> {
    output.lines().find_map(|l| {
        l.split_once("Overall exposure level for ")?.1.split_once(": ")?.1.split(' ').next()?.parse().ok()
    })
}
