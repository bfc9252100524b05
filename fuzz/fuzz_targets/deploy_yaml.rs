//! deploy.yaml: whatever parses must resolve into a release.yaml the hook parses back to the
//! same value, and render a unit and a hypercorn.toml without panicking (the TOML must parse).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use packaging::{
    config::{DeployConfig, Release},
    render,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = DeployConfig::parse(Path::new("deploy.yaml"), text) else { return };
    let release = config.resolve(b"hypercorn==0.17.3\n", "x86_64", None);
    let yaml = release.to_yaml();
    let back = Release::parse(Path::new("deploy/release.yaml"), &yaml)
        .unwrap_or_else(|err| panic!("a resolved release.yaml does not parse: {err}\n{yaml}"));
    assert_eq!(back, release);
    let _ = render::unit(&config, &release);
    let toml_text = render::hypercorn_toml(&config.hypercorn);
    if let Err(err) = toml_text.parse::<toml::Table>() {
        panic!("hypercorn.toml does not parse: {err}\n{toml_text}");
    }
});
