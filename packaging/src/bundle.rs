//! Assembling a revision from an app directory: the layout of ARCHITECTURE.md, every rendered file,
//! the manifest and the revision id, then writing the `.tgz` atomically.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

use appspec::AppSpec;

use crate::{
    config::{ConfigError, DEPLOY_YAML, Dependencies, DeployConfig, Release},
    layout,
    manifest::{self, Manifest, is_clean_path, link_stays_inside, normalized_mode},
    render,
    tarball::{self, Content, Entry, Source},
};

/// The CPU architecture of the instances a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (amd64).
    X86_64,
    /// aarch64 (arm64, Graviton).
    Aarch64,
}

impl Arch {
    /// Both, in the order `--target all` builds them.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name in bundle file names and `--target`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The musl target triple the hook is built for.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The ELF `e_machine` of this architecture.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// Parses a name as printed by [`Arch::name`].
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|it| it.name() == name)
    }
}

/// Why a revision cannot be assembled or written. Each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// deploy.yaml is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or directory the app must have is not there.
    #[error("{path}: {what} is missing")]
    Missing {
        /// The path looked for.
        path: String,
        /// What it should have been.
        what: &'static str,
    },
    /// A source entry cannot go into a revision.
    #[error("{path}: {message}")]
    Source {
        /// The offending path.
        path: String,
        /// The rule it breaks.
        message: String,
    },
    /// The AppSpec cannot be rendered.
    #[error("appspec.yml: {0}")]
    AppSpec(#[from] appspec::RenderError),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.display().to_string(), source }
}

/// A revision ready to be written.
#[derive(Debug)]
pub struct Bundle {
    /// deploy.yaml as read.
    pub config: DeployConfig,
    /// The resolved configuration, as in deploy/release.yaml.
    pub release: Release,
    /// The architecture of its hook.
    pub arch: Arch,
    /// `r-` and 16 hex digits, from the manifest.
    pub revision: String,
    /// The manifest's text.
    pub manifest: String,
    /// Every file, rendered or read from the app directory.
    pub entries: Vec<Entry>,
}

/// What `dependencies: vendored` adds to a revision, prepared by the caller (which downloads).
#[derive(Debug, Clone)]
pub struct Vendored {
    /// The requirements as shipped: every wheel pinned with `==` and `--hash=sha256:`.
    pub requirements: Vec<u8>,
    /// Wheel file names and where to read them.
    pub wheels: Vec<(String, PathBuf)>,
    /// The static uv binary for the arch and its version.
    pub uv: (PathBuf, String),
}

/// A bundle on disk.
#[derive(Debug)]
pub struct Written {
    /// Where it is.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// sha256 of the file, hex.
    pub sha256: String,
}

fn read_required(app_dir: &Path, rel: &str, what: &'static str) -> Result<Vec<u8>, BundleError> {
    let path = app_dir.join(rel);
    match fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(BundleError::Missing { path: path.display().to_string(), what })
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Walks the source tree: regular files, directories and symlinks that stay inside it.
fn source_entries(src: &Path) -> Result<Vec<Entry>, BundleError> {
    let meta = fs::metadata(src).map_err(|_| BundleError::Missing {
        path: src.display().to_string(),
        what: "the application source directory (deploy.yaml source_dir)",
    })?;
    if !meta.is_dir() {
        return Err(BundleError::Source {
            path: src.display().to_string(),
            message: "source_dir is not a directory".into(),
        });
    }
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(src).min_depth(1).follow_links(false).sort_by_file_name() {
        let item = item.map_err(|e| BundleError::Io {
            path: e.path().unwrap_or(src).display().to_string(),
            source: e.into_io_error().unwrap_or_else(|| io::Error::other("walk failed")),
        })?;
        let abs = item.path();
        let shown = abs.display().to_string();
        let rel = abs.strip_prefix(src).expect("walkdir stays below its root");
        let rel = rel.to_str().ok_or_else(|| BundleError::Source {
            path: shown.clone(),
            message: "the name is not valid UTF-8".into(),
        })?;
        if !is_clean_path(rel) {
            return Err(BundleError::Source {
                path: shown,
                message: "the name holds a control character".into(),
            });
        }
        if item.depth() == 1 && layout::RESERVED_IN_RELEASE.contains(&rel) {
            return Err(BundleError::Source {
                path: shown,
                message: format!("the release puts its own {rel} here; rename it in the source"),
            });
        }
        let path = format!("{}/{rel}", layout::SRC);
        let ty = item.file_type();
        let content = if ty.is_dir() {
            Content::Dir
        } else if ty.is_file() {
            let meta =
                item.metadata().map_err(|e| BundleError::Io { path: shown.clone(), source: e.into() })?;
            Content::File {
                mode: normalized_mode(&meta.permissions()) & 0o777,
                source: Source::File(abs.to_owned()),
            }
        } else if ty.is_symlink() {
            let target = fs::read_link(abs).map_err(io_err(abs))?;
            let target = target.to_str().ok_or_else(|| BundleError::Source {
                path: shown.clone(),
                message: "the symlink's target is not valid UTF-8".into(),
            })?;
            if !link_stays_inside(rel, target) {
                return Err(BundleError::Source {
                    path: shown,
                    message: format!("symlink to {target:?} points outside the source tree"),
                });
            }
            Content::Symlink { target: target.to_owned() }
        } else {
            let kind = if ty.is_fifo() {
                "a fifo"
            } else if ty.is_socket() {
                "a socket"
            } else if ty.is_block_device() || ty.is_char_device() {
                "a device"
            } else {
                "a special file"
            };
            return Err(BundleError::Source {
                path: shown,
                message: format!("is {kind}; only files, directories and symlinks can ship"),
            });
        };
        out.push(Entry { path, content });
    }
    Ok(out)
}

/// An app directory, read and validated: everything but the hook binary.
#[derive(Debug)]
pub struct AppSource {
    /// deploy.yaml as read.
    pub config: DeployConfig,
    /// The requirements file as written (pins without hashes).
    pub requirements: Vec<u8>,
    sample_env: Vec<u8>,
    entries: Vec<Entry>,
}

impl AppSource {
    /// Reads and checks `app_dir`: deploy.yaml, the requirements, the `.env` template and the
    /// source tree. Nothing is written.
    pub fn load(app_dir: &Path) -> Result<AppSource, BundleError> {
        let deploy_yaml = app_dir.join(DEPLOY_YAML);
        if !deploy_yaml.exists() {
            return Err(BundleError::Missing {
                path: deploy_yaml.display().to_string(),
                what: "the app's deploy.yaml",
            });
        }
        let config = DeployConfig::load(&deploy_yaml)?;
        let requirements = read_required(
            app_dir,
            config.requirements.as_str(),
            "the requirements file (deploy.yaml requirements)",
        )?;
        let sample_env =
            read_required(app_dir, config.env_sample.as_str(), "the .env template (deploy.yaml env_sample)")?;
        let entries = source_entries(&app_dir.join(config.source_dir.as_str()))?;
        Ok(AppSource { config, requirements, sample_env, entries })
    }
}

impl Bundle {
    /// Renders every file for `arch` and computes the manifest. `hook` is the built
    /// deploy-hook for `arch`.
    ///
    /// With `dependencies: vendored`, `vendored` brings the wheels, the hash-pinned
    /// requirements and uv; with `dependencies: index` it must be `None`.
    pub fn new(
        app: &AppSource,
        hook: &Path,
        arch: Arch,
        vendored: Option<&Vendored>,
    ) -> Result<Bundle, BundleError> {
        let config = app.config.clone();
        let mut entries = app.entries.clone();
        let hook_bytes = fs::read(hook).map_err(io_err(hook))?;
        let requirements = match (config.dependencies, vendored) {
            (Dependencies::Vendored, Some(v)) => v.requirements.clone(),
            (Dependencies::Index, None) => app.requirements.clone(),
            (Dependencies::Vendored, None) => {
                return Err(BundleError::Source {
                    path: DEPLOY_YAML.into(),
                    message: "dependencies: vendored needs the wheels and uv; none were prepared".into(),
                });
            }
            (Dependencies::Index, Some(_)) => {
                return Err(BundleError::Source {
                    path: DEPLOY_YAML.into(),
                    message: "dependencies: index ships no wheels, but wheels were prepared".into(),
                });
            }
        };
        let release = config.resolve(&requirements, arch.name(), vendored.map(|v| v.uv.1.as_str()));
        let sample_env = app.sample_env.clone();
        if let Some(v) = vendored {
            entries.push(Entry {
                path: layout::UV.into(),
                content: Content::File { mode: 0o755, source: Source::File(v.uv.0.clone()) },
            });
            for (name, path) in &v.wheels {
                entries.push(Entry {
                    path: format!("{}/{name}", layout::WHEELS),
                    content: Content::File { mode: 0o644, source: Source::File(path.clone()) },
                });
            }
        }

        let appspec =
            AppSpec::single_binary(layout::HOOK, |event| release.timeouts.of(event).secs()).render()?;
        let mut rendered: Vec<(String, u32, Vec<u8>)> = vec![
            (layout::APPSPEC.into(), 0o644, appspec.into_bytes()),
            (layout::HOOK.into(), 0o755, hook_bytes),
            (layout::RELEASE_YAML.into(), 0o644, release.to_yaml().into_bytes()),
            (layout::unit(release.unit.as_str()), 0o644, render::unit(&config, &release).into_bytes()),
            (
                layout::HYPERCORN_TOML.into(),
                0o644,
                render::hypercorn_toml(&render::served_hypercorn(&config)).into_bytes(),
            ),
            (layout::SERVE_PY.into(), 0o644, render::SERVE_PY.as_bytes().to_vec()),
            (layout::SAMPLE_ENV.into(), 0o644, sample_env),
            (layout::REQUIREMENTS.into(), 0o644, requirements),
        ];
        if let (Some(name), Some(socket)) = (release.socket_unit(), render::socket_unit(&config, &release)) {
            rendered.push((layout::unit(&name), 0o644, socket.into_bytes()));
        }
        for (path, mode, data) in rendered {
            entries.push(Entry { path, content: Content::File { mode, source: Source::Bytes(data) } });
        }

        let hashes = read_and_hash(&mut entries)?;
        let mut manifest = Manifest { uv_version: vendored.map(|v| v.uv.1.clone()), ..Manifest::default() };
        for (entry, hash) in entries.iter().zip(hashes) {
            match (&entry.content, hash) {
                (Content::Symlink { target }, _) => {
                    manifest.push(&entry.path, manifest::SYMLINK, target.as_bytes())
                }
                (Content::File { mode, .. }, Some((sha256, size))) => {
                    manifest.entries.push(manifest::ManifestEntry {
                        path: entry.path.clone(),
                        mode: 0o100000 | mode,
                        size,
                        sha256,
                    });
                }
                _ => {}
            }
        }
        manifest.sort();
        let manifest = manifest.render();
        let revision = Manifest::revision_id(&manifest);
        entries.push(Entry {
            path: layout::MANIFEST.into(),
            content: Content::File { mode: 0o644, source: Source::Bytes(manifest.clone().into_bytes()) },
        });
        Ok(Bundle { config, release, arch, revision, manifest, entries })
    }

    /// `<app>-<revision>-<arch>.tgz`.
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}.tgz", self.release.app, self.revision, self.arch.name())
    }

    /// Number of files (not directories) in the bundle, the manifest included.
    pub fn file_count(&self) -> usize {
        self.entries.iter().filter(|e| !matches!(e.content, Content::Dir)).count()
    }

    /// Writes the bundle into `out_dir` through a temporary file renamed into place, so a
    /// failure leaves no partial bundle.
    pub fn write(&self, out_dir: &Path, mtime: u64) -> Result<Written, BundleError> {
        fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
        let path = out_dir.join(self.file_name());
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", self.file_name()))
            .tempfile_in(out_dir)
            .map_err(io_err(out_dir))?;
        let (sha256, size) = {
            let mut hashing = HashingWriter {
                inner: io::BufWriter::new(tmp.as_file_mut()),
                hasher: Default::default(),
                size: 0,
            };
            tarball::write_tgz(&self.entries, mtime, &mut hashing).map_err(io_err(&path))?;
            hashing.inner.flush().map_err(io_err(&path))?;
            (crate::hex(&sha2::Digest::finalize(hashing.hasher)), hashing.size)
        };
        tmp.as_file().sync_all().map_err(io_err(&path))?;
        // Bundles are artefacts to upload: readable by all, like `cargo package` output.
        fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io_err(&path))?;
        tmp.persist(&path)
            .map_err(|e| BundleError::Io { path: path.display().to_string(), source: e.error })?;
        Ok(Written { path, size, sha256 })
    }
}

/// Files up to this size are read once, in parallel, and kept in memory for the archive, so the
/// manifest hashes exactly the bytes archived and 20,000 small files cost one read each.
const KEEP_IN_MEMORY: u64 = 1 << 20;
/// At most this much source is kept in memory; the rest is read again when archived.
const MEMORY_BUDGET: u64 = 1 << 30;

/// Hashes every file of `entries` on every core, reading the small source files once and
/// keeping them in memory for the archive. The result is by entry (`None` for directories and
/// links); it never depends on the thread count.
fn read_and_hash(entries: &mut [Entry]) -> Result<Vec<Option<(String, u64)>>, BundleError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    let kept = std::sync::atomic::AtomicU64::new(0);
    let per_thread = entries.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks_mut(per_thread)
            .map(|part| {
                let kept = &kept;
                scope.spawn(move || -> Result<Vec<Option<(String, u64)>>, BundleError> {
                    let mut out = Vec::with_capacity(part.len());
                    for entry in part {
                        let Content::File { source, .. } = &mut entry.content else {
                            out.push(None);
                            continue;
                        };
                        if let Source::File(path) = source {
                            let meta = fs::metadata(&*path).map_err(io_err(path))?;
                            let keep = meta.len() <= KEEP_IN_MEMORY
                                && kept.fetch_add(meta.len(), std::sync::atomic::Ordering::Relaxed)
                                    <= MEMORY_BUDGET;
                            if !keep {
                                let hash = manifest::hash_file(path).map_err(|e| BundleError::Source {
                                    path: path.display().to_string(),
                                    message: e.to_string(),
                                })?;
                                out.push(Some(hash));
                                continue;
                            }
                            *source = Source::Bytes(fs::read(&*path).map_err(io_err(path))?);
                        }
                        let Source::Bytes(bytes) = source else { unreachable!("read above") };
                        out.push(Some((manifest::sha256_hex(bytes), bytes.len() as u64)));
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.join().expect("a reader thread panicked")?);
        }
        Ok(all)
    })
}

struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::link_stays_inside;

    #[test]
    fn symlink_escapes() {
        assert!(link_stays_inside("a/b", "c"));
        assert!(link_stays_inside("a/b", "../c"));
        assert!(!link_stays_inside("a/b", "../../c"));
        assert!(!link_stays_inside("a", "/etc/passwd"));
        assert!(link_stays_inside("a/b/c", "../../x/./y"));
        assert!(!link_stays_inside("x", ".."));
    }
}
