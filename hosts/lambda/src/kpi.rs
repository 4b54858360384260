//! kpi: completed trips of a date range → one CSV per day and the combined CSV in S3.
//!
//! Input: an EventBridge scheduled event (any payload without dates), which means yesterday
//! and today in `TIMEZONE`, or `{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}` for a manual run.
//!
//! Completed trips are read from the sparse `kpi` index, partitioned by the UTC date of the
//! trip's start. A local day lies within one UTC day either side, so the job queries
//! `from − 1 … to + 1` and never touches raw events or other days; the core then pairs each
//! trip, assigns it to its local day and drops days outside the range (`kpi.accumulate`,
//! `kpi.finish`), and renders the CSV bytes (`kpi.render-csv`).
//!
//! Output: `<KPI_DAILY_PREFIX>date=YYYY-MM-DD/daily_trip_kpis.csv` per day (a partition layout
//! Athena and Glue read directly), and the combined file at `KPI_KEY`, in which only the
//! recomputed days' lines change: lines of other days are kept byte for byte.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use chrono::NaiveDate;
use serde_json::{Value, json};
use tripflow_runtime::core::{DayKpi, DayTotals, TripFare};
use tripflow_runtime::{CoreProvider, TripCore};

use crate::metrics::{Counters, units};
use crate::retry::{Budget, describe, retry};
use crate::{App, Error, table};

/// The longest range one run may cover.
pub const MAX_DAYS: i64 = 366;
/// Trips handed to the core per `accumulate` call.
const CHUNK: usize = 16_384;

/// The days a run covers.
pub fn range(app: &App, payload: &Value) -> Result<(String, String), Error> {
    let field = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_owned);
    let (from, to) = match (field("from"), field("to")) {
        (Some(f), Some(t)) => (f, t),
        (Some(d), None) | (None, Some(d)) => (d.clone(), d),
        (None, None) => {
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            let today = app.core.session()?.day_of(&app.config.timezone, now_ns)?;
            let yesterday = parse_date(&today)?
                .pred_opt()
                .ok_or("no day before today")?
                .to_string();
            (yesterday, today)
        }
    };
    // The core validates the dates and the order.
    app.core.session()?.finish(&[], Some(&from), Some(&to))?;
    let days = (parse_date(&to)? - parse_date(&from)?).num_days() + 1;
    if days > MAX_DAYS {
        return Err(format!(
            "{from}..{to} is {days} days; one run covers at most {MAX_DAYS}: split the range"
        )
        .into());
    }
    Ok((from, to))
}

fn parse_date(s: &str) -> Result<NaiveDate, Error> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("bad date {s:?}: use YYYY-MM-DD").into())
}

/// Handles one run.
pub async fn handle(app: &App, payload: Value, budget: &Budget) -> Result<Value, Error> {
    let rcu_before = app.capacity.read_units();
    let (from, to) = range(app, &payload)?;
    let zone = app.config.timezone.clone();
    let bucket = app.config.bucket.clone().ok_or("BUCKET is not set")?;

    // Every completed trip whose start's UTC date can be a local day in the range.
    let first = parse_date(&from)?.pred_opt().ok_or("date out of range")?;
    let last = parse_date(&to)?.succ_opt().ok_or("date out of range")?;
    let mut totals: Vec<DayTotals> = Vec::new();
    let mut chunk: Vec<TripFare> = Vec::with_capacity(CHUNK);
    let mut trips_read = 0u64;
    let mut day = first;
    while day <= last {
        let mut start_key = None;
        loop {
            let page = retry(budget, "Query(kpi)", || {
                app.ddb
                    .query()
                    .table_name(&app.config.table)
                    .index_name(table::KPI_INDEX)
                    .key_condition_expression("#k = :d")
                    .expression_attribute_names("#k", table::KPI_PK)
                    .expression_attribute_values(
                        ":d",
                        AttributeValue::S(table::day_pk(&day.to_string())),
                    )
                    .set_exclusive_start_key(start_key.clone())
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
            })
            .await
            .map_err(|e| format!("Query(kpi) {day}: {}", describe(&e)))?;
            app.capacity
                .read("kpi.query", units(page.consumed_capacity()));
            let mut core = app.core.session()?;
            for item in page.items() {
                let start = table::start_from_kpi_item(item)?;
                let end = table::end_from_trip_item(item)?
                    .ok_or_else(|| format!("{}: in the kpi index without an end", start.trip_id))?;
                let trip = core.pair(&start, &end)?;
                chunk.push(TripFare {
                    status: trip.status,
                    start_ns: trip.start_ns,
                    fare_cents: trip.fare_cents,
                });
                trips_read += 1;
                if chunk.len() == CHUNK {
                    totals = app.core.session()?.accumulate(&zone, &totals, &chunk)?;
                    chunk.clear();
                }
            }
            start_key = page.last_evaluated_key().cloned();
            if start_key.is_none() {
                break;
            }
        }
        day = day.succ_opt().ok_or("date out of range")?;
    }
    if !chunk.is_empty() {
        totals = app.core.session()?.accumulate(&zone, &totals, &chunk)?;
    }
    let mut core = app.core.session()?;
    let rows = core.finish(&totals, Some(&from), Some(&to))?;

    // One object per day.
    let mut daily = Vec::new();
    for row in &rows {
        let key = format!(
            "{}date={}/daily_trip_kpis.csv",
            app.config.kpi_daily_prefix, row.date
        );
        let body = core.render_csv(std::slice::from_ref(row))?;
        put(app, &bucket, &key, body, budget).await?;
        daily.push(key);
    }

    // The combined file: recomputed days replaced, the others kept.
    let previous = get(app, &bucket, &app.config.kpi_key, budget).await?;
    let combined = merge(
        &core.render_csv(&[])?,
        previous.as_deref(),
        &rows,
        &from,
        &to,
        &mut core,
    )?;
    put(app, &bucket, &app.config.kpi_key, combined, budget).await?;

    let mut counters = Counters::default();
    counters.add("KpiDays", rows.len() as f64);
    counters.add("KpiTripsRead", trips_read as f64);
    counters.add("ConsumedReadUnits", app.capacity.read_units() - rcu_before);
    app.emit(&counters);
    tracing::info!(from = %from, to = %to, days = rows.len(), trips_read, "kpi run");
    Ok(json!({
        "from": from,
        "to": to,
        "zone": zone,
        "days": rows.len(),
        "trips": rows.iter().map(|r| r.trip_count).sum::<u64>(),
        "bucket": bucket,
        "combined_key": app.config.kpi_key,
        "daily_keys": daily,
    }))
}

/// The combined CSV: `header`, then by date the lines of `previous` outside `from..=to` and
/// the core's lines for `rows`.
pub fn merge<C: TripCore>(
    header: &str,
    previous: Option<&str>,
    rows: &[DayKpi],
    from: &str,
    to: &str,
    core: &mut C,
) -> Result<String, Error> {
    let mut lines: Vec<(String, String)> = Vec::new();
    if let Some(prev) = previous {
        let mut it = prev.lines();
        if let Some(h) = it.next()
            && h != header.trim_end()
        {
            return Err(format!(
                "the existing combined CSV has header {h:?}, not {:?}: move it away or set KPI_KEY",
                header.trim_end()
            )
            .into());
        }
        for line in it.filter(|l| !l.is_empty()) {
            let date = line.split(',').next().unwrap_or_default();
            if date < from || date > to {
                lines.push((date.to_owned(), format!("{line}\n")));
            }
        }
    }
    for row in rows {
        let csv = core.render_csv(std::slice::from_ref(row))?;
        let line = csv.strip_prefix(header).unwrap_or(&csv).to_owned();
        lines.push((row.date.clone(), line));
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = header.to_owned();
    for (_, l) in lines {
        out.push_str(&l);
    }
    Ok(out)
}

async fn put(
    app: &App,
    bucket: &str,
    key: &str,
    body: String,
    budget: &Budget,
) -> Result<(), Error> {
    retry(budget, "PutObject", || {
        app.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("text/csv; charset=utf-8")
            .body(body.clone().into_bytes().into())
            .send()
    })
    .await
    .map_err(|e| format!("PutObject s3://{bucket}/{key}: {}", describe(&e)))?;
    Ok(())
}

async fn get(app: &App, bucket: &str, key: &str, budget: &Budget) -> Result<Option<String>, Error> {
    let r = retry(budget, "GetObject", || {
        app.s3.get_object().bucket(bucket).key(key).send()
    })
    .await;
    match r {
        Ok(out) => {
            let bytes = out.body.collect().await?.into_bytes();
            Ok(Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                format!("s3://{bucket}/{key} is not UTF-8 text: move it away or set KPI_KEY")
            })?))
        }
        Err(aws_sdk_s3::error::SdkError::ServiceError(s)) if s.err().is_no_such_key() => Ok(None),
        Err(e) => Err(format!("GetObject s3://{bucket}/{key}: {}", describe(&e)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tripflow_runtime::NativeCore;

    fn row(date: &str, n: u64) -> DayKpi {
        DayKpi {
            date: date.into(),
            trip_count: n,
            total_cents: 100 * n as i64,
            average_cents: 100,
            min_cents: 100,
            max_cents: 100,
        }
    }

    #[test]
    fn merge_replaces_only_recomputed_days() {
        let mut core = NativeCore;
        let header = core.render_csv(&[]).unwrap();
        let before = core
            .render_csv(&[
                row("2019-03-01", 1),
                row("2019-03-02", 2),
                row("2019-03-04", 4),
            ])
            .unwrap();
        let merged = merge(
            &header,
            Some(&before),
            &[row("2019-03-02", 20), row("2019-03-03", 3)],
            "2019-03-02",
            "2019-03-03",
            &mut core,
        )
        .unwrap();
        let expected = core
            .render_csv(&[
                row("2019-03-01", 1),
                row("2019-03-02", 20),
                row("2019-03-03", 3),
                row("2019-03-04", 4),
            ])
            .unwrap();
        assert_eq!(merged, expected);
        // No previous file: just the rows.
        let fresh = merge(
            &header,
            None,
            &[row("2019-03-02", 2)],
            "2019-03-01",
            "2019-03-02",
            &mut core,
        )
        .unwrap();
        assert_eq!(fresh, core.render_csv(&[row("2019-03-02", 2)]).unwrap());
        // A foreign file is not silently overwritten.
        assert!(
            merge(
                &header,
                Some("a,b\n1,2\n"),
                &[],
                "2019-03-01",
                "2019-03-01",
                &mut core
            )
            .is_err()
        );
    }
}
