//! deploy/MANIFEST: never a panic, and a parsed manifest renders to text that parses to it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use packaging::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Manifest::revision_id(text);
    let Ok(manifest) = Manifest::parse(text) else { return };
    let rendered = manifest.render();
    let again =
        Manifest::parse(&rendered).unwrap_or_else(|err| panic!("a rendered manifest does not parse: {err}"));
    assert_eq!(again, manifest);
});
