//! The KPI report page: one self-contained HTML file (inline CSS and SVG, no script, no
//! network) rendered from KPI rows, the host's accounting and the provenance.
//!
//! Every host renders it here, so the CLI's page and the one the KPI function publishes are the
//! same bytes for the same rows and range; only what a host alone knows (its accounting, its
//! inputs, its name) differs, and that lives in the `accounting` and `provenance` sections.
//!
//! Everything is integer arithmetic — chart coordinates are hundredths of a unit — so the page
//! does not depend on a platform's floating point or `libm`. Numbers are formatted as in the
//! KPI CSV (money with exactly two decimals, counts as plain integers).

use std::fmt::Write;

use crate::kpi::{CSV_HEADER, average_half_even};
use crate::money::push_cents;
use crate::time::{format_date, parse_date};
use crate::types::{DayKpi, KpiError};

/// A rejected record shown as an example of its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectExample {
    /// Where it came from (file name, Kinesis shard, ...).
    pub source: String,
    /// Its line (1-based) or sequence position in `source`.
    pub line: u64,
    /// The core's detail for the rejection.
    pub detail: String,
    /// Its original bytes as text (hosts may cut long records short).
    pub raw: String,
}

/// The records rejected for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectGroup {
    /// The reason code, e.g. `bad_fare`.
    pub reason: String,
    /// How many records.
    pub count: u64,
    /// A few of them.
    pub examples: Vec<RejectExample>,
}

/// What happened to the events behind the KPIs, as far as the host knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Non-blank records read, when the host counted them.
    pub records_read: Option<u64>,
    /// Blank lines skipped, when the host counted them.
    pub blank_lines: Option<u64>,
    /// Exact duplicates, when the host counted them.
    pub duplicates: Option<u64>,
    /// Stored events (first copies).
    pub stored_events: u64,
    /// Trips counted in the KPIs.
    pub completed: u64,
    /// Trips whose end is before their start.
    pub invalid: u64,
    /// Trips without a fare.
    pub no_fare: u64,
    /// Trips with one half, orphans included.
    pub open: u64,
    /// Open trips marked as orphans.
    pub orphaned: u64,
    /// Rejected records by reason.
    pub rejected: Vec<RejectGroup>,
}

/// Where the page's numbers come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The host that rendered the page, e.g. `tripflow CLI 0.1.0`.
    pub host: String,
    /// The sha256 of the component that computed the KPIs (hex), or a description of the core.
    pub component_sha256: String,
    /// What the host read: file names, a table, an S3 object.
    pub inputs: Vec<String>,
    /// What the accounting covers, or why there is none, in the host's words.
    pub accounting_note: String,
}

/// Everything a report page shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportRequest {
    /// The IANA time zone of the KPI days.
    pub zone: String,
    /// First day shown; `None`: the first day of `rows`.
    pub from: Option<String>,
    /// Last day shown; `None`: the last day of `rows`.
    pub to: Option<String>,
    /// KPI rows (`kpi.finish` or `read_csv`); rows outside the range are left out.
    pub rows: Vec<DayKpi>,
    /// The host's accounting, when it has one.
    pub accounting: Option<Accounting>,
    /// Provenance.
    pub provenance: Provenance,
}

/// The longest range a page shows, in days (about 27 years): a larger range is a typo.
pub const MAX_REPORT_DAYS: i64 = 10_000;

/// Reads KPI rows back from the KPI CSV (`render_csv`'s output, e.g. the combined file in S3).
pub fn read_csv(csv: &str) -> Result<Vec<DayKpi>, KpiError> {
    let mut lines = csv.lines();
    match lines.next() {
        Some(h) if h == CSV_HEADER => {}
        other => {
            return Err(KpiError::BadDate(format!(
                "not a tripflow KPI CSV: the header is {:?}, expected {CSV_HEADER:?}",
                other.unwrap_or("")
            )));
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = |what: &str| {
            KpiError::BadDate(format!(
                "KPI CSV line {}: {what} in {line:?}: expected {CSV_HEADER}",
                i + 2
            ))
        };
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 6 {
            return Err(bad("not 6 fields"));
        }
        if parse_date(f[0]).is_none() {
            return Err(bad("a bad date"));
        }
        let cents = |s: &str| parse_cents(s).ok_or_else(|| bad("a bad amount"));
        rows.push(DayKpi {
            date: f[0].to_owned(),
            trip_count: f[1].parse().map_err(|_| bad("a bad trip count"))?,
            total_cents: cents(f[2])?,
            average_cents: cents(f[3])?,
            min_cents: cents(f[4])?,
            max_cents: cents(f[5])?,
        });
    }
    Ok(rows)
}

/// `-?digits.dd` exactly as `push_cents` writes it.
fn parse_cents(s: &str) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.')?;
    if whole.is_empty()
        || frac.len() != 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let v = whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac.parse::<i64>().ok()?)?;
    Some(if neg { -v } else { v })
}

/// Renders the report page.
pub fn render_html(req: &ReportRequest) -> Result<String, KpiError> {
    crate::kpi::Zone::new(&req.zone)?;
    let bound = |d: &Option<String>| {
        d.as_deref()
            .map(|s| {
                parse_date(s).ok_or_else(|| {
                    KpiError::BadDate(format!("bad date {s:?}: use YYYY-MM-DD, e.g. 2019-03-10"))
                })
            })
            .transpose()
    };
    let mut rows: Vec<(i64, &DayKpi)> = Vec::with_capacity(req.rows.len());
    for r in &req.rows {
        let day = parse_date(&r.date)
            .ok_or_else(|| KpiError::BadDate(format!("bad KPI row date {:?}", r.date)))?;
        rows.push((day, r));
    }
    rows.sort_by_key(|(d, _)| *d);
    let lo = bound(&req.from)?.or(rows.first().map(|(d, _)| *d));
    let hi = bound(&req.to)?.or(rows.last().map(|(d, _)| *d));
    let range = match (lo, hi) {
        (Some(lo), Some(hi)) if lo > hi => {
            return Err(KpiError::BadDate(format!(
                "the range is empty: {} is after {}",
                format_date(lo),
                format_date(hi)
            )));
        }
        (Some(lo), Some(hi)) if hi - lo >= MAX_REPORT_DAYS => {
            return Err(KpiError::BadDate(format!(
                "{} to {} is more than {MAX_REPORT_DAYS} days: choose a shorter range with --from/--to",
                format_date(lo),
                format_date(hi)
            )));
        }
        (Some(lo), Some(hi)) => Some((lo, hi)),
        _ => None,
    };
    rows.retain(|(d, _)| range.is_some_and(|(lo, hi)| (lo..=hi).contains(d)));

    // One slot per day of the range: the row, or None for a day without trips.
    let days: Vec<(i64, Option<&DayKpi>)> = match range {
        Some((lo, hi)) => {
            let mut it = rows.iter().peekable();
            (lo..=hi)
                .map(|d| match it.peek() {
                    Some((rd, r)) if *rd == d => {
                        it.next();
                        (d, Some(*r))
                    }
                    _ => (d, None),
                })
                .collect()
        }
        None => Vec::new(),
    };

    let mut h = Html::default();
    let title = match range {
        Some((lo, hi)) => format!(
            "tripflow daily fare KPIs, {} to {}",
            format_date(lo),
            format_date(hi)
        ),
        None => "tripflow daily fare KPIs".to_owned(),
    };
    h.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.raw("<meta name=\"generator\" content=\"");
    h.text(crate::WIT_PACKAGE);
    h.raw("\">\n<title>");
    h.text(&title);
    h.raw("</title>\n<style>");
    h.raw(STYLE);
    h.raw("</style>\n</head>\n<body>\n<main>\n<header>\n<h1>");
    h.text(&title);
    h.raw("</h1>\n<p class=\"sub\">KPI days are calendar dates in <b>");
    h.text(&req.zone);
    h.raw("</b>.</p>\n</header>\n");

    summary(&mut h, &days);
    if days.is_empty() {
        h.raw("<p class=\"empty\">No completed trips: there is nothing to chart.</p>\n");
    } else {
        charts(&mut h, &days);
        table(&mut h, &days);
    }
    accounting(
        &mut h,
        req.accounting.as_ref(),
        &req.provenance.accounting_note,
    );
    provenance(&mut h, req);
    h.raw("</main>\n</body>\n</html>\n");
    Ok(h.0)
}

/// The page's style sheet: readable on a phone, printable, no external resources.
const STYLE: &str = "
:root{--fg:#1b1f24;--muted:#59636e;--line:#d1d9e0;--bar:#2f6fb3;--bar2:#1a7f64;--band:#f2c97d;--avg:#9a4d00;--gap:#b8bfc7}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:#fff}
main{max-width:980px;margin:0 auto;padding:16px}
h1{font-size:1.45rem;margin:.2rem 0}
h2{font-size:1.1rem;margin:1.6rem 0 .5rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
.sub,.note,figcaption{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:8px;margin:12px 0}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.card .v{font-size:1.25rem;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:.85rem}
figure{margin:12px 0 20px}
svg{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:var(--muted)}
svg .axis{stroke:var(--line)}
svg .bar{fill:var(--bar)}
svg .bar.fare{fill:var(--bar2)}
svg .band{fill:var(--band)}
svg .avg{fill:none;stroke:var(--avg);stroke-width:2}
svg .gap{fill:var(--gap)}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
tr.gap td{color:var(--muted);font-style:italic}
td.l,th.l{text-align:left;white-space:normal}
pre{white-space:pre-wrap;word-break:break-all;background:#f6f8fa;padding:6px;border-radius:4px;margin:4px 0;font-size:.85rem}
details{margin:4px 0}
code{font-size:.9em}
.empty{padding:12px;border:1px dashed var(--line)}
@media (max-width:640px){svg text{font-size:20px}}
@media print{main{max-width:none;padding:0}figure,table,section{break-inside:avoid}.scroll{overflow:visible}a{color:inherit}}
";

/// An HTML buffer with escaping.
#[derive(Default)]
struct Html(String);

impl Html {
    fn raw(&mut self, s: &str) {
        self.0.push_str(s);
    }

    fn text(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
    }

    fn cents(&mut self, c: i64) {
        push_cents(&mut self.0, c);
    }

    fn int(&mut self, n: u64) {
        let _ = write!(self.0, "{n}");
    }

    /// A fixed-point number in hundredths, e.g. `12345` → `123.45`.
    fn coord(&mut self, hundredths: i64) {
        push_cents(&mut self.0, hundredths);
    }
}

fn summary(h: &mut Html, days: &[(i64, Option<&DayKpi>)]) {
    let with: Vec<&DayKpi> = days.iter().filter_map(|(_, r)| *r).collect();
    let trips: u64 = with.iter().map(|r| r.trip_count).sum();
    let total: i64 = with.iter().map(|r| r.total_cents).sum();
    h.raw("<section id=\"summary\" class=\"cards\">\n");
    let card = |h: &mut Html, id: &str, key: &str, value: &dyn Fn(&mut Html)| {
        h.raw("<div class=\"card\"><div class=\"v\" id=\"");
        h.raw(id);
        h.raw("\">");
        value(h);
        h.raw("</div><div class=\"k\">");
        h.raw(key);
        h.raw("</div></div>\n");
    };
    card(h, "sum-days", "days in range", &|h| {
        h.int(days.len() as u64)
    });
    card(h, "sum-days-with-trips", "days with trips", &|h| {
        h.int(with.len() as u64)
    });
    card(h, "sum-trips", "trips", &|h| h.int(trips));
    card(h, "sum-total", "total fare", &|h| h.cents(total));
    if trips > 0 {
        let min = with.iter().map(|r| r.min_cents).min().unwrap_or(0);
        let max = with.iter().map(|r| r.max_cents).max().unwrap_or(0);
        card(h, "sum-average", "average fare", &|h| {
            h.cents(average_half_even(total, trips))
        });
        card(h, "sum-min", "lowest fare", &|h| h.cents(min));
        card(h, "sum-max", "highest fare", &|h| h.cents(max));
    }
    h.raw("</section>\n");
}

/// Chart geometry, in SVG units (the view box scales to the page width).
const W: i64 = 960;
const H: i64 = 220;
const LEFT: i64 = 96;
const RIGHT: i64 = 10;
const TOP: i64 = 10;
const BOTTOM: i64 = 40;

/// A "nice" axis maximum (1, 2 or 5 × 10^k, at least `max`) and its tick step.
fn nice_axis(max: i64) -> (i64, i64) {
    let max = max.max(1);
    let mut step = 1i64;
    loop {
        for m in [1, 2, 5] {
            let s = step.saturating_mul(m);
            if s.saturating_mul(4) >= max {
                let top = (max / s + i64::from(max % s != 0)).saturating_mul(s);
                return (top, s);
            }
        }
        step = step.saturating_mul(10);
    }
}

struct Chart {
    n: i64,
    top: i64,
}

impl Chart {
    /// Left edge of day `i`'s slot, hundredths.
    fn x(&self, i: i64) -> i64 {
        LEFT * 100 + i * (W - LEFT - RIGHT) * 100 / self.n
    }

    /// y of a value, hundredths.
    fn y(&self, v: i64) -> i64 {
        let plot = (H - TOP - BOTTOM) as i128 * 100;
        let v = i128::from(v.clamp(0, self.top));
        (TOP as i128 * 100 + plot - v * plot / i128::from(self.top)) as i64
    }
}

/// The frame of a chart: y axis with ticks (`money` formats them as money), x labels.
fn frame(
    h: &mut Html,
    id: &str,
    label: &str,
    days: &[(i64, Option<&DayKpi>)],
    max: i64,
    money: bool,
) -> Chart {
    let (top, step) = nice_axis(max);
    let c = Chart {
        n: days.len() as i64,
        top,
    };
    h.raw("<svg id=\"");
    h.raw(id);
    let _ = writeln!(
        h.0,
        "\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{label}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let mut v = 0;
    while v <= top {
        let y = c.y(v);
        h.raw("<line class=\"axis\" x1=\"");
        h.int(LEFT as u64);
        let _ = write!(h.0, "\" x2=\"{}\" y1=\"", W - RIGHT);
        h.coord(y);
        h.raw("\" y2=\"");
        h.coord(y);
        h.raw("\"/><text x=\"");
        h.int((LEFT - 6) as u64);
        h.raw("\" y=\"");
        h.coord(y + 400);
        h.raw("\" text-anchor=\"end\">");
        if money {
            h.cents(v);
        } else {
            h.int(v as u64);
        }
        h.raw("</text>\n");
        v += step;
    }
    // Date labels: the first day, then every week, and the last day if there is room.
    let every = if c.n <= 10 { 1 } else { 7.max(c.n / 12) };
    for (i, (d, _)) in days.iter().enumerate() {
        let i = i as i64;
        let last = i == c.n - 1;
        if i % every != 0 && !(last && (i % every) * 2 > every) {
            continue;
        }
        let date = format_date(*d);
        h.raw("<text x=\"");
        h.coord((c.x(i) + c.x(i + 1)) / 2);
        let _ = write!(h.0, "\" y=\"{}\" text-anchor=\"middle\">", H - BOTTOM + 24);
        h.text(&date[5..]);
        h.raw("</text>\n");
    }
    c
}

/// A small grey mark on the axis for a day without trips.
fn gap_mark(h: &mut Html, c: &Chart, i: i64, date: &str) {
    let (x0, x1) = (c.x(i), c.x(i + 1));
    let w = (x1 - x0).max(100);
    h.raw("<rect class=\"gap\" data-date=\"");
    h.raw(date);
    h.raw("\" x=\"");
    h.coord(x0 + (x1 - x0 - w * 6 / 10) / 2);
    h.raw("\" y=\"");
    h.coord(c.y(0) - 300);
    h.raw("\" width=\"");
    h.coord(w * 6 / 10);
    h.raw("\" height=\"300\"><title>");
    h.raw(date);
    h.raw(": no trips</title></rect>\n");
}

fn bars(
    h: &mut Html,
    days: &[(i64, Option<&DayKpi>)],
    id: &str,
    label: &str,
    class: &str,
    money: bool,
    value: impl Fn(&DayKpi) -> i64,
) {
    let max = days
        .iter()
        .filter_map(|(_, r)| r.map(&value))
        .max()
        .unwrap_or(1);
    let c = frame(h, id, label, days, max, money);
    for (i, (d, row)) in days.iter().enumerate() {
        let i = i as i64;
        let date = format_date(*d);
        let Some(r) = row else {
            gap_mark(h, &c, i, &date);
            continue;
        };
        let v = value(r);
        let (x0, x1) = (c.x(i), c.x(i + 1));
        let pad = (x1 - x0) / 8;
        let mut shown = String::new();
        if money {
            push_cents(&mut shown, v);
        } else {
            let _ = write!(shown, "{v}");
        }
        h.raw("<rect class=\"");
        h.raw(class);
        h.raw("\" data-date=\"");
        h.raw(&date);
        h.raw("\" data-value=\"");
        h.raw(&shown);
        h.raw("\" x=\"");
        h.coord(x0 + pad);
        h.raw("\" y=\"");
        h.coord(c.y(v));
        h.raw("\" width=\"");
        h.coord(x1 - x0 - 2 * pad);
        h.raw("\" height=\"");
        h.coord(c.y(0) - c.y(v));
        h.raw("\"><title>");
        h.raw(&date);
        h.raw(": ");
        h.raw(&shown);
        h.raw(if money { "" } else { " trips" });
        h.raw("</title></rect>\n");
    }
    h.raw("</svg>\n");
}

fn charts(h: &mut Html, days: &[(i64, Option<&DayKpi>)]) {
    h.raw("<section id=\"charts\">\n<h2>By day</h2>\n");
    h.raw("<figure>\n<figcaption>Completed trips per day</figcaption>\n");
    bars(
        h,
        days,
        "chart-trips",
        "Completed trips per day",
        "bar",
        false,
        |r| r.trip_count.min(i64::MAX as u64) as i64,
    );
    h.raw("</figure>\n<figure>\n<figcaption>Total fare per day</figcaption>\n");
    bars(
        h,
        days,
        "chart-total",
        "Total fare per day",
        "bar fare",
        true,
        |r| r.total_cents,
    );
    h.raw("</figure>\n<figure>\n<figcaption>Average fare per day, with the day's lowest to highest fare as a band</figcaption>\n");
    let max = days
        .iter()
        .filter_map(|(_, r)| r.map(|r| r.max_cents))
        .max()
        .unwrap_or(1);
    let c = frame(
        h,
        "chart-average",
        "Average fare per day with min-max band",
        days,
        max,
        true,
    );
    // Bands first, then the average line broken at every day without trips.
    for (i, (d, row)) in days.iter().enumerate() {
        let i = i as i64;
        let date = format_date(*d);
        let Some(r) = row else {
            gap_mark(h, &c, i, &date);
            continue;
        };
        let (x0, x1) = (c.x(i), c.x(i + 1));
        let (y_max, y_min) = (c.y(r.max_cents), c.y(r.min_cents));
        h.raw("<rect class=\"band\" data-date=\"");
        h.raw(&date);
        h.raw("\" data-min=\"");
        h.cents(r.min_cents);
        h.raw("\" data-max=\"");
        h.cents(r.max_cents);
        h.raw("\" x=\"");
        h.coord(x0);
        h.raw("\" y=\"");
        h.coord(y_max);
        h.raw("\" width=\"");
        h.coord(x1 - x0);
        h.raw("\" height=\"");
        h.coord((y_min - y_max).max(50));
        h.raw("\"><title>");
        h.raw(&date);
        h.raw(": lowest ");
        h.cents(r.min_cents);
        h.raw(", highest ");
        h.cents(r.max_cents);
        h.raw("</title></rect>\n");
    }
    let mut path = String::new();
    let mut pen_down = false;
    for (i, (_, row)) in days.iter().enumerate() {
        match row {
            Some(r) => {
                let i = i as i64;
                let x = (c.x(i) + c.x(i + 1)) / 2;
                path.push(if pen_down { 'L' } else { 'M' });
                push_cents(&mut path, x);
                path.push(' ');
                push_cents(&mut path, c.y(r.average_cents));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    h.raw("<path class=\"avg\" d=\"");
    h.raw(&path);
    h.raw("\"/>\n");
    for (i, (d, row)) in days.iter().enumerate() {
        if let Some(r) = row {
            let i = i as i64;
            h.raw("<circle class=\"avg-dot\" fill=\"#9a4d00\" r=\"2.5\" data-date=\"");
            h.raw(&format_date(*d));
            h.raw("\" data-value=\"");
            h.cents(r.average_cents);
            h.raw("\" cx=\"");
            h.coord((c.x(i) + c.x(i + 1)) / 2);
            h.raw("\" cy=\"");
            h.coord(c.y(r.average_cents));
            h.raw("\"><title>");
            h.raw(&format_date(*d));
            h.raw(": average ");
            h.cents(r.average_cents);
            h.raw("</title></circle>\n");
        }
    }
    h.raw("</svg>\n<p class=\"legend\"><span><i style=\"background:#9a4d00\"></i>average fare</span><span><i style=\"background:#f2c97d\"></i>lowest to highest fare</span><span><i style=\"background:#b8bfc7\"></i>day without trips</span></p>\n</figure>\n</section>\n");
}

fn table(h: &mut Html, days: &[(i64, Option<&DayKpi>)]) {
    h.raw("<section id=\"kpis\">\n<h2>Daily KPIs</h2>\n<div class=\"scroll\">\n<table id=\"kpi-table\">\n<thead><tr>");
    for col in CSV_HEADER.split(',') {
        h.raw("<th>");
        h.raw(col);
        h.raw("</th>");
    }
    h.raw("</tr></thead>\n<tbody>\n");
    for (d, row) in days {
        let date = format_date(*d);
        match row {
            Some(r) => {
                h.raw("<tr class=\"day\"><td>");
                h.raw(&date);
                h.raw("</td><td>");
                h.int(r.trip_count);
                for c in [r.total_cents, r.average_cents, r.min_cents, r.max_cents] {
                    h.raw("</td><td>");
                    h.cents(c);
                }
                h.raw("</td></tr>\n");
            }
            None => {
                h.raw("<tr class=\"gap\"><td>");
                h.raw(&date);
                h.raw("</td><td colspan=\"5\">no trips</td></tr>\n");
            }
        }
    }
    h.raw("</tbody>\n</table>\n</div>\n<p class=\"note\">The same numbers as the KPI CSV, byte for byte; a day without trips has no CSV row.</p>\n</section>\n");
}

fn accounting(h: &mut Html, a: Option<&Accounting>, note: &str) {
    h.raw("<section id=\"accounting\">\n<h2>Accounting</h2>\n");
    if !note.is_empty() {
        h.raw("<p class=\"note\">");
        h.text(note);
        h.raw("</p>\n");
    }
    let Some(a) = a else {
        h.raw("</section>\n");
        return;
    };
    let rejected: u64 = a.rejected.iter().map(|g| g.count).sum();
    h.raw("<div class=\"scroll\"><table id=\"accounting-table\"><tbody>\n");
    let row = |h: &mut Html, id: &str, key: &str, v: Option<u64>| {
        h.raw("<tr><td class=\"l\">");
        h.raw(key);
        h.raw("</td><td id=\"");
        h.raw(id);
        h.raw("\">");
        match v {
            Some(v) => h.int(v),
            None => h.raw("not counted"),
        }
        h.raw("</td></tr>\n");
    };
    row(h, "acc-read", "records read", a.records_read);
    row(h, "acc-blank", "blank lines", a.blank_lines);
    row(h, "acc-stored", "events stored", Some(a.stored_events));
    row(h, "acc-duplicates", "exact duplicates", a.duplicates);
    row(h, "acc-rejected", "records rejected", Some(rejected));
    row(h, "acc-completed", "trips completed", Some(a.completed));
    row(
        h,
        "acc-invalid",
        "trips invalid (end before start)",
        Some(a.invalid),
    );
    row(h, "acc-no-fare", "trips without a fare", Some(a.no_fare));
    row(h, "acc-open", "trips open (one half)", Some(a.open));
    row(h, "acc-orphaned", "of which orphaned", Some(a.orphaned));
    h.raw("</tbody></table></div>\n");
    if a.rejected.is_empty() {
        h.raw("<p>No record was rejected.</p>\n");
    } else {
        h.raw("<h3>Rejected records by reason</h3>\n");
        for g in &a.rejected {
            h.raw("<details class=\"reject\" data-reason=\"");
            h.text(&g.reason);
            h.raw("\"><summary><code>");
            h.text(&g.reason);
            h.raw("</code>: ");
            h.int(g.count);
            h.raw(if g.count == 1 { " record" } else { " records" });
            h.raw("</summary>\n");
            for e in &g.examples {
                h.raw("<p>");
                h.text(&e.source);
                h.raw(" line ");
                h.int(e.line);
                h.raw(": ");
                h.text(&e.detail);
                h.raw("</p>\n<pre>");
                h.text(&e.raw);
                h.raw("</pre>\n");
            }
            h.raw("</details>\n");
        }
    }
    h.raw("</section>\n");
}

fn provenance(h: &mut Html, req: &ReportRequest) {
    let p = &req.provenance;
    h.raw(
        "<section id=\"provenance\">\n<h2>Provenance</h2>\n<div class=\"scroll\"><table><tbody>\n",
    );
    let row = |h: &mut Html, key: &str, v: &str| {
        h.raw("<tr><td class=\"l\">");
        h.raw(key);
        h.raw("</td><td class=\"l\"><code>");
        h.text(v);
        h.raw("</code></td></tr>\n");
    };
    row(h, "rendered by", &p.host);
    row(h, "core component sha256", &p.component_sha256);
    row(h, "contract", crate::WIT_PACKAGE);
    row(h, "time zone", &req.zone);
    for input in &p.inputs {
        row(h, "input", input);
    }
    h.raw("</tbody></table></div>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(date: &str, n: u64, total: i64, min: i64, max: i64) -> DayKpi {
        DayKpi {
            date: date.into(),
            trip_count: n,
            total_cents: total,
            average_cents: average_half_even(total, n),
            min_cents: min,
            max_cents: max,
        }
    }

    fn request(rows: Vec<DayKpi>) -> ReportRequest {
        ReportRequest {
            zone: "America/New_York".into(),
            rows,
            provenance: Provenance {
                host: "test".into(),
                component_sha256: "abc".into(),
                inputs: vec!["<in>.ndjson".into()],
                accounting_note: String::new(),
            },
            ..ReportRequest::default()
        }
    }

    #[test]
    fn csv_round_trips() {
        let rows = vec![
            row("2019-03-01", 3, 4550, 500, 2500),
            row(
                "2019-03-04",
                1,
                10_000_000_000,
                10_000_000_000,
                10_000_000_000,
            ),
        ];
        let csv = crate::render_csv(&rows);
        assert_eq!(read_csv(&csv).unwrap(), rows);
        assert!(read_csv("date,x\n").is_err());
        let bad = csv.replace("45.50", "45.5");
        let e = read_csv(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("amount"), "{e}");
        assert_eq!(parse_cents("-0.05"), Some(-5));
        assert_eq!(parse_cents("1.5"), None);
        assert_eq!(parse_cents(".50"), None);
    }

    #[test]
    fn gaps_are_shown_and_numbers_match_the_csv() {
        let rows = vec![
            row("2019-03-01", 3, 4550, 500, 2500),
            row("2019-03-04", 2, 3001, 1000, 2001),
        ];
        let html = render_html(&request(rows.clone())).unwrap();
        // Four days, two of them gaps, in the table and on every chart.
        assert_eq!(html.matches("<tr class=\"day\">").count(), 2);
        assert_eq!(html.matches("<tr class=\"gap\">").count(), 2);
        assert_eq!(
            html.matches("class=\"gap\" data-date=\"2019-03-02\"")
                .count(),
            3
        );
        // Every CSV line is a table row, cell by cell.
        for line in crate::render_csv(&rows).lines().skip(1) {
            let cells = line.replace(',', "</td><td>");
            assert!(html.contains(&format!("<td>{cells}</td>")), "{line}");
        }
        // The average line breaks at the gap: two separate pieces.
        assert_eq!(html.matches("<path class=\"avg\" d=\"M").count(), 1);
        let d = html.split("<path class=\"avg\" d=\"").nth(1).unwrap();
        let d = &d[..d.find('"').unwrap()];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert!(html.contains("id=\"sum-trips\">5<"));
        assert!(html.contains("id=\"sum-total\">75.51<"));
        // 7551 / 5 = 1510.2 → 15.10
        assert!(html.contains("id=\"sum-average\">15.10<"));
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
    }

    #[test]
    fn range_and_escaping() {
        let mut req = request(vec![row("2019-03-01", 1, 100, 100, 100)]);
        req.from = Some("2019-02-27".into());
        req.to = Some("2019-03-01".into());
        req.provenance.inputs = vec!["a<b>&\"c\".ndjson".into()];
        req.accounting = Some(Accounting {
            rejected: vec![RejectGroup {
                reason: "bad_fare".into(),
                count: 1,
                examples: vec![RejectExample {
                    source: "x".into(),
                    line: 3,
                    detail: "fare -1 is negative".into(),
                    raw: "{\"fare\":\"<script>\"}".into(),
                }],
            }],
            ..Accounting::default()
        });
        let html = render_html(&req).unwrap();
        assert_eq!(html.matches("<tr class=\"gap\">").count(), 2);
        assert!(html.contains("a&lt;b&gt;&amp;&quot;c&quot;.ndjson"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script"));
        req.to = Some("2019-02-01".into());
        assert!(render_html(&req).is_err());
        req.to = Some("2099-02-01".into());
        assert!(
            render_html(&req)
                .unwrap_err()
                .to_string()
                .contains("shorter range")
        );
        req.zone = "Mars/Base".into();
        assert!(render_html(&req).is_err());
    }

    #[test]
    fn empty_report_renders() {
        let html = render_html(&request(Vec::new())).unwrap();
        assert!(html.contains("No completed trips"));
        assert!(html.ends_with("</html>\n"));
    }

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(0), (1, 1));
        assert_eq!(nice_axis(7), (8, 2));
        assert_eq!(nice_axis(317), (400, 100));
        assert_eq!(nice_axis(1234), (1500, 500));
        assert!(nice_axis(i64::MAX).0 > 0);
    }
}
