//! `tripflow audit` and `tripflow diff` as a user meets them, on an export of the pipeline's
//! table made from the real NYC sample (the local stack's end-to-end test exports the real
//! table; this one holds the binary's output and exit statuses).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine as _;
use common::{nyc_events, ok, tripflow};
use serde_json::{Map, Value, json};
use tripflow_core::{EventKind, ParseOutcome, TripEvent, parse_record};
use tripflow_runtime::fate::DlqMessage;
use tripflow_runtime::item;
use tripflow_store::export::ExportWriter;

const ZONE: &str = "America/New_York";

/// The items the pipeline stores for `events` (first copy of each half wins), as DynamoDB JSON.
fn items(events: &[TripEvent]) -> Vec<Map<String, Value>> {
    let mut trips: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for e in events {
        let h = item::half(e.kind);
        let it = trips.entry(&e.trip_id).or_insert_with(|| {
            let mut m = Map::new();
            m.insert(item::PK.into(), json!({ "S": item::trip_pk(&e.trip_id) }));
            m.insert(item::SK.into(), json!({ "S": item::TRIP_SK }));
            m.insert(item::OPENED_HOUR.into(), json!({ "N": "0" }));
            m
        });
        if it.contains_key(h.ts) {
            continue;
        }
        it.insert(h.ts.into(), json!({ "N": e.timestamp_ns.to_string() }));
        if let Some(f) = e.fare_cents {
            it.insert(h.fare.into(), json!({ "N": f.to_string() }));
        }
        if !e.extras.is_empty() {
            it.insert(h.extras.into(), json!({ "S": e.extras }));
        }
        it.insert(h.src.into(), json!({ "S": "shardId-000000000000/1" }));
    }
    trips.into_values().collect()
}

fn write_export(dir: &Path, table: &str, items: &[Map<String, Value>]) {
    let mut w = ExportWriter::create(
        dir,
        &format!("arn:aws:dynamodb:us-east-1:123456789012:table/{table}"),
        "2026-12-06T12:00:00.000Z",
        2_000,
    )
    .unwrap();
    for it in items {
        w.item(it).unwrap();
    }
    // The pipeline's other items are in an export too; the reader leaves them out.
    let mut meta = Map::new();
    meta.insert("pk".into(), json!({ "S": "META" }));
    meta.insert("sk".into(), json!({ "S": "WATERMARK" }));
    meta.insert("newest_ns".into(), json!({ "N": "1" }));
    w.item(&meta).unwrap();
    w.finish().unwrap();
}

/// Exit status and stdout.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tripflow(dir, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn audit_and_diff_hold_an_export_to_the_published_kpis() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nyc = nyc_events();
    let text = std::fs::read(&nyc).unwrap();
    let mut events = Vec::new();
    let mut kept = String::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        match parse_record(line) {
            ParseOutcome::Accepted(e) => events.push(e),
            ParseOutcome::Rejected(r) => {
                let m = DlqMessage {
                    reason: r.code().to_owned(),
                    detail: r.detail().to_owned(),
                    raw_base64: base64::engine::general_purpose::STANDARD.encode(line),
                    raw_s3: None,
                    raw_len: line.len() as u64,
                    shard_id: "shardId-000000000000".into(),
                    sequence_number: n.to_string(),
                    partition_key: "p".into(),
                    first_sequence_number: None,
                };
                // At least once: a copy of each message.
                for _ in 0..2 {
                    kept.push_str(&serde_json::to_string(&m).unwrap());
                    kept.push('\n');
                }
            }
            ParseOutcome::Blank => {}
        }
    }
    assert_eq!(
        kept.lines().count(),
        20,
        "the sample's 10 negative fares, twice"
    );
    std::fs::write(d.join("rejects.ndjson"), &kept).unwrap();
    let export = d.join("export");
    write_export(&export, "tripflow", &items(&events));
    // The committed export of the sample (fixtures/exports; the Spark job's tests read it) is
    // this one: `BLESS=1` writes it again.
    let committed = common::fixtures().join("exports/nyc-tlc-2019-03");
    if std::env::var_os("BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&committed);
        write_export(&committed, "tripflow", &items(&events));
    }
    for f in ["manifest-files.json", "manifest-summary.json"] {
        assert_eq!(
            std::fs::read(committed.join(f)).unwrap(),
            std::fs::read(export.join(f)).unwrap(),
            "fixtures/exports/nyc-tlc-2019-03/{f} is stale: run this test with BLESS=1"
        );
    }

    // What the pipeline published: the replay's CSV, which the pipeline test holds it to.
    ok(&tripflow(
        d,
        &[
            "replay",
            "--state",
            "s",
            "--timezone",
            ZONE,
            "--kpi-out",
            "published.csv",
            nyc.to_str().unwrap(),
        ],
    ));
    let published = std::fs::read_to_string(d.join("published.csv")).unwrap();
    let days = published.lines().count() - 1;

    let audit = |published: &str, extra: &[&str]| {
        let mut args = vec![
            "audit",
            "export",
            "--published",
            published,
            "--timezone",
            ZONE,
            "--rejects",
            "rejects.ndjson",
        ];
        args.extend_from_slice(extra);
        run(d, &args)
    };
    let (status, out, err) = audit("published.csv", &["--table", "tripflow"]);
    println!("$ tripflow audit export --published published.csv …\n{out}");
    assert_eq!(status, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("KPIs       identical: {days} days"))
            && out.contains("events     12990 from the export, every one stored again")
            && out.contains("kept       10 rejected records (bad_fare 10): each replayed one rejected again for the same reason")
            && out.trim_end().ends_with("identical"),
        "{out}"
    );

    // One published row changed: that day is named with both rows, exit 1.
    let row = published.lines().nth(5).unwrap();
    let day = &row[..10];
    let mut fields: Vec<String> = row.split(',').map(str::to_owned).collect();
    fields[1] = (fields[1].parse::<u64>().unwrap() + 1).to_string();
    let changed = published.replace(row, &fields.join(","));
    std::fs::write(d.join("changed.csv"), changed).unwrap();
    let (status, out, _) = audit("changed.csv", &[]);
    println!("$ tripflow audit export --published changed.csv …\n{out}");
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains(&format!("KPIs       1 of {days} days differ"))
            && out.contains(&format!(
                "  {day}\n    published   {}\n    recomputed  {row}\n",
                fields.join(",")
            ))
            && out.trim_end().ends_with("DIFFERENT"),
        "{out}"
    );

    // Bad input: exit 2 and the file named.
    let (status, _, err) = audit("published.csv", &["--table", "orders"]);
    assert_eq!(status, 2);
    assert!(
        err.contains("manifest-summary.json") && err.contains("export of table tripflow"),
        "{err}"
    );
    let copy = |name: &str| {
        let to = d.join(name);
        std::fs::create_dir_all(to.join("data")).unwrap();
        for entry in walk(&export) {
            let rel = entry.strip_prefix(&export).unwrap();
            std::fs::copy(&entry, to.join(rel)).unwrap();
        }
        to
    };
    let truncated = copy("truncated");
    std::fs::remove_file(truncated.join("data/00001.json.gz")).unwrap();
    let (status, _, err) = run(d, &["audit", "truncated", "--published", "published.csv"]);
    assert_eq!(status, 2);
    assert!(
        err.contains("data/00001.json.gz") && err.contains("missing"),
        "{err}"
    );
    let corrupt = copy("corrupt");
    let data = corrupt.join("data/00002.json.gz");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let (status, _, err) = run(d, &["audit", "corrupt", "--published", "published.csv"]);
    assert_eq!(status, 2);
    assert!(
        err.contains("data/00002.json.gz") && err.contains("MD5") && err.contains("does not match"),
        "{err}"
    );
    let other = d.join("other");
    let orders: Vec<Map<String, Value>> = (0..3)
        .map(|i| {
            let mut m = Map::new();
            m.insert("order_id".into(), json!({ "N": i.to_string() }));
            m
        })
        .collect();
    let mut w = ExportWriter::create(
        &other,
        "arn:aws:dynamodb:us-east-1:123456789012:table/orders",
        "2026-12-06T12:00:00.000Z",
        10,
    )
    .unwrap();
    for o in &orders {
        w.item(o).unwrap();
    }
    w.finish().unwrap();
    let (status, _, err) = run(d, &["audit", "other", "--published", "published.csv"]);
    assert_eq!(status, 2);
    assert!(
        err.contains("data/00000.json.gz line 1")
            && err.contains("not an export of a tripflow table"),
        "{err}"
    );

    // The replay reads an export as the events it stores: the same KPIs.
    let (status, _, err) = run(
        d,
        &[
            "replay",
            "--state",
            "from-export",
            "--timezone",
            ZONE,
            "--kpi-out",
            "again.csv",
            "export",
        ],
    );
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("again.csv")).unwrap(),
        published
    );

    // diff: the built-in component against itself changes nothing …
    ok(&tripflow(
        d,
        &["component", "--export-wasm", "current.wasm"],
    ));
    let (status, out, err) = run(
        d,
        &[
            "diff",
            "--component",
            "current.wasm",
            "export",
            "--timezone",
            ZONE,
        ],
    );
    assert_eq!(status, 0, "{out}\n{err}");
    assert!(out.trim_end().ends_with("no change"), "{out}");

    // … and the fixture with a changed rule (fares over 100.00 are invalid) names exactly the
    // days of the completed trips with such fares, each trip with the events behind it.
    let fixture = tripflow_conformance::changed_rule_component().unwrap();
    let mut halves: BTreeMap<&str, [Option<&TripEvent>; 2]> = BTreeMap::new();
    for e in &events {
        let slot = &mut halves.entry(&e.trip_id).or_default()[(e.kind == EventKind::End) as usize];
        slot.get_or_insert(e);
    }
    let mut expected_days = BTreeSet::new();
    let mut expected_trips = BTreeSet::new();
    for (id, h) in &halves {
        if let [Some(s), Some(e)] = h {
            let fare = e.fare_cents.or(s.fare_cents);
            if e.timestamp_ns >= s.timestamp_ns && fare.is_some_and(|f| f > 10_000) {
                expected_days.insert(tripflow_core::day_of(ZONE, s.timestamp_ns).unwrap());
                expected_trips.insert(id.to_string());
            }
        }
    }
    assert!(expected_days.len() >= 3, "{expected_days:?}");
    let (status, out, err) = run(
        d,
        &[
            "diff",
            "--component",
            "current.wasm",
            "--component",
            fixture.to_str().unwrap(),
            "export",
            "--timezone",
            ZONE,
            "--limit",
            "100",
        ],
    );
    println!("$ tripflow diff --component current.wasm --component fixture.wasm export …\n{out}");
    assert_eq!(status, 1, "{out}\n{err}");
    let section = |title: &str| -> Vec<String> {
        out.split(title)
            .nth(1)
            .unwrap()
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter(|l| !l.starts_with("    "))
            .map(|l| l.trim().to_owned())
            .collect()
    };
    let days: BTreeSet<String> = section("KPI days that change:").into_iter().collect();
    assert_eq!(days, expected_days, "{out}");
    let trips: BTreeSet<String> = section("trips that change:")
        .iter()
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(trips, expected_trips, "{out}");
    assert!(
        out.contains("completed, fare ")
            && out.contains("→ invalid, fare ")
            && out.contains("\"event_type\":\"trip_end\"")
            && out.contains("records decided differently: 0")
            && out.contains(&format!(
                "CHANGED: {} KPI days, {} trips, 0 records",
                expected_days.len(),
                expected_trips.len()
            )),
        "{out}"
    );
    let old_sha = out.lines().find(|l| l.starts_with("old ")).unwrap();
    let new_sha = out.lines().find(|l| l.starts_with("new ")).unwrap();
    assert!(old_sha.contains("sha256:") && new_sha.contains("sha256:") && old_sha != new_sha);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
