//! The revision reader on a .tar or .tgz (the entry point `cargo xtask verify` uses): never a
//! panic, and no entry escapes the revision. The first byte chooses: even, the rest is the file as is (raw tar
//! or a hand-made gzip stream); odd, the rest is gzipped first, so the tar parser behind the
//! decoder is reached too.

#![no_main]

use std::{io::Write, path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use packaging::reader::{self, Kind, Limits};

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fuzz-archive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 2 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).expect("in memory");
        gz.finish().expect("in memory")
    } else {
        rest.to_vec()
    };
    let path = scratch().join("revision.tgz");
    std::fs::write(&path, &bytes).expect("scratch file");
    let limits =
        Limits { max_expanded: 8 << 20, max_entries: 10_000, max_entry: 4 << 20, max_retained: 8 << 20 };
    let Ok(revision) = reader::read(&path, &limits) else { return };
    for (name, item) in &revision.items {
        assert!(
            !name.starts_with('/') && !name.split('/').any(|part| part == ".."),
            "{name} escapes the revision"
        );
        if let Kind::File { size, data: Some(data), .. } = &item.kind {
            assert_eq!(*size, data.len() as u64, "{name}");
        }
    }
});
