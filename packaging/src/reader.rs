//! A safe reader for a revision: a `.tgz`/`.tar` archive read in memory (never extracted, never
//! following a link), or an extracted directory walked without following symlinks.
//!
//! It reports every problem as a [`Finding`] (path traversal, absolute paths, links that leave the
//! revision, devices, duplicates, a corrupt or truncated stream, a gzip bomb) and gives back a
//! view of the revision as the agent would unpack it, the single top-level directory stripped.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, BufReader, Read},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::Path,
    rc::Rc,
};

use appspec::diag::{Finding, Severity};
use sha2::{Digest, Sha256};

use crate::{hex, layout, manifest::link_stays_inside};

/// Caps that keep a hostile input from exhausting memory or disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of the expanded (decompressed) stream; more is a gzip bomb.
    pub max_expanded: u64,
    /// Number of entries.
    pub max_entries: usize,
    /// Bytes of one file.
    pub max_entry: u64,
    /// Bytes of file content kept in memory for the content checks.
    pub max_retained: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_expanded: 2 << 30, max_entries: 200_000, max_entry: 1 << 30, max_retained: 512 << 20 }
    }
}

/// What an entry of the revision is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (or a hard link to one inside the revision).
    File {
        /// Bytes.
        size: u64,
        /// sha256, lower-case hex.
        sha256: String,
        /// The content, when it was small enough to keep.
        data: Option<Vec<u8>>,
    },
    /// A directory, listed or implied by a deeper path.
    Dir,
    /// A symlink that stays inside the revision.
    Symlink {
        /// The link text.
        target: String,
    },
}

/// One entry of the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u32,
}

/// A revision as the agent would see it after unpacking.
#[derive(Debug, Default)]
pub struct Revision {
    /// Entries by path relative to the revision root (after stripping a top-level directory).
    pub items: BTreeMap<String, Item>,
    /// The top-level directory the agent strips, if any.
    pub stripped: Option<String>,
    /// Everything found wrong while reading.
    pub findings: Vec<Finding>,
}

/// The input cannot be read at all (as opposed to a revision with findings).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The input.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A zip or another format this reader does not take.
    #[error("{path}: {what}")]
    Unsupported {
        /// The input.
        path: String,
        /// What it looks like.
        what: String,
    },
}

/// A Read adapter that counts bytes, stops at a cap and remembers the inner stream's error.
struct Counting<R> {
    inner: R,
    count: u64,
    cap: u64,
    state: Rc<RefCell<StreamState>>,
}

#[derive(Debug, Default)]
struct StreamState {
    over_cap: bool,
    inner_error: Option<String>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.count >= self.cap {
            self.state.borrow_mut().over_cap = true;
            return Err(io::Error::other("expanded size cap reached"));
        }
        let room = usize::try_from(self.cap - self.count).unwrap_or(usize::MAX).min(buf.len());
        match self.inner.read(&mut buf[..room]) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.state.borrow_mut().inner_error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

struct Collector<'a> {
    name: String,
    limits: &'a Limits,
    findings: Vec<Finding>,
    /// Normalized path -> item, in archive order of first appearance.
    items: BTreeMap<String, Item>,
    /// Paths listed as symlinks, for the "through a symlink" check.
    symlinks: BTreeSet<String>,
    retained: u64,
    /// Entries owned by another uid or gid than 0, and the first of them.
    foreign_owners: usize,
    first_foreign_owner: Option<String>,
    /// Hashes file contents on another core while this one decompresses.
    hasher: HashPipe,
}

/// Bytes of file content per message to the hashing thread: many small files share one.
const BATCH: usize = 1 << 20;

/// Content for the hashing thread: `buf[..filled]`, where each offset in `ends` closes a file
/// and the bytes after the last one continue a file into the next batch.
struct Batch {
    buf: Vec<u8>,
    filled: usize,
    ends: Vec<usize>,
}

/// Hashes each file's content, in the order the files were read; the reader marks a file's
/// `sha256` as `#N` (the N-th file) until [`HashPipe::finish`] gives the hashes. Once more than
/// one batch of content has been read, a thread hashes while the reader inflates, so the two use
/// two cores; a revision whose content fits one batch is hashed at the end, on the reader's
/// thread, without starting one.
struct HashPipe {
    worker: Option<HashWorker>,
    batch: Batch,
    files: usize,
}

/// The hashing thread and its two channels: full batches in, emptied buffers back.
struct HashWorker {
    tx: std::sync::mpsc::SyncSender<Batch>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

/// The first batch's buffer; it doubles up to [`BATCH`] as content arrives.
const FIRST_BATCH: usize = 64 << 10;

/// Hashes a batch's files into `hashes`; the bytes after the last end continue in `hasher`.
fn hash_batch(hasher: &mut Sha256, hashes: &mut Vec<String>, batch: &Batch) {
    let mut start = 0;
    for &end in &batch.ends {
        hasher.update(&batch.buf[start..end]);
        hashes.push(hex(&hasher.finalize_reset()));
        start = end;
    }
    hasher.update(&batch.buf[start..batch.filled]);
}

impl HashPipe {
    fn start() -> HashPipe {
        HashPipe {
            worker: None,
            batch: Batch { buf: vec![0; FIRST_BATCH], filled: 0, ends: Vec::new() },
            files: 0,
        }
    }

    /// Room for content at the end of the batch, growing it or sending it off when full.
    fn room(&mut self) -> &mut [u8] {
        let len = self.batch.buf.len();
        if self.batch.filled == len {
            if len < BATCH {
                self.batch.buf.resize((len * 2).min(BATCH), 0);
            } else {
                self.flush();
            }
        }
        &mut self.batch.buf[self.batch.filled..]
    }

    /// Sends the batch to the hashing thread, starting it the first time.
    fn flush(&mut self) {
        let worker = self.worker.get_or_insert_with(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(4);
            let (free_tx, free) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let mut hashes = Vec::new();
                let mut hasher = Sha256::new();
                for batch in rx {
                    hash_batch(&mut hasher, &mut hashes, &batch);
                    // The reader may be gone already; the buffer is then dropped.
                    let _ = free_tx.send(batch.buf);
                }
                hashes
            });
            HashWorker { tx, free, thread }
        });
        let buf = worker.free.try_recv().unwrap_or_else(|_| vec![0; BATCH]);
        let full = std::mem::replace(&mut self.batch, Batch { buf, filled: 0, ends: Vec::new() });
        worker.tx.send(full).expect("the hashing thread outlives the reader");
    }

    /// Closes the current file; its hash will be the `index`-th.
    fn end_file(&mut self) -> usize {
        self.batch.ends.push(self.batch.filled);
        self.files += 1;
        self.files - 1
    }

    /// Every file's hash, in the order the files were read.
    fn finish(mut self) -> Vec<String> {
        if self.worker.is_none() {
            let mut hashes = Vec::with_capacity(self.files);
            hash_batch(&mut Sha256::new(), &mut hashes, &self.batch);
            return hashes;
        }
        self.flush();
        let HashWorker { tx, thread, .. } = self.worker.take().expect("started by flush");
        drop(tx);
        thread.join().expect("the hashing thread does not panic")
    }
}

fn err(file: &str, rule: &'static str, message: String, fix: &str) -> Finding {
    Finding::file(file, rule, Severity::Error, message, fix)
}

fn warn(file: &str, rule: &'static str, message: String, fix: &str) -> Finding {
    Finding::file(file, rule, Severity::Warning, message, fix)
}

/// The path made relative and normalized, or the finding that says why it cannot be.
fn normalize(raw: &[u8], shown: &str) -> Result<Option<String>, Box<Finding>> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(Box::new(err(
            shown,
            "archive.path-encoding",
            "the entry's path is not valid UTF-8".into(),
            "rename the file with a UTF-8 name",
        )));
    };
    if text.starts_with('/') {
        return Err(Box::new(
            err(
                shown,
                "archive.absolute-path",
                "an absolute path in the archive (GNU tar and unzip strip the `/`, other tools write to it)"
                    .into(),
                "store paths relative to the revision root",
            )
            .accepted(),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Box::new(err(
            shown,
            "archive.path-control",
            "the path holds a control character".into(),
            "rename the file",
        )));
    }
    let mut rest = text;
    while let Some(stripped) = rest.strip_prefix("./") {
        rest = stripped;
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest == "." {
        return Ok(None);
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.contains(&"..") {
        return Err(Box::new(err(
            shown,
            "archive.path-traversal",
            "the path has a `..` component and would land outside the revision".into(),
            "store paths inside the revision root, without `..`",
        )));
    }
    if parts.iter().any(|p| p.is_empty() || *p == ".") {
        return Err(Box::new(err(
            shown,
            "archive.path-not-normalized",
            "the path has empty or `.` components".into(),
            "store normalized paths like `dir/file`",
        )));
    }
    Ok(Some(rest.to_owned()))
}

fn normalize_link_target(target: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!target.starts_with('/') && !parts.is_empty()).then(|| parts.join("/"))
}

impl Collector<'_> {
    fn add(&mut self, path: String, item: Item, shown: &str) {
        // Each ancestor is one lookup: linear in the entries, whatever the number of symlinks.
        let mut ancestors = path.match_indices('/').map(|(i, _)| &path[..i]);
        if let Some(parent) = ancestors.find(|a| self.symlinks.contains(*a)) {
            self.findings.push(err(
                shown,
                "archive.symlink-parent",
                format!("the entry is written through the symlink {parent}: extracting it follows the link"),
                "do not ship a symlink and entries below it",
            ));
            return;
        }
        if let Some(prev) = self.items.get(&path) {
            let both_dirs = prev.kind == Kind::Dir && item.kind == Kind::Dir;
            if both_dirs {
                self.findings.push(warn(
                    shown,
                    "archive.duplicate-entry",
                    "the directory is listed twice".into(),
                    "list each directory once",
                ));
            } else {
                self.findings.push(err(
                    shown,
                    "archive.duplicate-entry",
                    "a second entry with this path: extraction keeps the last one, and a check of the first means nothing".into(),
                    "write each path once",
                ).accepted());
            }
        }
        if let Kind::Symlink { .. } = item.kind {
            self.symlinks.insert(path.clone());
        }
        self.items.insert(path, item);
    }

    fn check_mode(&mut self, shown: &str, mode: u32, uid: u64, gid: u64) {
        if mode & 0o6000 != 0 {
            self.findings.push(warn(
                shown,
                "archive.setuid",
                format!("mode {mode:04o} has the setuid or setgid bit, and the agent's `tar -p` keeps it"),
                "clear the setuid and setgid bits",
            ));
        }
        if mode & 0o002 != 0 {
            self.findings.push(warn(
                shown,
                "archive.world-writable",
                format!("mode {mode:04o} is world-writable"),
                "remove the o+w bit",
            ));
        }
        if uid != 0 || gid != 0 {
            // One finding for the archive, not one per entry.
            self.foreign_owners += 1;
            if self.first_foreign_owner.is_none() {
                self.first_foreign_owner = Some(format!("{shown} is {uid}:{gid}"));
            }
        }
    }

    /// Reads a file's content: size, and the bytes when they fit the retention cap; the hash is
    /// computed on the hashing thread and filled in by [`finish`].
    fn content(&mut self, reader: &mut dyn Read, size_hint: u64) -> io::Result<Kind> {
        let keep =
            size_hint <= self.limits.max_entry && self.retained + size_hint <= self.limits.max_retained;
        let mut data = if keep { Some(Vec::with_capacity(size_hint.min(1 << 20) as usize)) } else { None };
        let mut size = 0u64;
        let result = loop {
            let room = self.hasher.room();
            let n = match reader.read(room) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            };
            if let Some(data) = &mut data {
                data.extend_from_slice(&room[..n]);
            }
            self.hasher.batch.filled += n;
            size += n as u64;
        };
        // Every file read gets its end, so the thread's hashes stay in step with the files.
        let index = self.hasher.end_file();
        result?;
        if data.is_some() {
            self.retained += size;
        }
        Ok(Kind::File { size, sha256: format!("#{index}"), data })
    }

    fn symlink(&mut self, path: &str, target: &str, shown: &str) -> Option<Kind> {
        if target.starts_with('/') || !link_stays_inside(path, target) {
            self.findings.push(
                err(
                    shown,
                    "archive.symlink-escape",
                    format!("symlink to {target:?} points outside the revision"),
                    "make the link relative and inside the revision, or ship the file itself",
                )
                .accepted(),
            );
            return None;
        }
        Some(Kind::Symlink { target: target.to_owned() })
    }
}

/// Reads `path`: a directory, a `.tar` or a gzipped tar.
pub fn read(path: &Path, limits: &Limits) -> Result<Revision, ReadError> {
    let shown = path.display().to_string();
    let io_err = |source| ReadError::Io { path: shown.clone(), source };
    let meta = fs::metadata(path).map_err(io_err)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| shown.clone());
    let mut collector = Collector {
        name,
        limits,
        findings: Vec::new(),
        items: BTreeMap::new(),
        symlinks: BTreeSet::new(),
        retained: 0,
        foreign_owners: 0,
        first_foreign_owner: None,
        hasher: HashPipe::start(),
    };
    if meta.is_dir() {
        read_dir(path, &mut collector).map_err(io_err)?;
    } else {
        let mut file = fs::File::open(path).map_err(io_err)?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(io_err)?;
        drop(file);
        if n >= 2 && magic[..2] == [b'P', b'K'] {
            let file = BufReader::new(fs::File::open(path).map_err(io_err)?);
            let names = BufReader::new(fs::File::open(path).map_err(io_err)?);
            read_zip(file, names, &mut collector);
            return Ok(finish(collector));
        }
        let file = BufReader::new(fs::File::open(path).map_err(io_err)?);
        let gzip = n >= 2 && magic[..2] == [0x1f, 0x8b];
        let stream: Box<dyn Read> =
            if gzip { Box::new(flate2::read::MultiGzDecoder::new(file)) } else { Box::new(file) };
        read_tar(stream, gzip, &mut collector);
    }
    Ok(finish(collector))
}

fn read_tar(stream: Box<dyn Read>, gzip: bool, c: &mut Collector<'_>) {
    let state = Rc::new(RefCell::new(StreamState::default()));
    let counting = Counting { inner: stream, count: 0, cap: c.limits.max_expanded, state: state.clone() };
    // tar reads 512-byte headers: a large buffer keeps those small reads off the decoder.
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(128 * 1024, counting));
    let name = c.name.clone();
    let stream_failure = |state: &StreamState, e: &io::Error| -> Finding {
        if state.over_cap {
            err(
                &name,
                "archive.too-large",
                format!(
                    "the archive expands to more than {} bytes (a gzip bomb, or a revision far too large)",
                    c.limits.max_expanded
                ),
                "ship a smaller revision; raise --max-expanded only for an input you trust",
            )
        } else if let Some(inner) = &state.inner_error {
            let what = if gzip { "gzip" } else { "file" };
            err(
                &name,
                "archive.corrupt",
                format!("the {what} stream is corrupt or truncated: {inner}"),
                "rebuild and re-upload the archive",
            )
        } else {
            err(
                &name,
                "archive.corrupt",
                format!("the tar stream is corrupt or truncated: {e}"),
                "rebuild the archive with GNU tar or `cargo xtask bundle`",
            )
        }
    };
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            let f = stream_failure(&state.borrow(), &e);
            c.findings.push(f);
            return;
        }
    };
    let mut count = 0usize;
    let mut failed = false;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let f = stream_failure(&state.borrow(), &e);
                c.findings.push(f);
                failed = true;
                break;
            }
        };
        count += 1;
        if count > c.limits.max_entries {
            c.findings.push(err(
                &name,
                "archive.too-many-entries",
                format!("more than {} entries", c.limits.max_entries),
                "ship fewer files",
            ));
            failed = true;
            break;
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mut mode = header.mode().unwrap_or(0) & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let size = entry.size();
        let link = entry.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
        let path = match normalize(&raw, &shown) {
            Ok(Some(path)) => path,
            Ok(None) => {
                // The root directory itself: its owner and mode become the revision's.
                if kind.is_dir() {
                    c.check_mode(&shown, header.mode().unwrap_or(0) & 0o7777, uid, gid);
                }
                continue;
            }
            Err(f) => {
                c.findings.push(*f);
                continue;
            }
        };
        use tar::EntryType as T;
        if matches!(kind, T::Regular | T::Continuous | T::Directory) {
            // Link modes are meaningless (a symlink is 0777, a hard link shares its target's).
            c.check_mode(&shown, mode, uid, gid);
        }
        let item_kind = match kind {
            T::Regular | T::Continuous => {
                if size > c.limits.max_entry {
                    c.findings.push(err(
                        &shown,
                        "archive.entry-too-large",
                        format!("{size} bytes, over the {} byte cap for one file", c.limits.max_entry),
                        "ship smaller files",
                    ));
                    continue;
                }
                match c.content(&mut entry, size) {
                    Ok(kind) => kind,
                    Err(e) => {
                        let f = stream_failure(&state.borrow(), &e);
                        c.findings.push(f);
                        failed = true;
                        break;
                    }
                }
            }
            T::Directory => Kind::Dir,
            T::Symlink => match c.symlink(&path, link.as_deref().unwrap_or(""), &shown) {
                Some(kind) => kind,
                None => continue,
            },
            T::Link => {
                let target = link.unwrap_or_default();
                let resolved = normalize_link_target(&target);
                match resolved.as_ref().and_then(|t| c.items.get(t)) {
                    Some(item @ Item { kind: Kind::File { .. }, .. }) => {
                        // A hard link shares its target's inode, mode included.
                        mode = item.mode;
                        item.kind.clone()
                    }
                    _ => {
                        c.findings.push(err(
                            &shown,
                            "archive.hardlink-escape",
                            format!("hard link to {target:?}, which is not a file earlier in the revision"),
                            "ship a copy of the file instead of a hard link",
                        ));
                        continue;
                    }
                }
            }
            T::Char | T::Block => {
                c.findings.push(err(
                    &shown,
                    "archive.device",
                    "a device node: a revision holds only files, directories and symlinks".into(),
                    "remove the device node from the archive",
                ));
                continue;
            }
            T::Fifo => {
                c.findings.push(err(
                    &shown,
                    "archive.fifo",
                    "a named pipe (fifo): a revision holds only files, directories and symlinks".into(),
                    "remove the fifo from the archive",
                ));
                continue;
            }
            other => {
                c.findings.push(err(
                    &shown,
                    "archive.entry-type",
                    format!("entry type {:?} is not a file, directory or symlink", other.as_byte() as char),
                    "rebuild the archive with plain files",
                ));
                continue;
            }
        };
        c.add(path, Item { kind: item_kind, mode }, &shown);
    }
    if !failed {
        // Read to the end so the gzip trailer (CRC and length) is checked too.
        let mut rest = archive.into_inner();
        if let Err(e) = io::copy(&mut rest, &mut io::sink()) {
            let f = stream_failure(&state.borrow(), &e);
            c.findings.push(f);
        }
    }
}

/// What a zip entry's Unix mode (external attributes, high half) says it is.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Reads a zip as the agent's `unzip -qo` extracts it: the central directory decides what
/// exists, a repeated name keeps the last entry, a Unix mode with S_IFLNK is a symlink whose
/// content is its target, setuid, setgid and sticky bits are dropped (unzip keeps them only with
/// -K), and entries without a Unix mode get 0644 (0755 for directories).
fn read_zip<R: Read + io::Seek>(file: R, names: R, c: &mut Collector<'_>) {
    let name = c.name.clone();
    let corrupt = |what: String| {
        err(
            &name,
            "archive.corrupt",
            format!("the zip archive is corrupt or truncated: {what}"),
            "rebuild and re-upload the archive",
        )
    };
    let mut archive = match zip::ZipArchive::new(file) {
        Ok(archive) => archive,
        Err(e) => {
            c.findings.push(corrupt(e.to_string()));
            return;
        }
    };
    if archive.len() > c.limits.max_entries {
        c.findings.push(err(
            &name,
            "archive.too-many-entries",
            format!("more than {} entries", c.limits.max_entries),
            "ship fewer files",
        ));
        return;
    }
    if archive.has_duplicate_names() {
        // The crate keeps the last of a repeated name, as unzip -o does; say which repeat.
        let listed = central_directory_names(names, archive.central_directory_start(), c.limits.max_entries)
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        for raw in listed {
            let shown = String::from_utf8_lossy(&raw).into_owned();
            if !seen.insert(raw.clone()) {
                c.findings.push(if raw.ends_with(b"/") {
                    warn(&shown, "archive.duplicate-entry", "the directory is listed twice".into(), "list each directory once")
                } else {
                    err(
                        &shown,
                        "archive.duplicate-entry",
                        "a second entry with this path: extraction keeps the last one, and a check of the first means nothing".into(),
                        "write each path once",
                    )
                    .accepted()
                });
            }
        }
    }
    let mut expanded = 0u64;
    for index in 0..archive.len() {
        if let Ok(meta) = archive.by_index_data(index)
            && meta.encrypted()
        {
            let shown = String::from_utf8_lossy(meta.name_raw()).into_owned();
            c.findings.push(err(
                &shown,
                "archive.zip-encrypted",
                "an encrypted entry: the agent's unzip has no password, so the revision does not unpack"
                    .into(),
                "ship the zip without encryption",
            ));
            continue;
        }
        let mut entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(e) => {
                c.findings.push(corrupt(e.to_string()));
                return;
            }
        };
        let raw = entry.name_raw().to_vec();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        if raw.contains(&b'\\') {
            c.findings.push(err(
                &shown,
                "archive.zip-backslash",
                "the name holds a backslash: unzip reads it as a path separator and warns, and the agent then unpacks the archive again with rubyzip, which does not".into(),
                "build the zip with `/` separators (zip, Python's zipfile, aws deploy push)",
            ));
            continue;
        }
        let unix = entry.unix_mode();
        let by_name_dir = raw.ends_with(b"/");
        let kind_bits = unix.map(|m| m & S_IFMT).filter(|k| *k != 0);
        let path = match normalize(&raw, &shown) {
            Ok(Some(path)) => path,
            Ok(None) => continue,
            Err(f) => {
                c.findings.push(*f);
                continue;
            }
        };
        let is_dir = by_name_dir || kind_bits == Some(S_IFDIR);
        let mode = match unix {
            Some(m) => m & 0o777,
            None if is_dir => 0o755,
            None => 0o644,
        };
        if !is_dir && !matches!(kind_bits, None | Some(S_IFREG) | Some(S_IFLNK)) {
            c.findings.push(err(
                &shown,
                "archive.device",
                format!("the entry's Unix mode {:o} is not a file, directory or symlink", unix.unwrap_or(0)),
                "remove it from the archive",
            ));
            continue;
        }
        if mode & 0o002 != 0 && kind_bits != Some(S_IFLNK) {
            c.check_mode(&shown, mode, 0, 0);
        }
        let size = entry.size();
        if !is_dir && size > c.limits.max_entry {
            c.findings.push(err(
                &shown,
                "archive.entry-too-large",
                format!("{size} bytes, over the {} byte cap for one file", c.limits.max_entry),
                "ship smaller files",
            ));
            continue;
        }
        if !is_dir && expanded.saturating_add(size) > c.limits.max_expanded {
            c.findings.push(too_large(&name, c.limits));
            return;
        }
        let item_kind = if is_dir {
            Kind::Dir
        } else if kind_bits == Some(S_IFLNK) {
            let mut target = Vec::new();
            if let Err(e) = (&mut entry).take(4096).read_to_end(&mut target) {
                c.findings.push(corrupt(format!("{shown}: {e}")));
                return;
            }
            expanded += target.len() as u64;
            match c.symlink(&path, &String::from_utf8_lossy(&target), &shown) {
                Some(kind) => kind,
                None => continue,
            }
        } else {
            if !matches!(
                entry.compression(),
                zip::CompressionMethod::Stored | zip::CompressionMethod::Deflated
            ) {
                c.findings.push(err(
                    &shown,
                    "archive.zip-method",
                    format!("compression method {:?}: the agent's rubyzip fallback reads only stored and deflated entries, and this check cannot read it either", entry.compression()),
                    "build the zip with deflate (zip, Python's zipfile and aws deploy push do)",
                ));
                continue;
            }
            // The declared size can lie: never read more than it, plus one byte to notice.
            let room = c.limits.max_expanded - expanded;
            let mut capped = (&mut entry).take(size.min(room) + 1);
            match c.content(&mut capped, size) {
                Ok(kind) => {
                    if let Kind::File { size: got, .. } = kind
                        && got != size
                    {
                        c.findings.push(corrupt(format!("{shown}: {got} bytes, the header says {size}")));
                        return;
                    }
                    expanded += size;
                    kind
                }
                Err(e) => {
                    c.findings.push(corrupt(format!("{shown}: {e}")));
                    return;
                }
            }
        };
        c.add(path, Item { kind: item_kind, mode }, &shown);
    }
}

/// The names in the central directory, in order, repeats included (the zip crate's index keeps
/// one entry per name). Each central file header is 46 fixed bytes (signature 0x02014b50, the
/// name's length at 28, the extra field's at 30, the comment's at 32), then those three fields.
fn central_directory_names<R: Read + io::Seek>(
    mut reader: R,
    start: u64,
    cap: usize,
) -> io::Result<Vec<Vec<u8>>> {
    reader.seek(io::SeekFrom::Start(start))?;
    let mut names = Vec::new();
    let mut header = [0u8; 46];
    while names.len() <= cap {
        if reader.read_exact(&mut header).is_err() || header[..4] != [0x50, 0x4b, 0x01, 0x02] {
            break;
        }
        let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let mut name = vec![0u8; usize::from(field(28))];
        reader.read_exact(&mut name)?;
        reader.seek(io::SeekFrom::Current(i64::from(field(30)) + i64::from(field(32))))?;
        names.push(name);
    }
    Ok(names)
}

fn too_large(name: &str, limits: &Limits) -> Finding {
    err(
        name,
        "archive.too-large",
        format!(
            "the archive expands to more than {} bytes (a zip or gzip bomb, or a revision far too large)",
            limits.max_expanded
        ),
        "ship a smaller revision; raise --max-expanded only for an input you trust",
    )
}

fn read_dir(root: &Path, c: &mut Collector<'_>) -> io::Result<()> {
    let mut stack = vec![String::new()];
    let mut count = 0usize;
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() { root.to_path_buf() } else { root.join(&dir) };
        let mut names: Vec<_> = fs::read_dir(&abs)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for item in names {
            count += 1;
            if count > c.limits.max_entries {
                c.findings.push(err(
                    &c.name.clone(),
                    "archive.too-many-entries",
                    format!("more than {} entries", c.limits.max_entries),
                    "ship fewer files",
                ));
                return Ok(());
            }
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                let shown = format!("{dir}/{}", name.to_string_lossy());
                c.findings.push(err(
                    &shown,
                    "archive.path-encoding",
                    "the path is not valid UTF-8".into(),
                    "rename the file with a UTF-8 name",
                ));
                continue;
            };
            let rel = if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") };
            let meta = fs::symlink_metadata(item.path())?;
            let ty = meta.file_type();
            let mode = meta.mode() & 0o7777;
            let kind = if ty.is_dir() {
                stack.push(rel.clone());
                Kind::Dir
            } else if ty.is_symlink() {
                let target = fs::read_link(item.path())?;
                match c.symlink(&rel, &target.to_string_lossy(), &rel) {
                    Some(kind) => kind,
                    None => continue,
                }
            } else if ty.is_file() {
                if meta.len() > c.limits.max_entry {
                    c.findings.push(err(
                        &rel,
                        "archive.entry-too-large",
                        format!(
                            "{} bytes, over the {} byte cap for one file",
                            meta.len(),
                            c.limits.max_entry
                        ),
                        "ship smaller files",
                    ));
                    continue;
                }
                let mut file = fs::File::open(item.path())?;
                c.content(&mut file, meta.len())?
            } else {
                let (rule, what) = if ty.is_fifo() {
                    ("archive.fifo", "a named pipe (fifo)")
                } else if ty.is_block_device() || ty.is_char_device() {
                    ("archive.device", "a device node")
                } else {
                    ("archive.entry-type", "a socket or special file")
                };
                c.findings.push(err(
                    &rel,
                    rule,
                    format!("{what}: a revision holds only files, directories and symlinks"),
                    "remove it",
                ));
                continue;
            };
            if mode & 0o6000 != 0 && !ty.is_dir() {
                c.check_mode(&rel, mode, 0, 0);
            }
            c.add(rel, Item { kind, mode }, &item.path().display().to_string());
        }
    }
    Ok(())
}

const NOT_FOUND: &str = "The CodeDeploy agent did not find an AppSpec file within the unpacked revision directory at revision-relative path \"appspec.yml\". The revision was unpacked to directory \"<deployment-archive>\", and the AppSpec file was expected but not found at path \"<deployment-archive>/appspec.yml\". Consult the AWS CodeDeploy Appspec documentation for more information at http://docs.aws.amazon.com/codedeploy/latest/userguide/reference-appspec-file.html";

/// Adds implied directories, applies the agent's top-level directory stripping and checks the
/// layout.
fn finish(c: Collector<'_>) -> Revision {
    let Collector { name, mut findings, mut items, foreign_owners, first_foreign_owner, hasher, .. } = c;
    let hashes = hasher.finish();
    for item in items.values_mut() {
        if let Kind::File { sha256, .. } = &mut item.kind
            && let Some(index) = sha256.strip_prefix('#').and_then(|i| i.parse::<usize>().ok())
        {
            sha256.clone_from(&hashes[index]);
        }
    }
    if let Some(first) = first_foreign_owner {
        findings.push(warn(
            &name,
            "archive.owner",
            format!(
                "{foreign_owners} entries are not owned by root ({first}): the agent extracts as root and keeps these ids"
            ),
            "build the archive with owner 0:0 (tar --owner=0 --group=0 --numeric-owner)",
        ));
    }
    let paths: Vec<String> = items.keys().cloned().collect();
    for path in paths {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            items.entry(parent.to_owned()).or_insert(Item { kind: Kind::Dir, mode: 0o755 });
            p = parent;
        }
    }
    for (path, item) in &items {
        if item.kind == Kind::Dir {
            continue;
        }
        let prefix = format!("{path}/");
        if let Some((below, _)) = items.range(prefix.clone()..).next().filter(|(k, _)| k.starts_with(&prefix))
        {
            findings.push(err(
                below,
                "archive.path-conflict",
                format!("{path} is not a directory, so {below} cannot be extracted"),
                "ship either the file or the directory of that name",
            ));
        }
    }
    let top: BTreeSet<&str> = items.keys().map(|k| k.split('/').next().unwrap_or(k)).collect();
    let mut stripped = None;
    if top.len() == 1 {
        let only = top.iter().next().expect("one").to_string();
        let is_dir = items.get(&only).is_some_and(|i| i.kind == Kind::Dir);
        let prefix = format!("{only}/");
        let has_appspec = items.keys().any(|k| {
            k.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/') && rest.to_ascii_lowercase().contains("appspec"))
        });
        if is_dir && has_appspec {
            stripped = Some(only);
        }
    }
    if let Some(dir) = &stripped {
        let prefix = format!("{dir}/");
        items = items
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|rest| (rest.to_owned(), v)))
            .collect();
    }
    let appspec = items.get(layout::APPSPEC);
    match appspec {
        Some(Item { kind: Kind::File { .. } | Kind::Symlink { .. }, .. }) => {}
        Some(_) => findings.push(err(
            layout::APPSPEC,
            "archive.appspec-missing",
            "appspec.yml is a directory".into(),
            "make appspec.yml a file",
        )),
        None => {
            let nested: Vec<&String> = items.keys().filter(|k| k.ends_with("/appspec.yml")).collect();
            let other_case = items.keys().find(|k| {
                !k.contains('/')
                    && (k.eq_ignore_ascii_case("appspec.yml") || k.eq_ignore_ascii_case("appspec.yaml"))
            });
            let fix = if let Some(other) = other_case {
                format!("rename {other} to appspec.yml: the agent reads only that name, case-sensitively")
            } else if let Some(path) = nested.first() {
                format!(
                    "put appspec.yml at the archive root (it is at {path}), or leave its directory alone at the top level"
                )
            } else {
                "add appspec.yml at the archive root".to_owned()
            };
            let rule = if nested.is_empty() { "archive.appspec-missing" } else { "archive.layout" };
            findings.push(err(&name, rule, NOT_FOUND.into(), &fix));
        }
    }
    Revision { items, stripped, findings }
}

impl Revision {
    /// Follows symlinks inside the revision to the item at `path` (a path relative to the root,
    /// a leading `/` allowed as the agent's `File.join` allows it).
    pub fn resolve(&self, path: &str) -> Option<(String, &Item)> {
        let mut current: Vec<String> = Vec::new();
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    current.pop()?;
                    continue;
                }
                _ => {}
            }
            current.push(part);
            let joined = current.join("/");
            let item = self.items.get(&joined)?;
            if let Kind::Symlink { target } = &item.kind {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                current.pop();
                for p in target.split('/').rev() {
                    pending.push(p.to_owned());
                }
            }
        }
        let joined = current.join("/");
        if joined.is_empty() {
            return None;
        }
        self.items.get(&joined).map(|item| (joined, item))
    }

    /// The bytes of a file (following symlinks), when they were kept.
    pub fn data(&self, path: &str) -> Option<&[u8]> {
        match self.resolve(path) {
            Some((_, Item { kind: Kind::File { data: Some(data), .. }, .. })) => Some(data),
            _ => None,
        }
    }

    /// True when some finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(b"./a/b", "x").unwrap(), Some("a/b".into()));
        assert_eq!(normalize(b"./", "x").unwrap(), None);
        assert_eq!(normalize(b"dir/", "x").unwrap(), Some("dir".into()));
        assert_eq!(normalize(b"a/../../b", "x").unwrap_err().rule, "archive.path-traversal");
        assert_eq!(normalize(b"/etc/passwd", "x").unwrap_err().rule, "archive.absolute-path");
        assert_eq!(normalize(b"a//b", "x").unwrap_err().rule, "archive.path-not-normalized");
        assert_eq!(normalize(b"a\xff", "x").unwrap_err().rule, "archive.path-encoding");
    }

    /// Feeds files through the pipe in reads of an odd size, as `content` does, and compares
    /// each hash with one computed directly.
    fn hashes_through_pipe(sizes: &[usize]) -> (Vec<String>, Vec<String>, bool) {
        let mut pipe = HashPipe::start();
        let mut expected = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let content: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
            expected.push(hex(&Sha256::digest(&content)));
            let mut rest = &content[..];
            while !rest.is_empty() {
                let room = pipe.room();
                let n = room.len().min(rest.len()).min(9_973);
                room[..n].copy_from_slice(&rest[..n]);
                pipe.batch.filled += n;
                rest = &rest[n..];
            }
            assert_eq!(pipe.end_file(), i);
        }
        let threaded = pipe.worker.is_some();
        (pipe.finish(), expected, threaded)
    }

    #[test]
    fn small_revisions_are_hashed_without_a_thread() {
        let (got, expected, threaded) = hashes_through_pipe(&[0, 1, 5_000, 0, 70_000, 300_000]);
        assert!(!threaded);
        assert_eq!(got, expected);
    }

    #[test]
    fn files_across_batches_are_hashed_on_the_thread() {
        let sizes = [BATCH - 1, 1, 0, 3 * BATCH + 7, 17, BATCH, 2];
        let (got, expected, threaded) = hashes_through_pipe(&sizes);
        assert!(threaded);
        assert_eq!(got, expected);
    }

    #[test]
    fn link_targets() {
        assert_eq!(normalize_link_target("a/../b"), Some("b".into()));
        assert_eq!(normalize_link_target("../b"), None);
        assert_eq!(normalize_link_target("/etc/passwd"), None);
    }
}
