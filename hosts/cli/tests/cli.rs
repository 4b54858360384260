//! The `tripflow` binary as a user meets it: help, bad input, replays, KPIs, sweeps.

mod common;

use std::process::{Command, Stdio};

use common::{failed, fixtures, nyc_events, ok, tripflow};

#[test]
fn help_lists_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(&tripflow(dir.path(), &["--help"]));
    for cmd in [
        "replay",
        "kpi",
        "report",
        "sweep",
        "convert",
        "generate",
        "component",
        "audit",
        "diff",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help:\n{help}");
    }
    let replay = ok(&tripflow(dir.path(), &["replay", "--help"]));
    assert!(replay.contains("--timezone") && replay.contains("--quarantine"));
}

#[test]
fn bad_usage_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nyc = nyc_events();
    let nyc = nyc.to_str().unwrap();

    let err = failed(&tripflow(d, &["replay", "--timezone", "Mars/Olympus", nyc]));
    assert!(
        err.contains("unknown time zone \"Mars/Olympus\"") && err.contains("IANA"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one-line message: {err}");

    let err = failed(&tripflow(d, &["replay", "no/such/file.ndjson"]));
    assert!(
        err.contains("cannot read no/such/file.ndjson") && err.contains("check the path"),
        "{err}"
    );

    let err = failed(&tripflow(d, &["kpi", "--state", "empty"]));
    assert!(err.contains("run `tripflow replay"), "{err}");

    let err = failed(&tripflow(d, &["sweep", "--older-than", "soon"]));
    assert!(
        err.contains("invalid duration") && err.contains("90m"),
        "{err}"
    );

    let err = failed(&tripflow(
        d,
        &["replay", "--component", "missing.wasm", nyc],
    ));
    assert!(err.contains("missing.wasm"), "{err}");

    let err = failed(&tripflow(d, &["replay"]));
    assert!(err.contains("<FILE>"), "{err}");

    // Nothing was created by the failed replays.
    assert!(!d.join("tripflow-state").exists());
}

#[test]
fn nyc_replay_is_exact_idempotent_and_order_free() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nyc = nyc_events();
    let nyc = nyc.to_str().unwrap();
    let args = [
        "replay",
        "--timezone",
        "America/New_York",
        "--kpi-out",
        "kpi.csv",
        "--quarantine",
        "q.ndjson",
        nyc,
    ];
    let out = tripflow(d, &args);
    let stdout = ok(&out);
    assert!(stdout.contains("32 days, 6490 trips"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sha256:"),
        "the component's sha256 is logged"
    );
    let expected =
        std::fs::read(fixtures().join("cases/nyc-tlc-2019-03/expected/kpi.csv")).unwrap();
    assert_eq!(std::fs::read(d.join("kpi.csv")).unwrap(), expected);
    let quarantine = std::fs::read_to_string(d.join("q.ndjson")).unwrap();
    assert_eq!(quarantine.lines().count(), 10);
    assert!(
        quarantine
            .lines()
            .all(|l| l.contains("\"reason\":\"bad_fare\""))
    );

    // The same file again: nothing changes.
    let mut json_args = args.to_vec();
    json_args.insert(1, "--json");
    let again: serde_json::Value = serde_json::from_str(&ok(&tripflow(d, &json_args))).unwrap();
    assert_eq!(again["duplicates"], 12_990);
    assert_eq!(again["stored"], 0);
    assert_eq!(again["rejected"]["bad_fare"], 10);
    assert_eq!(again["store"]["completed"], 6_490);
    assert_eq!(
        again["store"]["quarantined"], 10,
        "a replayed file's rejects are kept once"
    );
    assert_eq!(again["skewed"], 0);
    assert_eq!(std::fs::read(d.join("kpi.csv")).unwrap(), expected);

    // A shuffled, duplicated copy into a fresh store: the same bytes.
    let text = std::fs::read_to_string(nyc_events()).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let copies: Vec<&str> = lines.iter().step_by(3).copied().collect();
    lines.extend(copies);
    lines.reverse();
    lines.swap(0, 5000);
    std::fs::write(d.join("messy.ndjson"), lines.join("\n")).unwrap();
    ok(&tripflow(
        d,
        &[
            "replay",
            "--state",
            "fresh",
            "--timezone",
            "America/New_York",
            "--kpi-out",
            "messy.csv",
            "messy.ndjson",
        ],
    ));
    assert_eq!(std::fs::read(d.join("messy.csv")).unwrap(), expected);

    // kpi recomputes the same CSV from the store, and a range cuts it.
    ok(&tripflow(
        d,
        &[
            "kpi",
            "--timezone",
            "America/New_York",
            "--out",
            "again.csv",
        ],
    ));
    assert_eq!(std::fs::read(d.join("again.csv")).unwrap(), expected);
    let table = ok(&tripflow(
        d,
        &[
            "kpi",
            "--timezone",
            "America/New_York",
            "--from",
            "2019-03-10",
            "--to",
            "2019-03-11",
        ],
    ));
    assert!(
        table.contains("2019-03-10")
            && table.contains("2019-03-11")
            && !table.contains("2019-03-12"),
        "{table}"
    );
    let err = failed(&tripflow(d, &["kpi", "--from", "2019-3-1"]));
    assert!(err.contains("YYYY-MM-DD"), "{err}");
}

#[test]
fn files_complete_each_other_and_stdin_works() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("starts.ndjson"),
        "{\"trip_id\":\"a\",\"event_type\":\"trip_start\",\"timestamp\":0}\n",
    )
    .unwrap();
    let first = ok(&tripflow(d, &["replay", "starts.ndjson"]));
    assert!(first.contains("1 open"), "{first}");
    let out = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        .args(["replay", "--json", "-"])
        .current_dir(d)
        .env("TRIPFLOW_CACHE_DIR", d.join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"{\"trip_id\":\"a\",\"event_type\":\"trip_end\",\"timestamp\":60,\"fare\":\"4.20\"}\nnot json\n")?;
            child.wait_with_output()
        })
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(summary["completed"], 1);
    assert_eq!(summary["rejected"]["malformed_json"], 1);
    assert_eq!(summary["store"]["open"], 0);
    let csv = ok(&tripflow(d, &["kpi", "--out", "-"]));
    assert_eq!(
        csv,
        "date,trip_count,total_fare,average_fare,min_fare,max_fare\n1970-01-01,1,4.20,4.20,4.20,4.20\n"
    );
}

#[test]
fn sweep_lists_and_marks_orphans_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("e.ndjson"),
        "{\"trip_id\":\"old\",\"event_type\":\"trip_start\",\"timestamp\":0}\n\
         {\"trip_id\":\"new\",\"event_type\":\"trip_start\",\"timestamp\":86400}\n",
    )
    .unwrap();
    ok(&tripflow(d, &["replay", "e.ndjson"]));
    let report = ok(&tripflow(d, &["sweep", "--older-than", "1d"]));
    assert!(
        report.contains("orphaned now: 0"),
        "exactly 1d old is not older: {report}"
    );
    let report = ok(&tripflow(d, &["sweep", "--older-than", "23h59m"]));
    assert!(
        report.contains("orphaned now: 1") && report.contains("old  has trip_start"),
        "{report}"
    );
    let report = ok(&tripflow(d, &["sweep", "--older-than", "1s"]));
    assert!(
        report.contains("orphaned now: 0") && report.contains("orphans in the store: 1"),
        "{report}"
    );
}

#[test]
fn convert_generate_and_component() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let csv = fixtures().join("data/nyc-tlc-trips-2019-03-sample.csv");
    ok(&tripflow(
        d,
        &[
            "convert",
            "nyc-tlc",
            csv.to_str().unwrap(),
            "--out",
            "nyc.ndjson",
        ],
    ));
    assert_eq!(
        std::fs::read(d.join("nyc.ndjson")).unwrap(),
        std::fs::read(nyc_events()).unwrap()
    );
    let err = failed(&tripflow(d, &["convert", "nyc-tlc", "nyc.ndjson"]));
    assert!(err.contains("tpep_pickup_datetime"), "{err}");

    let a = ok(&tripflow(
        d,
        &["generate", "--trips", "50", "--seed", "9", "--shuffle"],
    ));
    let b = ok(&tripflow(
        d,
        &["generate", "--trips", "50", "--seed", "9", "--shuffle"],
    ));
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 100);
    assert!(
        failed(&tripflow(
            d,
            &["generate", "--trips", "5", "--poison", "1.5"]
        ))
        .contains("probability")
    );

    let info = ok(&tripflow(
        d,
        &[
            "component",
            "--export-wasm",
            "core.wasm",
            "--precompile",
            "core.cwasm",
        ],
    ));
    assert!(
        info.contains("tripflow:core@0.7.0") && info.contains("sha256:"),
        "{info}"
    );
    // Any build of the component can be run, precompiled or not, with the same results.
    for component in ["core.wasm", "core.cwasm"] {
        let state = format!("state-{component}");
        let out = ok(&tripflow(
            d,
            &[
                "--component",
                component,
                "replay",
                "--state",
                &state,
                "nyc.ndjson",
            ],
        ));
        assert!(out.contains("trips closed            6490"), "{out}");
    }
    let native = ok(&tripflow(
        d,
        &["--native", "replay", "--state", "native", "nyc.ndjson"],
    ));
    assert!(native.contains("trips closed            6490"), "{native}");
}

/// Replays `<name>.ndjson` in `d` into the store `<name>`: the KPI CSV and the JSON summary.
fn replay_into(d: &std::path::Path, name: &str, zone: &str) -> (String, serde_json::Value) {
    let (events, csv) = (format!("{name}.ndjson"), format!("{name}.csv"));
    let summary = ok(&tripflow(
        d,
        &[
            "replay",
            "--state",
            name,
            "--timezone",
            zone,
            "--kpi-out",
            &csv,
            "--json",
            &events,
        ],
    ));
    (
        std::fs::read_to_string(d.join(&csv)).unwrap(),
        serde_json::from_str(&summary).unwrap(),
    )
}

/// `convert csv` on two schemas unlike TLC's, each through a replay to its KPIs (worked out by
/// hand in fixtures/convert/README.md).
#[test]
fn convert_csv_maps_other_schemas_to_the_same_kpis() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let convert = fixtures().join("convert");
    let berlin = convert.join("rides-berlin.csv");
    let unix = convert.join("trips-unix.csv");

    // Local Berlin times (one in the skipped DST hour), ids from a column, an open ride, a
    // negative fare and an unreadable date.
    let err = String::from_utf8(
        tripflow(
            d,
            &[
                "convert",
                "csv",
                berlin.to_str().unwrap(),
                "--start",
                "started_at",
                "--end",
                "ended_at",
                "--fare",
                "price_eur",
                "--id",
                "ride_id",
                "--timezone",
                "Europe/Berlin",
                "--out",
                "berlin.ndjson",
            ],
        )
        .stderr,
    )
    .unwrap();
    assert!(err.contains("converted 8 rows into 15 events"), "{err}");
    let (csv, summary) = replay_into(d, "berlin", "Europe/Berlin");
    assert_eq!(
        csv,
        "date,trip_count,total_fare,average_fare,min_fare,max_fare\n\
         2024-03-30,2,10.50,5.25,4.50,6.00\n\
         2024-03-31,2,8.30,4.15,3.10,5.20\n\
         2024-04-01,1,7.25,7.25,7.25,7.25\n"
    );
    assert_eq!(summary["rejected"]["bad_fare"], 1);
    assert_eq!(summary["rejected"]["bad_timestamp"], 1);
    assert_eq!(summary["store"]["open"], 3);

    // Unix seconds, durations with decimals, semicolons, ids from row numbers, an empty and an
    // unreadable duration.
    ok(&tripflow(
        d,
        &[
            "convert",
            "csv",
            unix.to_str().unwrap(),
            "--start",
            "pickup_unix",
            "--duration-seconds",
            "duration_s",
            "--fare",
            "fare",
            "--delimiter",
            ";",
            "--prefix",
            "hail",
            "--out",
            "unix.ndjson",
        ],
    ));
    let events = std::fs::read_to_string(d.join("unix.ndjson")).unwrap();
    assert!(events.starts_with(
        "{\"trip_id\":\"hail-1\",\"event_type\":\"trip_start\",\"timestamp\":\"2024-06-01T00:00:00Z\"}\n"
    ));
    let (csv, summary) = replay_into(d, "unix", "UTC");
    assert_eq!(
        csv,
        "date,trip_count,total_fare,average_fare,min_fare,max_fare\n\
         2024-06-01,2,42.40,21.20,12.40,30.00\n\
         2024-06-02,1,8.00,8.00,8.00,8.00\n\
         2024-06-03,1,15.55,15.55,15.55,15.55\n"
    );
    assert_eq!(summary["rejected"]["bad_timestamp"], 1);
    assert_eq!(summary["store"]["open"], 2);

    // Mistakes say what to do.
    let err = failed(&tripflow(
        d,
        &[
            "convert",
            "csv",
            unix.to_str().unwrap(),
            "--start",
            "pickup_unix",
            "--end",
            "x",
            "--fare",
            "fare",
        ],
    ));
    assert!(
        err.contains("no column \"pickup_unix\"") || err.contains("its columns are"),
        "{err}"
    );
    let err = failed(&tripflow(
        d,
        &[
            "convert",
            "csv",
            berlin.to_str().unwrap(),
            "--start",
            "started_at",
            "--fare",
            "price_eur",
        ],
    ));
    assert!(
        err.contains("--end") && err.contains("--duration-seconds"),
        "{err}"
    );
    let err = failed(&tripflow(
        d,
        &[
            "convert",
            "csv",
            berlin.to_str().unwrap(),
            "--start",
            "started_at",
            "--end",
            "ended_at",
            "--duration-seconds",
            "x",
            "--fare",
            "price_eur",
        ],
    ));
    assert!(err.contains("cannot be used with"), "{err}");
    let err = failed(&tripflow(
        d,
        &[
            "convert",
            "csv",
            berlin.to_str().unwrap(),
            "--start",
            "started_at",
            "--end",
            "ended_at",
            "--fare",
            "price_eur",
            "--delimiter",
            "ab",
        ],
    ));
    assert!(err.contains("one ASCII character"), "{err}");
}

/// A replay killed mid-file (SIGKILL: no destructor, no rollback by the process) loses at most
/// its batch in flight; running the same replay again gives the KPI CSV and store of an
/// uninterrupted replay, byte for byte.
#[test]
fn a_replay_killed_mid_file_and_rerun_equals_one_that_was_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&tripflow(
        d,
        &[
            "generate",
            "--trips",
            "150000",
            "--seed",
            "3",
            "--shuffle",
            "--duplicates",
            "0.02",
            "--poison",
            "0.001",
            "--out",
            "events.ndjson",
        ],
    ));
    let clean = ok(&tripflow(
        d,
        &[
            "replay",
            "--state",
            "clean",
            "--kpi-out",
            "clean.csv",
            "--json",
            "events.ndjson",
        ],
    ));

    let mut child = Command::new(env!("CARGO_BIN_EXE_tripflow"))
        // Small batches: many commits, so the kill lands between two of them.
        .args([
            "replay",
            "--state",
            "killed",
            "--batch-lines",
            "2048",
            "events.ndjson",
        ])
        .current_dir(d)
        .env("TRIPFLOW_CACHE_DIR", d.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a few batches' events (each batch appends ~200 KB to the log), then kill.
    let log = d.join("killed/events.log");
    let started = std::time::Instant::now();
    while std::fs::metadata(&log).map_or(0, |m| m.len()) < 1 << 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before it could be killed"
        );
        assert!(
            started.elapsed().as_secs() < 120,
            "no batch committed in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "killed too late: the replay had finished"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let rerun = ok(&tripflow(
        d,
        &[
            "replay",
            "--state",
            "killed",
            "--kpi-out",
            "killed.csv",
            "--json",
            "events.ndjson",
        ],
    ));
    assert_eq!(
        std::fs::read(d.join("killed.csv")).unwrap(),
        std::fs::read(d.join("clean.csv")).unwrap()
    );
    let (clean, rerun): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&clean).unwrap(),
        serde_json::from_str(&rerun).unwrap(),
    );
    assert_eq!(
        rerun["store"], clean["store"],
        "the store holds what an uninterrupted replay's does"
    );
    // The rerun found the killed run's committed batches: their events are duplicates now.
    assert!(rerun["duplicates"].as_u64() > clean["duplicates"].as_u64());
}
