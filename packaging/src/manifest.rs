//! `deploy/MANIFEST`: one line per file of the revision (path, mode, size, sha256), sorted by
//! path bytes. The revision id is derived from its bytes, so equal content means equal id.

use std::{
    fs,
    io::{self, Read},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use sha2::{Digest, Sha256};

use crate::{hex, layout};

/// The first line of every manifest.
const HEADER: &str = "# deploy MANIFEST v1: sha256 mode size path";

/// One file of the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative path, `/`-separated.
    pub path: String,
    /// `st_mode` with the type bits: `0o100644`, `0o100755` or `0o120777` for a symlink.
    pub mode: u32,
    /// Bytes of content (for a symlink, of its target text).
    pub size: u64,
    /// sha256 of the content (for a symlink, of its target text), lower-case hex.
    pub sha256: String,
}

/// The manifest of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Entries sorted by path bytes.
    pub entries: Vec<ManifestEntry>,
    /// The version of the uv at `bin/uv`, when the revision carries one: the second line,
    /// `# bin/uv: uv <version>`.
    pub uv_version: Option<String>,
}

/// The second line's prefix when the revision carries uv.
const UV_LINE: &str = "# bin/uv: uv ";

/// A uv version as its wheels spell it: digits and dots, with an optional pre-release part
/// (`0.13.9`, `0.5.0rc1`).
pub fn is_uv_version(version: &str) -> bool {
    version.len() <= 32
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b.is_ascii_lowercase())
}

/// A manifest that cannot be parsed, or a tree that does not match it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A line that does not parse.
    #[error("{MANIFEST}:{line}: {message}", MANIFEST = layout::MANIFEST)]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file differs from its entry.
    #[error("{path}: {message}")]
    Mismatch {
        /// The file, relative to the revision root.
        path: String,
        /// What differs.
        message: String,
    },
    /// The tree cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// Mode of a regular file.
pub const FILE: u32 = 0o100644;
/// Mode of an executable.
pub const EXECUTABLE: u32 = 0o100755;
/// Mode of a symlink.
pub const SYMLINK: u32 = 0o120777;

/// sha256 of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io { path: path.display().to_string(), source }
}

/// sha256 and size of a file, read in blocks.
pub fn hash_file(path: &Path) -> Result<(String, u64), ManifestError> {
    let mut file = fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex(&hasher.finalize()), size))
}

/// True for a path we accept in a manifest: relative, normalized, UTF-8, no control characters.
pub fn is_clean_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.chars().any(|c| c.is_control())
        && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
}

impl Manifest {
    /// Adds an entry; call [`Manifest::sort`] before rendering.
    pub fn push(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entries.push(ManifestEntry {
            path: path.to_owned(),
            mode,
            size: data.len() as u64,
            sha256: sha256_hex(data),
        });
    }

    /// Sorts entries by path bytes.
    pub fn sort(&mut self) {
        self.entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    }

    /// The manifest's text.
    pub fn render(&self) -> String {
        let mut out = String::from(HEADER);
        out.push('\n');
        if let Some(version) = &self.uv_version {
            out.push_str(&format!("{UV_LINE}{version}\n"));
        }
        for e in &self.entries {
            out.push_str(&format!("{} {:06o} {} {}\n", e.sha256, e.mode, e.size, e.path));
        }
        out
    }

    /// The revision id: `r-` and the first 16 hex digits of the manifest's sha256.
    pub fn revision_id(text: &str) -> String {
        format!("r-{}", &sha256_hex(text.as_bytes())[..16])
    }

    /// Parses a manifest's text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut entries: Vec<ManifestEntry> = Vec::new();
        let mut uv_version = None;
        for (idx, line) in text.lines().enumerate() {
            let line_no = idx + 1;
            let err = |message: String| ManifestError::Syntax { line: line_no, message };
            if idx == 0 {
                if line != HEADER {
                    return Err(err(format!("expected the header {HEADER:?}")));
                }
                continue;
            }
            if idx == 1
                && let Some(version) = line.strip_prefix(UV_LINE)
            {
                if !is_uv_version(version) {
                    return Err(err(format!("{version:?} is not a uv version")));
                }
                uv_version = Some(version.to_owned());
                continue;
            }
            let mut parts = line.splitn(4, ' ');
            let (Some(sha), Some(mode), Some(size), Some(path)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(err("expected: sha256 mode size path".into()));
            };
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return Err(err(format!("{sha:?} is not a sha256")));
            }
            let mode =
                u32::from_str_radix(mode, 8).map_err(|_| err(format!("{mode:?} is not an octal mode")))?;
            if ![FILE, EXECUTABLE, SYMLINK].contains(&mode) {
                return Err(err(format!("mode {mode:06o} is not 100644, 100755 or 120777")));
            }
            let size = size.parse().map_err(|_| err(format!("{size:?} is not a size")))?;
            if !is_clean_path(path) {
                return Err(err(format!("{path:?} is not a clean relative path")));
            }
            if let Some(prev) = entries.last()
                && prev.path.as_bytes() >= path.as_bytes()
            {
                return Err(err(format!("{path:?} is out of order or repeated")));
            }
            entries.push(ManifestEntry { path: path.to_owned(), mode, size, sha256: sha.to_owned() });
        }
        if entries.is_empty() {
            return Err(ManifestError::Syntax { line: 1, message: "the manifest lists no file".into() });
        }
        if uv_version.is_some() && !entries.iter().any(|e| e.path == layout::UV) {
            return Err(ManifestError::Syntax {
                line: 2,
                message: format!("names a uv version but lists no {}", layout::UV),
            });
        }
        Ok(Manifest { entries, uv_version })
    }

    /// Checks every file under `root` against the manifest, and that no other file is there
    /// (the manifest itself excepted). Symlinks are compared, never followed.
    pub fn verify_tree(&self, root: &Path) -> Result<(), ManifestError> {
        for entry in &self.entries {
            let path = root.join(&entry.path);
            let mismatch = |message: String| ManifestError::Mismatch { path: entry.path.clone(), message };
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(mismatch("listed in the manifest but missing".into()));
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            let (sha, size) = if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(io_err(&path))?;
                let target = target.as_os_str().as_encoded_bytes().to_vec();
                (sha256_hex(&target), target.len() as u64)
            } else if meta.file_type().is_file() {
                hash_file(&path)?
            } else {
                return Err(mismatch("is neither a regular file nor a symlink".into()));
            };
            let mode = if meta.file_type().is_symlink() { SYMLINK } else { meta.mode() & 0o177777 };
            // Only the executable bit and the type count: tar and umask may vary the rest.
            let kind = |m: u32| (m & 0o170000, m & 0o100 != 0);
            if kind(mode) != kind(entry.mode) {
                return Err(mismatch(format!("mode {mode:06o}, the manifest says {:06o}", entry.mode)));
            }
            if size != entry.size {
                return Err(mismatch(format!("size {size}, the manifest says {}", entry.size)));
            }
            if sha != entry.sha256 {
                return Err(mismatch(format!("sha256 {sha}, the manifest says {}", entry.sha256)));
            }
        }
        let listed: std::collections::HashSet<&str> = self.entries.iter().map(|e| e.path.as_str()).collect();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let abs = if dir.is_empty() { root.to_path_buf() } else { root.join(&dir) };
            for item in fs::read_dir(&abs).map_err(io_err(&abs))? {
                let item = item.map_err(io_err(&abs))?;
                let name = item.file_name();
                let name = name.to_string_lossy();
                let rel = if dir.is_empty() { name.into_owned() } else { format!("{dir}/{name}") };
                let ty = item.file_type().map_err(io_err(&abs))?;
                if ty.is_dir() {
                    stack.push(rel);
                } else if rel != layout::MANIFEST && !listed.contains(rel.as_str()) {
                    return Err(ManifestError::Mismatch {
                        path: rel,
                        message: "is not in the manifest".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// True when a relative symlink at `link` (relative to the tree root) resolves inside the tree.
pub fn link_stays_inside(link: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth: Vec<&str> = link.split('/').collect();
    depth.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            name => depth.push(name),
        }
    }
    true
}

/// The mode a bundle gives a file: 0755 when any execute bit is set, else 0644.
pub fn normalized_mode(permissions: &fs::Permissions) -> u32 {
    if permissions.mode() & 0o111 != 0 { EXECUTABLE } else { FILE }
}

#[cfg(test)]
mod tests;
