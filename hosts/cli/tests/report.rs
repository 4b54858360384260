//! The report page as a reader sees it: rendered by `tripflow`, loaded from a file in headless
//! Chromium (Debian's `chromium`, driven by `tools/browser/inspect-report.mjs`; both installed
//! by `scripts/install-browser.sh`), its numbers checked against the KPI CSV.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{fixtures, ok, tripflow};
use serde_json::Value;

fn root() -> PathBuf {
    fixtures().join("..")
}

/// What Chromium shows of `page` (and a full-page screenshot, when asked).
fn inspect(page: &Path, screenshot: Option<&Path>) -> Value {
    let browser = root().join("tools/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir()
            && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Chromium and playwright-core: run scripts/install-browser.sh"
    );
    let mut cmd = Command::new("node");
    cmd.arg(browser.join("inspect-report.mjs")).arg(page);
    if let Some(s) = screenshot {
        cmd.arg(s);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("running node");
    assert!(
        out.status.success(),
        "inspect-report.mjs failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// `[[date, value], ...]` of a chart.
fn marks(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| (m[0].as_str().unwrap().into(), m[1].as_str().unwrap().into()))
        .collect()
}

/// The CSV's data lines, split into fields.
fn csv_rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

/// Checks everything on the page that must equal the CSV: the table cell by cell, every
/// chart mark, the gaps (the days of `range` without a CSV row), and the summary.
fn assert_page_matches_csv(seen: &Value, csv: &str, range: &[String]) {
    let rows = csv_rows(csv);
    assert_eq!(
        strings(&seen["header"]).join(","),
        csv.lines().next().unwrap(),
        "the table's header is the CSV's"
    );
    let table: Vec<Vec<String>> = seen["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(strings)
        .collect();
    assert_eq!(table, rows, "the table is the CSV, cell by cell");
    let column = |i: usize| -> Vec<(String, String)> {
        rows.iter().map(|r| (r[0].clone(), r[i].clone())).collect()
    };
    assert_eq!(marks(&seen["trips_bars"]), column(1), "trip bars");
    assert_eq!(marks(&seen["total_bars"]), column(2), "total fare bars");
    assert_eq!(marks(&seen["average_dots"]), column(3), "average points");
    let bands: Vec<Vec<String>> = seen["bands"]
        .as_array()
        .unwrap()
        .iter()
        .map(strings)
        .collect();
    let want: Vec<Vec<String>> = rows
        .iter()
        .map(|r| vec![r[0].clone(), r[4].clone(), r[5].clone()])
        .collect();
    assert_eq!(bands, want, "min-max bands");

    let with: BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let gaps: Vec<String> = range
        .iter()
        .filter(|d| !with.contains(d.as_str()))
        .cloned()
        .collect();
    assert_eq!(strings(&seen["gap_rows"]), gaps, "gap rows");
    for chart in ["trips", "total", "average"] {
        assert_eq!(strings(&seen["gap_marks"][chart]), gaps, "gaps on {chart}");
    }

    let trips: u64 = rows.iter().map(|r| r[1].parse::<u64>().unwrap()).sum();
    let cents = |s: &str| -> i64 { s.replace('.', "").parse().unwrap() };
    let total: i64 = rows.iter().map(|r| cents(&r[2])).sum();
    let s = &seen["summary"];
    assert_eq!(s["sum-days"], range.len().to_string());
    assert_eq!(s["sum-days-with-trips"], rows.len().to_string());
    assert_eq!(s["sum-trips"], trips.to_string());
    assert_eq!(
        s["sum-total"],
        format!("{}.{:02}", total / 100, total % 100)
    );
    let min = rows.iter().map(|r| cents(&r[4])).min().unwrap();
    let max = rows.iter().map(|r| cents(&r[5])).max().unwrap();
    assert_eq!(s["sum-min"], format!("{}.{:02}", min / 100, min % 100));
    assert_eq!(s["sum-max"], format!("{}.{:02}", max / 100, max % 100));
}

/// Every date from `from` to `to`, inclusive.
fn dates(from: &str, to: &str) -> Vec<String> {
    let days = |s: &str| -> i64 {
        let y: i64 = s[0..4].parse().unwrap();
        let m: i64 = s[5..7].parse().unwrap();
        let d: i64 = s[8..10].parse().unwrap();
        // Days from civil (Howard Hinnant's algorithm, counted from 0000-03-01).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy
    };
    let civil = |z: i64| -> String {
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!("{y:04}-{m:02}-{d:02}")
    };
    (days(from)..=days(to)).map(civil).collect()
}

#[test]
fn report_in_chromium_shows_the_csv_accounting_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A plain file name, as a user's would appear in the provenance.
    let input = "nyc-tlc-2019-03.ndjson";
    std::fs::copy(
        root().join("fixtures/cases/nyc-tlc-2019-03/input-1.ndjson"),
        d.join(input),
    )
    .unwrap();
    let zone = "America/New_York";

    let summary: Value = serde_json::from_str(&ok(&tripflow(
        d,
        &[
            "replay",
            "--timezone",
            zone,
            "--kpi-out",
            "kpi.csv",
            "--report",
            "replay.html",
            "--json",
            input,
        ],
    )))
    .unwrap();
    let csv = std::fs::read_to_string(d.join("kpi.csv")).unwrap();
    // `tripflow report` renders the same bytes as `replay --report` for the same store.
    ok(&tripflow(
        d,
        &["report", "--timezone", zone, "--out", "report.html"],
    ));
    let page = std::fs::read(d.join("report.html")).unwrap();
    assert_eq!(page, std::fs::read(d.join("replay.html")).unwrap());

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nyc-report.png");
    let seen = inspect(&d.join("report.html"), Some(&shot));
    println!("screenshot of the NYC sample's report: {}", shot.display());

    // Self-contained: the only request is the page itself; no script, no errors.
    assert_eq!(
        strings(&seen["requests"]),
        vec![seen["url"].as_str().unwrap().to_owned()]
    );
    assert_eq!(seen["errors"], Value::Array(vec![]));
    assert_eq!(seen["scripts"], 0);

    let rows = csv_rows(&csv);
    let range = dates(&rows[0][0], &rows[rows.len() - 1][0]);
    assert_page_matches_csv(&seen, &csv, &range);
    assert_eq!(
        seen["title"],
        format!(
            "tripflow daily fare KPIs, {} to {}",
            range[0],
            range[range.len() - 1]
        )
    );

    // The accounting is the replay's (a fresh store: one replay).
    let acc = &seen["accounting"];
    let n = |v: &Value| v.as_u64().unwrap().to_string();
    assert_eq!(acc["acc-read"], n(&summary["records"]));
    assert_eq!(acc["acc-stored"], n(&summary["stored"]));
    assert_eq!(acc["acc-duplicates"], n(&summary["duplicates"]));
    assert_eq!(acc["acc-completed"], n(&summary["store"]["completed"]));
    assert_eq!(acc["acc-open"], n(&summary["store"]["open"]));
    assert_eq!(acc["acc-rejected"], n(&summary["store"]["quarantined"]));
    // The sample's negative fares, with three examples and their original bytes.
    let rejects = seen["rejects"].as_array().unwrap();
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(rejects[0]["reason"], "bad_fare");
    assert_eq!(
        rejects[0]["summary"],
        format!("bad_fare: {} records", summary["rejected"]["bad_fare"])
    );
    assert_eq!(rejects[0]["examples"], 3);

    // Provenance: the component that computed the numbers, the contract, the zone, the input.
    let component = ok(&tripflow(d, &["component"]));
    let sha = component.split("sha256:").nth(1).unwrap()[..64].to_owned();
    let prov: Vec<Vec<String>> = seen["provenance"]
        .as_array()
        .unwrap()
        .iter()
        .map(strings)
        .collect();
    for want in [
        ["core component sha256", sha.as_str()],
        ["contract", "tripflow:core@0.7.0"],
        ["time zone", zone],
        ["input", input],
    ] {
        assert!(
            prov.contains(&want.map(str::to_owned).to_vec()),
            "{want:?} in {prov:?}"
        );
    }

    // Readable on a phone (nothing wider than the screen), printable, and a real picture.
    assert!(
        seen["phone"]["page_width"].as_u64().unwrap() <= 390,
        "{}",
        seen["phone"]
    );
    assert!(
        seen["pdf"]["pages"].as_u64().unwrap() >= 1,
        "{}",
        seen["pdf"]
    );
    let png = &seen["screenshot"];
    assert_eq!(png["width"], 1000);
    assert!(png["height"].as_u64().unwrap() > 1500, "{png}");
    let bytes = std::fs::metadata(&shot).unwrap().len();
    assert_eq!(png["bytes"], bytes);
    assert!(
        (50_000..5_000_000).contains(&bytes),
        "screenshot is {bytes} bytes"
    );

    // A range that starts before the first trip: the days without trips are gaps, everywhere.
    let (from, to) = ("2019-02-25", "2019-03-03");
    ok(&tripflow(
        d,
        &[
            "kpi",
            "--timezone",
            zone,
            "--from",
            from,
            "--to",
            to,
            "--out",
            "range.csv",
        ],
    ));
    ok(&tripflow(
        d,
        &[
            "report",
            "--timezone",
            zone,
            "--from",
            from,
            "--to",
            to,
            "--out",
            "range.html",
        ],
    ));
    let range_csv = std::fs::read_to_string(d.join("range.csv")).unwrap();
    let seen = inspect(&d.join("range.html"), None);
    assert_page_matches_csv(&seen, &range_csv, &dates(from, to));
    assert_eq!(
        strings(&seen["gap_rows"]),
        ["2019-02-25", "2019-02-26", "2019-02-27"]
    );
}

#[test]
fn report_refuses_what_it_cannot_show() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = tripflow(d, &["report", "--out", "r.html"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("run `tripflow replay"),
        "{err}"
    );
    let nyc = root().join("fixtures/cases/nyc-tlc-2019-03/input-1.ndjson");
    ok(&tripflow(d, &["replay", nyc.to_str().unwrap()]));
    for (args, says) in [
        (&["--from", "2019-3-1"][..], "YYYY-MM-DD"),
        (
            &["--from", "2019-03-10", "--to", "2019-03-01"][..],
            "the range is empty",
        ),
        (&["--timezone", "Mars/Olympus"][..], "Mars/Olympus"),
    ] {
        let mut all = vec!["report", "--out", "r.html"];
        all.extend_from_slice(args);
        let out = tripflow(d, &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        assert!(!d.join("r.html").exists(), "no page is written on an error");
    }
}
