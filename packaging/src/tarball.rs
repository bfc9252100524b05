//! A deterministic `.tar.gz` writer: sorted entries, fixed mtime, uid/gid 0 and owner `root`,
//! normalized modes, a gzip header with no name and no time, one gzip member.

use std::{
    fs,
    io::{self, Write},
    path::PathBuf,
};

use flate2::{Compression, GzBuilder};

/// Where an entry's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Rendered in memory.
    Bytes(Vec<u8>),
    /// Read from a file when written.
    File(PathBuf),
}

/// What an entry is.
#[derive(Debug, Clone)]
pub enum Content {
    /// A directory, mode 0755.
    Dir,
    /// A regular file with its (normalized) permission bits.
    File {
        /// 0o644 or 0o755.
        mode: u32,
        /// The bytes.
        source: Source,
    },
    /// A symlink, mode 0777.
    Symlink {
        /// The link text.
        target: String,
    },
}

/// One archive member.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Relative path, `/`-separated, no trailing `/`.
    pub path: String,
    /// Its content.
    pub content: Content,
}

/// Writes `entries`, sorted by path bytes (parents are added where missing), as a gzipped tar.
pub fn write_tgz(entries: &[Entry], mtime: u64, out: impl Write) -> io::Result<()> {
    let mut all: Vec<Entry> = entries.to_vec();
    let mut dirs = std::collections::BTreeSet::new();
    for entry in entries {
        let mut path = entry.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            dirs.insert(parent.to_owned());
            path = parent;
        }
    }
    for dir in dirs {
        if !all.iter().any(|e| e.path == dir) {
            all.push(Entry { path: dir, content: Content::Dir });
        }
    }
    all.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    if let Some(w) = all.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: two entries with one path", w[0].path),
        ));
    }

    let gz = GzBuilder::new().mtime(0).write(out, Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for entry in &all {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("root")?;
        header.set_groupname("root")?;
        match &entry.content {
            Content::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, format!("{}/", entry.path), io::empty())?;
            }
            Content::File { mode, source } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                match source {
                    Source::Bytes(bytes) => {
                        header.set_size(bytes.len() as u64);
                        tar.append_data(&mut header, &entry.path, bytes.as_slice())?;
                    }
                    Source::File(path) => {
                        let file = fs::File::open(path)?;
                        header.set_size(file.metadata()?.len());
                        tar.append_data(&mut header, &entry.path, file)?;
                    }
                }
            }
            Content::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)?;
            }
        }
    }
    let gz = tar.into_inner()?;
    let mut out = gz.finish()?;
    out.flush()
}
