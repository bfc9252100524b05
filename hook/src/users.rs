//! The app user and group, from `<root>/etc/passwd` and `<root>/etc/group` (a static binary has no
//! NSS), with `getent` as a fallback on the real root.

use std::{path::Path, process::Command};

use anyhow::{Context, format_err};

/// A resolved user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// The user's uid.
    pub uid: u32,
    /// The group's gid.
    pub gid: u32,
}

fn lookup_file(path: &Path, name: &str, id_field: usize) -> anyhow::Result<Option<u32>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&name) && fields.len() > id_field {
            let id =
                fields[id_field].parse().with_context(|| format!("{}: bad id for {name}", path.display()))?;
            return Ok(Some(id));
        }
    }
    Ok(None)
}

fn getent(database: &str, name: &str) -> Option<u32> {
    let out = Command::new("getent").args([database, name]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines().next()?.split(':').nth(2)?.parse().ok()
}

/// Resolves `user` and `group` under `root`; `getent` is asked only when `root` is `/`.
pub fn resolve(root: &Path, user: &str, group: &str) -> anyhow::Result<Ids> {
    let real_root = root == Path::new("/");
    let uid = match lookup_file(&root.join("etc/passwd"), user, 2)? {
        Some(uid) => uid,
        None if real_root => getent("passwd", user).ok_or_else(|| no_such("user", user))?,
        None => return Err(no_such("user", user)),
    };
    let gid = match lookup_file(&root.join("etc/group"), group, 2)? {
        Some(gid) => gid,
        None if real_root => getent("group", group).ok_or_else(|| no_such("group", group))?,
        None => return Err(no_such("group", group)),
    };
    Ok(Ids { uid, gid })
}

fn no_such(kind: &str, name: &str) -> anyhow::Error {
    let hint = if kind == "user" {
        format!("useradd --system --create-home --shell /usr/sbin/nologin {name}")
    } else {
        format!("groupadd --system {name}")
    };
    format_err!("the {kind} {name:?} does not exist on this instance (create it first: {hint})")
}
