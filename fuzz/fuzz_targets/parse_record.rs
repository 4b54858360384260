//! Any bytes as one record: the parser must not panic, must decide the same alone and inside
//! a batch, and what it accepts must satisfy the contract.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripflow_core::{ParseOutcome, Span, parse_batch, parse_record};

fuzz_target!(|data: &[u8]| {
    let alone = parse_record(data);
    // The same record between two others in one buffer decides the same.
    let mut buf = b"{}".to_vec();
    buf.extend_from_slice(data);
    buf.extend_from_slice(b" ");
    let spans = [
        Span { offset: 0, len: 2 },
        Span {
            offset: 2,
            len: data.len() as u32,
        },
        Span {
            offset: 2 + data.len() as u32,
            len: 1,
        },
    ];
    let batch = parse_batch(&buf, &spans);
    assert_eq!(batch[1], alone);
    if let ParseOutcome::Accepted(e) = &alone {
        let chars = e.trip_id.chars().count();
        assert!((1..=128).contains(&chars), "trip_id of {chars} characters");
        assert!(!e.trip_id.chars().any(char::is_control));
        if let Some(f) = e.fare_cents {
            assert!((0..=100_000_000).contains(&f), "fare {f}");
        }
        assert!(data.len() <= tripflow_core::MAX_RECORD_BYTES as usize);
        // The other fields are one JSON object of Unicode text (numbers are kept as written,
        // so they are checked for syntax only).
        if !e.extras.is_empty() {
            let raw: Box<serde_json::value::RawValue> = serde_json::from_str(&e.extras).unwrap();
            assert!(raw.get().starts_with('{') && raw.get().ends_with('}'));
        }
    }
});
