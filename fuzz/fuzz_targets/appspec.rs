//! appspec.yml read as the agent does (the YAML 1.1 tree, then the agent's rules): every input
//! gets findings, never a panic, and every finding's position is inside the text.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let validation = appspec::validate::validate(text);
    // YAML's line breaks: \r\n, \n and a lone \r (Psych and saphyr count the last too).
    let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
    for finding in &validation.findings {
        if let Some(line) = finding.line {
            assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}: {finding:?}");
        }
    }
});
