//! One plain scalar typed as Ruby's Psych types it, and Ruby's conversions: never a panic.

#![no_main]

use appspec::yaml11;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let yaml11::Typed::Float(f) = yaml11::resolve_plain(text) {
        let _ = yaml11::ruby_float_to_s(f);
    }
    let _ = yaml11::ruby_str_to_i(text);
});
