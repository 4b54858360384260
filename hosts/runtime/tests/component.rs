//! The embedded component against the native library, and the runtime's limits.

use std::time::Duration;

use tripflow_runtime::core::{Clock, ParseOutcome, Span, TripFare};
use tripflow_runtime::{
    ComponentSource, CoreError, CoreProvider, Limits, NativeCore, Runtime, TripCore,
};

/// Every generated event is far in the past of this arrival time: none is skewed.
const CLOCK: Clock = Clock {
    arrival_ns: i64::MAX,
    max_skew_ns: 0,
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
    let r = wasm.resolve(&events, &[], CLOCK).unwrap();
    assert_eq!(r, native.resolve(&events, &[], CLOCK).unwrap());
    assert_eq!(r.closed.len(), 1);
    // A clock an hour behind the events: all stored, none moves the watermark.
    let behind = Clock {
        arrival_ns: 0,
        max_skew_ns: 3_600_000_000_000,
    };
    let r = wasm.resolve(&events, &[], behind).unwrap();
    assert_eq!(r, native.resolve(&events, &[], behind).unwrap());
    assert_eq!((r.newest_ns, r.skewed.as_slice()), (None, &[0u32, 1][..]));
    let fares: Vec<TripFare> = r.closed.iter().map(|c| TripFare::from(&c.trip)).collect();
    let touched = wasm.utc_days_touched(&fares).unwrap();
    assert_eq!(touched, native.utc_days_touched(&fares).unwrap());
    assert_eq!(touched, ["2019-03-10"]);
    let local = wasm.local_days("America/New_York", &touched).unwrap();
    assert_eq!(
        local,
        native.local_days("America/New_York", &touched).unwrap()
    );
    assert_eq!(local, ["2019-03-09", "2019-03-10"]);
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
fn a_record_the_core_fails_on_costs_that_record_only() {
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let rt = Runtime::load(&ComponentSource::Embedded, limits, None).unwrap();
    let good = br#"{"trip_id":"a","event_type":"trip_start","timestamp":0,"fare":1}"#;
    let huge = vec![b' '; 24 << 20];
    let (buf, sp) = spans(&[good, &huge, b"{", good]);
    assert!(rt.session().unwrap().parse(&buf, &sp).is_err());
    let parsed = tripflow_runtime::parse_isolating(&rt, &buf, &sp).unwrap();
    let native = NativeCore.session().unwrap().parse(&buf, &sp).unwrap();
    assert_eq!(parsed.len(), 4);
    for i in [0, 2, 3] {
        assert_eq!(parsed[i].as_ref().unwrap(), &native[i], "record {i}");
    }
    assert!(
        matches!(parsed[1], Err(CoreError::OutOfMemory { limit_mib: 16 })),
        "{:?}",
        parsed[1]
    );
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
