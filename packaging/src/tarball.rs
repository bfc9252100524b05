//! A deterministic `.tar.gz` writer: sorted entries, fixed mtime, uid/gid 0 and owner `root`,
//! normalized modes, a gzip header with no name and no time, one gzip member.
//!
//! Compression runs in parallel with a layout that does not depend on the thread count: the tar
//! stream is cut into [`CHUNK`]-byte pieces, each deflated on its own (primed with the previous
//! piece's last 32 KiB as a dictionary, ended by a sync flush, the last one by the final block),
//! and the pieces are written in order between one gzip header and one CRC/size trailer, as pigz
//! does. So the bytes are the same on 1 or 64 cores, and every gzip reader sees one member.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::PathBuf,
    sync::mpsc,
};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Bytes of tar stream per independently compressed piece. Fixed: part of the output format.
pub const CHUNK: usize = 1 << 20;
/// The deflate window: each piece is primed with this much of the previous one.
const DICT: usize = 32 << 10;
/// gzip -6, the level `tar -czf` uses.
const LEVEL: u32 = 6;

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
pub fn write_tgz(entries: &[Entry], mtime: u64, out: impl Write + Send) -> io::Result<()> {
    // References, not copies: the entries may hold the whole source tree in memory.
    let mut all: Vec<&Entry> = entries.iter().collect();
    let present: std::collections::HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut dirs = std::collections::BTreeSet::new();
    for entry in entries {
        let mut path = entry.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if !present.contains(parent) {
                dirs.insert(parent.to_owned());
            }
            path = parent;
        }
    }
    let dirs: Vec<Entry> = dirs.into_iter().map(|path| Entry { path, content: Content::Dir }).collect();
    all.extend(&dirs);
    all.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    if let Some(w) = all.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: two entries with one path", w[0].path),
        ));
    }

    std::thread::scope(|scope| {
        let gz = ParallelGz::start(scope, out);
        write_tar(&all, mtime, gz)
    })
}

fn write_tar<W: Write + Send>(all: &[&Entry], mtime: u64, gz: ParallelGz<'_, W>) -> io::Result<()> {
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for entry in all {
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
    gz.finish()
}

/// One piece of the tar stream to compress: its index, its bytes, the previous piece's tail.
struct Job {
    index: usize,
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
}

/// A compressed piece: raw deflate ending on a byte boundary, and its input's CRC and length.
struct Done {
    index: usize,
    last: bool,
    deflated: io::Result<Vec<u8>>,
    crc: Crc,
}

/// The writer side of the parallel compressor: buffers the tar stream into pieces and hands
/// them to the workers; a writer thread puts the results in order into the output.
struct ParallelGz<'scope, W> {
    buf: Vec<u8>,
    dict_tail: Vec<u8>,
    index: usize,
    jobs: Option<mpsc::SyncSender<Job>>,
    writer: std::thread::ScopedJoinHandle<'scope, io::Result<W>>,
}

impl<'scope, W: Write + Send + 'scope> ParallelGz<'scope, W> {
    fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, out: W) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        for _ in 0..threads {
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                loop {
                    let job = match job_rx.lock().map(|rx| rx.recv()) {
                        Ok(Ok(job)) => job,
                        _ => return,
                    };
                    let mut crc = Crc::new();
                    crc.update(&job.data);
                    let deflated = deflate(&job.dict, &job.data, job.last);
                    if done_tx.send(Done { index: job.index, last: job.last, deflated, crc }).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let writer = scope.spawn(move || write_in_order(done_rx, out));
        ParallelGz {
            buf: Vec::with_capacity(CHUNK),
            dict_tail: Vec::new(),
            index: 0,
            jobs: Some(job_tx),
            writer,
        }
    }

    fn send(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(if last { 0 } else { CHUNK }));
        let dict = if self.index == 0 { Vec::new() } else { self.dict_tail.clone() };
        self.dict_tail = data[data.len().saturating_sub(DICT)..].to_vec();
        let job = Job { index: self.index, data, dict, last };
        self.index += 1;
        let jobs = self.jobs.as_ref().expect("not finished");
        jobs.send(job).map_err(|_| io::Error::other("the compression threads stopped"))
    }

    /// Compresses the rest, waits for every piece and writes the trailer.
    fn finish(mut self) -> io::Result<()> {
        self.send(true)?;
        drop(self.jobs.take());
        let mut out = self.writer.join().map_err(|_| io::Error::other("the gzip writer panicked"))??;
        out.flush()
    }
}

impl<'scope, W: Write + Send + 'scope> Write for ParallelGz<'scope, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw deflate of one piece at [`LEVEL`], primed with `dict`; a sync flush ends it on a byte
/// boundary, or, for the `last` piece, the final block.
fn deflate(dict: &[u8], data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::new(LEVEL), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&data[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        // Done when every byte is in and the flush completed: the final block for the last
        // piece; room left over (zlib's sign that a sync flush finished) otherwise.
        let finished = if last { status == Status::StreamEnd } else { all_in && out.len() < out.capacity() };
        if finished {
            return Ok(out);
        }
    }
}

/// Receives compressed pieces in any order and writes them in order: header, pieces, trailer.
/// Returns the output once the last piece is written.
fn write_in_order<W: Write>(done: mpsc::Receiver<Done>, mut out: W) -> io::Result<W> {
    // A gzip header with no name, no time (mtime 0), no extra flags and OS 255 (unknown).
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
    let mut pending = BTreeMap::new();
    let mut next = 0;
    let mut crc = Crc::new();
    let mut saw_last = false;
    for piece in done {
        pending.insert(piece.index, piece);
        while let Some(piece) = pending.remove(&next) {
            out.write_all(&piece.deflated?)?;
            saw_last = piece.last;
            crc.combine(&piece.crc);
            next += 1;
        }
    }
    if !saw_last || !pending.is_empty() {
        return Err(io::Error::other("the compression threads stopped before the last piece"));
    }
    out.write_all(&crc.sum().to_le_bytes())?;
    out.write_all(&crc.amount().to_le_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests;
