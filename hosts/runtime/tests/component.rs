//! The embedded component against the native library, and the runtime's limits.

use std::time::Duration;

use tripflow_runtime::core::{ParseOutcome, Span};
use tripflow_runtime::{
    ComponentSource, CoreError, CoreProvider, Limits, NativeCore, Runtime, TripCore,
};

fn spans(lines: &[&[u8]]) -> (Vec<u8>, Vec<Span>) {
    let mut buf = Vec::new();
    let mut spans = Vec::new();
    for l in lines {
        spans.push(Span {
            offset: buf.len() as u32,
            len: l.len() as u32,
        });
        buf.extend_from_slice(l);
    }
    (buf, spans)
}

#[test]
fn embedded_component_agrees_with_the_library() {
    let rt = Runtime::load(&ComponentSource::Embedded, Limits::default(), None).unwrap();
    assert_eq!(rt.info().sha256.len(), 64);
    let (buf, sp) = spans(&[
        br#"{"trip_id":"a","event_type":"trip_start","timestamp":"2019-03-10T01:59:00-05:00","x":[1, 2]}"#,
        br#"{"trip_id":"a","event_type":"trip_end","timestamp":1552201500,"fare":"12.50"}"#,
        br#"{"trip_id":"a","event_type":"trip_end","timestamp":1552201500,"fare":12.51}"#,
        b"   ",
        b"{\"trip_id\":\"\xff\"}",
        br#"{"trip_id":"b","event_type":"trip_end","timestamp":0,"fare":0.001}"#,
    ]);
    let mut wasm = rt.session().unwrap();
    let mut native = NativeCore.session().unwrap();
    let parsed = wasm.parse(&buf, &sp).unwrap();
    assert_eq!(parsed, native.parse(&buf, &sp).unwrap());
    assert!(matches!(parsed[3], ParseOutcome::Blank));
    let events: Vec<_> = parsed
        .into_iter()
        .filter_map(ParseOutcome::into_accepted)
        .collect();
    assert_eq!(events.len(), 3);
    let r = wasm.resolve(&events, &[]).unwrap();
    assert_eq!(r, native.resolve(&events, &[]).unwrap());
    assert_eq!(r.closed.len(), 1);
    let zone_err = wasm.check_time_zone("Mars/Base").unwrap_err();
    assert!(matches!(zone_err, CoreError::Kpi(_)), "{zone_err}");
}

#[test]
fn a_guest_over_its_memory_cap_is_stopped() {
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let rt = Runtime::load(&ComponentSource::Embedded, limits, None).unwrap();
    let buf = vec![b' '; 16 << 20];
    let err = rt.session().unwrap().parse(&buf, &[]).unwrap_err();
    assert!(
        matches!(err, CoreError::OutOfMemory { limit_mib: 8 }),
        "{err}"
    );
    // The runtime is still usable: the next batch gets a fresh store.
    assert!(rt.session().unwrap().parse(b"{}", &[]).unwrap().is_empty());
}

#[test]
fn a_guest_past_its_deadline_is_stopped() {
    let limits = Limits {
        call_deadline: Duration::from_millis(1),
        ..Limits::default()
    };
    let rt = Runtime::load(&ComponentSource::Embedded, limits, None).unwrap();
    let line =
        br#"{"trip_id":"a","event_type":"trip_start","timestamp":"2019-03-10T01:59:00-05:00"}"#;
    let lines: Vec<&[u8]> = std::iter::repeat_n(&line[..], 400_000).collect();
    let (buf, sp) = spans(&lines);
    let err = rt.session().unwrap().parse(&buf, &sp).unwrap_err();
    assert!(matches!(err, CoreError::Timeout(_)), "{err}");
}

#[test]
fn precompiled_and_cached_components_load() {
    let dir = tempfile::tempdir().unwrap();
    let cwasm = dir.path().join("core.cwasm");
    std::fs::write(
        &cwasm,
        tripflow_runtime::precompile(tripflow_runtime::EMBEDDED_COMPONENT).unwrap(),
    )
    .unwrap();
    let rt = Runtime::load(&ComponentSource::File(cwasm), Limits::default(), None).unwrap();
    assert!(rt.info().precompiled);
    let cache = dir.path().join("cache");
    for _ in 0..2 {
        let rt =
            Runtime::load(&ComponentSource::Embedded, Limits::default(), Some(&cache)).unwrap();
        assert!(rt.session().unwrap().parse(b"", &[]).unwrap().is_empty());
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let missing = Runtime::load(
        &ComponentSource::File(dir.path().join("nope.wasm")),
        Limits::default(),
        None,
    );
    assert!(matches!(missing, Err(CoreError::Load { .. })));
}
