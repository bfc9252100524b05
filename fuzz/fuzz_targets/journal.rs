//! journal.jsonl lines as the hook reads them: never a panic; reading in small chunks gives the
//! same result as reading at once; written records read back the same; compaction keeps every
//! revision's last state and is idempotent.

#![no_main]

use std::io::BufReader;

use hook::journal::{self, State, compact, states};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = journal::parse(data).expect("reading a slice cannot fail");
    let chunked = journal::parse(BufReader::with_capacity(7, data)).expect("reading a slice cannot fail");
    assert_eq!(parsed.records, chunked.records);
    assert_eq!(parsed.skipped, chunked.skipped);
    assert_eq!(parsed.skipped_total, chunked.skipped_total);
    let mut text = Vec::new();
    for record in &parsed.records {
        text.extend(serde_json::to_vec(record).expect("a record serializes"));
        text.push(b'\n');
    }
    let again = journal::parse(text.as_slice()).expect("reading a slice cannot fail");
    // Step times are f64: serde_json may read one back a unit in the last place off.
    let key = |r: &journal::Record| {
        (
            r.time.clone(),
            r.deployment_id.clone(),
            r.revision.clone(),
            r.event.clone(),
            r.state,
            r.venv.clone(),
            r.message.clone(),
            r.steps.keys().cloned().collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        again.records.iter().map(key).collect::<Vec<_>>(),
        parsed.records.iter().map(key).collect::<Vec<_>>()
    );
    assert!(again.skipped_total == 0, "{:?}", again.skipped);
    let small = compact(&parsed.records);
    assert_eq!(compact(&small), small);
    let before = states(&parsed.records);
    for (rev, state) in states(&small) {
        assert_eq!(before.get(rev), Some(&state));
    }
    for (rev, state) in before {
        assert!(states(&small).contains_key(rev) || matches!(state, State::Pruned | State::Failed));
    }
});
