//! release.yaml as the hook reads it: never a panic, and what parses writes back to itself.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use packaging::config::Release;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(release) = Release::parse(Path::new("deploy/release.yaml"), text) else { return };
    let _ = release.venv_dir();
    let again = Release::parse(Path::new("deploy/release.yaml"), &release.to_yaml())
        .expect("written release.yaml parses");
    assert_eq!(again, release);
});
