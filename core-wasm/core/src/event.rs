//! Parsing and validating one raw event record against the event contract.
//!
//! The record is read once by serde_json into borrowed raw values; each known field is then
//! interpreted from its JSON text, so fares and timestamps never pass through a binary float
//! and the error can say exactly which field is wrong and why.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::money::{parse_fare, push_cents, shorten, shorten_raw};
use crate::time::{format_rfc3339_utc, parse_rfc3339, secs_to_nanos};
use crate::types::{EventKind, MAX_RECORD_BYTES, ParseOutcome, Reject, Span, TripEvent};

/// The longest accepted trip id, in characters.
pub const MAX_TRIP_ID_CHARS: usize = 128;

/// Parses every span of `buffer`, one outcome per span.
pub fn parse_batch(buffer: &[u8], spans: &[Span]) -> Vec<ParseOutcome> {
    parse_batch_iter(buffer, spans).collect()
}

/// [`parse_batch`], one outcome at a time.
pub fn parse_batch_iter<'a>(
    buffer: &'a [u8],
    spans: &'a [Span],
) -> impl Iterator<Item = ParseOutcome> + 'a {
    read_batch(buffer, spans).map(Record::into_outcome)
}

/// Every span of `buffer` read, its event still borrowing from `buffer`.
pub(crate) fn read_batch<'a>(
    buffer: &'a [u8],
    spans: &'a [Span],
) -> impl Iterator<Item = Record<'a>> + 'a {
    spans.iter().map(|span| {
        let start = span.offset as usize;
        match buffer.get(start..start + span.len as usize) {
            Some(record) => read_record(record),
            None => Record::Rejected(Reject::MalformedJson(format!(
                "span {}+{} lies outside the {}-byte buffer the host passed",
                span.offset,
                span.len,
                buffer.len()
            ))),
        }
    })
}

/// Parses and validates one record.
pub fn parse_record(record: &[u8]) -> ParseOutcome {
    read_record(record).into_outcome()
}

/// Appends `event` as the record the core reads back as exactly `event`, and a line feed: the
/// one spelling of a stored event (since 0.7.0), used to turn stored events back into input
/// (a DynamoDB export of the pipeline's table, for one). Fields in the order `trip_id`,
/// `event_type`, `timestamp` (RFC 3339 in UTC, with a fraction only when there is one),
/// `fare` (a JSON number with two decimals, when there is one), then the extras as they are
/// stored (canonical, keys sorted).
pub fn render_record(out: &mut String, event: &TripEvent) {
    out.push_str("{\"trip_id\":");
    push_json_string(out, &event.trip_id);
    out.push_str(",\"event_type\":\"");
    out.push_str(event.kind.as_str());
    out.push_str("\",\"timestamp\":\"");
    out.push_str(&format_rfc3339_utc(event.timestamp_ns));
    out.push('"');
    if let Some(cents) = event.fare_cents {
        out.push_str(",\"fare\":");
        push_cents(out, cents);
    }
    // Stored extras are a canonical object: `{}` around `"key":value` pairs.
    let inner = event
        .extras
        .strip_prefix('{')
        .and_then(|e| e.strip_suffix('}'))
        .unwrap_or("");
    if !inner.is_empty() {
        out.push(',');
        out.push_str(inner);
    }
    out.push_str("}\n");
}

/// [`render_record`] of every event, in order: NDJSON that [`parse_batch`] reads back as the
/// same events.
pub fn render_records(events: &[TripEvent]) -> String {
    let mut out = String::with_capacity(events.len() * 160);
    for e in events {
        render_record(&mut out, e);
    }
    out
}

/// What one record is, as [`ParseOutcome`], with the event's trip id borrowed from the record
/// when it has no escapes.
pub(crate) enum Record<'a> {
    Accepted(ParsedEvent<'a>),
    Rejected(Reject),
    Blank,
}

impl Record<'_> {
    fn into_outcome(self) -> ParseOutcome {
        match self {
            Record::Accepted(e) => ParseOutcome::Accepted(TripEvent {
                trip_id: e.trip_id.into_owned(),
                kind: e.kind,
                timestamp_ns: e.timestamp_ns,
                fare_cents: e.fare_cents,
                extras: e.extras,
            }),
            Record::Rejected(r) => ParseOutcome::Rejected(r),
            Record::Blank => ParseOutcome::Blank,
        }
    }
}

/// A valid event, its trip id borrowed from the record when it can be.
pub(crate) struct ParsedEvent<'a> {
    pub(crate) trip_id: Cow<'a, str>,
    pub(crate) kind: EventKind,
    pub(crate) timestamp_ns: i64,
    pub(crate) fare_cents: Option<i64>,
    pub(crate) extras: String,
}

fn read_record(record: &[u8]) -> Record<'_> {
    if record.len() > MAX_RECORD_BYTES as usize {
        return Record::Rejected(Reject::TooLarge(format!(
            "record is over {MAX_RECORD_BYTES} bytes (192 KiB), the largest accepted"
        )));
    }
    let record = record.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(record);
    if record.iter().all(u8::is_ascii_whitespace) {
        return Record::Blank;
    }
    match validate(record) {
        Ok(event) => Record::Accepted(event),
        Err(reject) => Record::Rejected(reject),
    }
}

fn validate(record: &[u8]) -> Result<ParsedEvent<'_>, Reject> {
    // The one-pass reader takes the common shape; serde_json reads everything else, and is
    // the reference for what the one-pass reader may accept (see `flat`).
    let fields = match crate::flat::scan(record) {
        Some(fields) => fields,
        None => read_fields(record)?,
    };
    let trip_id = fields.required("trip_id", fields.trip_id)?;
    let event_type = fields.required("event_type", fields.event_type)?;
    let timestamp = fields.required("timestamp", fields.timestamp)?;

    let trip_id = trip_id_of(trip_id)?;
    let kind = kind_of(event_type)?;
    let timestamp_ns = timestamp_of(timestamp)?;
    let fare_cents = match fields.fare {
        Some(raw) if raw != "null" => Some(fare_of(raw)?),
        _ => None,
    };
    Ok(ParsedEvent {
        trip_id,
        kind,
        timestamp_ns,
        fare_cents,
        extras: fields.canonical_extras()?,
    })
}

/// Reads a record's top-level fields with serde_json.
pub(crate) fn read_fields(record: &[u8]) -> Result<Fields<'_>, Reject> {
    serde_json::from_slice(record).map_err(|e| Reject::MalformedJson(e.to_string()))
}

fn trip_id_of(raw: &str) -> Result<Cow<'_, str>, Reject> {
    let id = json_string(raw).ok_or_else(|| {
        Reject::BadTripId(format!(
            "trip_id must be a JSON string, got {}",
            shorten_raw(raw)
        ))
    })?;
    // Nearly every id is printable ASCII: its characters are its bytes and none is a control
    // character, so one pass over the bytes replaces decoding it twice.
    let printable_ascii = id.bytes().all(|b| matches!(b, b' '..=b'~'));
    let chars = if printable_ascii {
        id.len()
    } else {
        id.chars().count()
    };
    if chars == 0 {
        return Err(Reject::BadTripId(
            "trip_id is empty: it needs 1 to 128 characters".into(),
        ));
    }
    if chars > MAX_TRIP_ID_CHARS {
        return Err(Reject::BadTripId(format!(
            "trip_id {} has {chars} characters: at most {MAX_TRIP_ID_CHARS} allowed",
            shorten(&id)
        )));
    }
    if !printable_ascii && let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(Reject::BadTripId(format!(
            "trip_id {} contains the control character U+{:04X}",
            shorten(&id),
            u32::from(c)
        )));
    }
    Ok(id)
}

fn kind_of(raw: &str) -> Result<EventKind, Reject> {
    match json_string(raw).as_deref() {
        Some("trip_start") => Ok(EventKind::Start),
        Some("trip_end") => Ok(EventKind::End),
        _ => Err(Reject::BadEventType(format!(
            "event_type {} is neither \"trip_start\" nor \"trip_end\"",
            shorten_raw(raw)
        ))),
    }
}

fn timestamp_of(raw: &str) -> Result<i64, Reject> {
    let text = raw;
    if let Some(s) = json_string(raw) {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Reject::BadTimestamp(format!(
                "timestamp {} is a string of digits: write Unix seconds as a JSON number",
                shorten_raw(text)
            )));
        }
        return parse_rfc3339(&s).map_err(Reject::BadTimestamp);
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .ok()
            .and_then(secs_to_nanos)
            .ok_or_else(|| {
                Reject::BadTimestamp(format!(
                    "timestamp {text} is outside the supported range 1677-09-22 to 2262-04-11"
                ))
            });
    }
    let what = if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        "is not a whole number of Unix seconds"
    } else {
        "must be an RFC 3339 string or integer Unix seconds"
    };
    Err(Reject::BadTimestamp(format!(
        "timestamp {} {what}",
        shorten_raw(text)
    )))
}

fn fare_of(raw: &str) -> Result<i64, Reject> {
    let text = raw;
    let parsed = if let Some(s) = json_string(raw) {
        parse_fare(&s)
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        parse_fare(text)
    } else {
        Err(format!(
            "fare must be a number or a decimal string, got {}",
            shorten_raw(text)
        ))
    };
    parsed.map_err(Reject::BadFare)
}

/// The contents of a JSON string value, borrowed when it has no escapes; `None` when the raw
/// value is not a string.
fn json_string(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The top-level fields of a record, each value as its JSON text borrowed from the record.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fields<'a> {
    pub(crate) trip_id: Option<&'a str>,
    pub(crate) event_type: Option<&'a str>,
    pub(crate) timestamp: Option<&'a str>,
    pub(crate) fare: Option<&'a str>,
    /// The other fields in record order, keys unescaped.
    pub(crate) extras: Vec<(Cow<'a, str>, &'a str)>,
}

impl<'a> Fields<'a> {
    fn required(&self, name: &str, value: Option<&'a str>) -> Result<&'a str, Reject> {
        match value {
            Some(raw) if raw != "null" => Ok(raw),
            Some(_) => Err(Reject::MissingField(format!(
                "{name} is null: it is required"
            ))),
            None => Err(Reject::MissingField(format!(
                "{name} is missing: it is required"
            ))),
        }
    }

    /// The other fields as one canonical JSON object: keys sorted, insignificant white space
    /// removed, values otherwise as written.
    fn canonical_extras(mut self) -> Result<String, Reject> {
        if self.extras.is_empty() {
            return Ok(String::new());
        }
        self.extras.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = self.extras.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(duplicate_key(&pair[0].0));
        }
        let mut out = String::with_capacity(64);
        out.push('{');
        for (i, (key, value)) in self.extras.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, key);
            out.push(':');
            check_escapes(key, value)?;
            push_minified(&mut out, value);
        }
        out.push('}');
        Ok(out)
    }
}

fn duplicate_key(key: &str) -> Reject {
    Reject::MalformedJson(format!("duplicate key {}", shorten(key)))
}

/// Rejects a `\uXXXX` escape that is half of a surrogate pair without its other half: JSON's
/// grammar lets it through, but it is no Unicode text, and strict readers of the stored event
/// (serde_json, Java, Athena) refuse it. Found by coverage-guided fuzzing.
fn check_escapes(key: &str, json: &str) -> Result<(), Reject> {
    let b = json.as_bytes();
    if !b.contains(&b'\\') {
        return Ok(());
    }
    let hex = |at: usize| -> Option<u16> {
        let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // any other escape is one character
            continue;
        }
        let unit = hex(i + 2).unwrap_or(0);
        let lone = match unit {
            0xD800..=0xDBFF => {
                let low = (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u'))
                    .then(|| hex(i + 8))
                    .flatten();
                match low {
                    Some(0xDC00..=0xDFFF) => {
                        i += 12;
                        continue;
                    }
                    _ => true,
                }
            }
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            return Err(Reject::MalformedJson(format!(
                "field {} has \\u{unit:04x}, half of a surrogate pair without the other half: not Unicode text",
                shorten(key)
            )));
        }
        i += 6;
    }
    Ok(())
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it.
fn push_json_string(out: &mut String, text: &str) {
    // serde_json escapes only the quote, the backslash and control characters below U+0020.
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(text).expect("a str serialises"));
    }
}

/// Appends already validated JSON text without white space outside strings.
fn push_minified(out: &mut String, json: &str) {
    let b = json.as_bytes();
    // White space is ASCII, so the runs between dropped bytes are whole characters.
    let mut run = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_string => i += 1, // the escaped byte is ASCII too
            b'"' => in_string = !in_string,
            b' ' | b'\t' | b'\n' | b'\r' if !in_string => {
                out.push_str(&json[run..i]);
                run = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&json[run..]);
}

impl<'de> de::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let slot = match key.as_ref() {
                "trip_id" => &mut fields.trip_id,
                "event_type" => &mut fields.event_type,
                "timestamp" => &mut fields.timestamp,
                "fare" => &mut fields.fare,
                _ => {
                    let value = map.next_value::<&'de RawValue>()?;
                    fields.extras.push((key, value.get()));
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(duplicate_key(&key).detail()));
            }
            *slot = Some(map.next_value::<&'de RawValue>()?.get());
        }
        Ok(fields)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(json: &str) -> TripEvent {
        match parse_record(json.as_bytes()) {
            ParseOutcome::Accepted(e) => e,
            other => panic!("{json} was not accepted: {other:?}"),
        }
    }

    fn rejected(json: &[u8]) -> Reject {
        match parse_record(json) {
            ParseOutcome::Rejected(r) => r,
            other => panic!("{json:?} was not rejected: {other:?}"),
        }
    }

    #[test]
    fn accepts_the_contract() {
        let e = accepted(
            r#"{"trip_id":"t1","event_type":"trip_end","timestamp":"2019-03-10T03:05:00-04:00","fare":12.5}"#,
        );
        assert_eq!(e.trip_id, "t1");
        assert_eq!(e.kind, EventKind::End);
        assert_eq!(e.timestamp_ns, 1_552_201_500_000_000_000);
        assert_eq!(e.fare_cents, Some(1250));
        assert_eq!(e.extras, "");
        let s = accepted(
            r#"{"event_type":"trip_start","trip_id":"t1","timestamp":1552201500,"fare":null}"#,
        );
        assert_eq!(s.kind, EventKind::Start);
        assert_eq!(s.fare_cents, None);
        assert_eq!(s.timestamp_ns, e.timestamp_ns);
    }

    #[test]
    fn extras_are_canonical() {
        let a = accepted(
            r#"{"trip_id":"t","event_type":"trip_start","timestamp":0,"z":[1, 2],"a":{"k": "v w"}}"#,
        );
        let b = accepted(
            "{ \"a\" : {\"k\":\"v w\"},\n \"trip_id\":\"t\",\"z\":[1,2],\"event_type\":\"trip_start\",\"timestamp\":0 }",
        );
        assert_eq!(a.extras, r#"{"a":{"k":"v w"},"z":[1,2]}"#);
        assert_eq!(a, b);
    }

    #[test]
    fn escapes_and_unicode_in_ids() {
        let e =
            accepted(r#"{"trip_id":"Zürich-\u00e9-🚕","event_type":"trip_start","timestamp":0}"#);
        assert_eq!(e.trip_id, "Zürich-é-🚕");
        let long: String = "é".repeat(128);
        accepted(&format!(
            r#"{{"trip_id":"{long}","event_type":"trip_start","timestamp":0}}"#
        ));
    }

    #[test]
    fn every_reason_has_its_case() {
        let cases: [(&[u8], &str); 16] = [
            (b"{", "malformed_json"),
            (b"[1]", "malformed_json"),
            (b"{\"trip_id\":\"a\",\"trip_id\":\"b\"}", "malformed_json"),
            (b"{\"trip_id\":\"\xff\"}", "malformed_json"),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_start\",\"timestamp\":0} x",
                "malformed_json",
            ),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_start\"}",
                "missing_field",
            ),
            (
                b"{\"trip_id\":null,\"event_type\":\"trip_start\",\"timestamp\":0}",
                "missing_field",
            ),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_pause\",\"timestamp\":0}",
                "bad_event_type",
            ),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_start\",\"timestamp\":\"yesterday\"}",
                "bad_timestamp",
            ),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_start\",\"timestamp\":1.5}",
                "bad_timestamp",
            ),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_start\",\"timestamp\":\"1552201500\"}",
                "bad_timestamp",
            ),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_end\",\"timestamp\":0,\"fare\":-3}",
                "bad_fare",
            ),
            (
                b"{\"trip_id\":\"t\",\"event_type\":\"trip_end\",\"timestamp\":0,\"fare\":true}",
                "bad_fare",
            ),
            (
                b"{\"trip_id\":7,\"event_type\":\"trip_end\",\"timestamp\":0}",
                "bad_trip_id",
            ),
            (
                b"{\"trip_id\":\"\",\"event_type\":\"trip_end\",\"timestamp\":0}",
                "bad_trip_id",
            ),
            (
                b"{\"trip_id\":\"a\\u0007b\",\"event_type\":\"trip_end\",\"timestamp\":0}",
                "bad_trip_id",
            ),
        ];
        for (input, code) in cases {
            let r = rejected(input);
            assert_eq!(r.code(), code, "{:?}: {r}", String::from_utf8_lossy(input));
            assert!(!r.detail().is_empty());
        }
        let big = vec![b' '; MAX_RECORD_BYTES as usize + 1];
        assert_eq!(rejected(&big).code(), "too_large");
    }

    #[test]
    fn lone_surrogates_in_other_fields_are_malformed() {
        let base = r#"{"trip_id":"a","event_type":"trip_end","timestamp":0,"x":"#;
        for bad in [
            r#""10000\ude95""#,
            r#""\ud83d""#,
            r#"{"k":["\ud83dx"]}"#,
            r#""\ud83d\u0041""#,
        ] {
            let r = rejected(format!("{base}{bad}}}").as_bytes());
            assert_eq!(r.code(), "malformed_json", "{bad}");
            assert!(r.detail().contains("surrogate"), "{}", r.detail());
        }
        for good in [r#""\ud83d\ude95""#, r#""\\ude95""#, r#""\u00e9\n""#, "1"] {
            let e = accepted(&format!("{base}{good}}}"));
            assert_eq!(e.extras, format!(r#"{{"x":{good}}}"#), "{good}");
        }
    }

    #[test]
    fn blank_and_bom() {
        assert_eq!(parse_record(b""), ParseOutcome::Blank);
        assert_eq!(parse_record(b" \t\r"), ParseOutcome::Blank);
        accepted("\u{feff}{\"trip_id\":\"t\",\"event_type\":\"trip_start\",\"timestamp\":0}\r");
    }

    #[test]
    fn spans_outside_the_buffer_are_reported() {
        let out = parse_batch(b"{}", &[Span { offset: 1, len: 5 }]);
        assert!(
            matches!(&out[0], ParseOutcome::Rejected(Reject::MalformedJson(d)) if d.contains("outside"))
        );
    }
}

#[cfg(test)]
mod canonical_form {
    use super::*;
    use proptest::prelude::*;

    /// The char-at-a-time minifier `push_minified` replaced, as the reference.
    fn minified_by_chars(json: &str) -> String {
        let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
        for c in json.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                out.push(c);
            } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
                in_string = c == '"';
                out.push(c);
            }
        }
        out
    }

    /// JSON values written with white space inside and outside strings, escapes included.
    fn value() -> impl Strategy<Value = String> {
        let text = "[a-z é\t\"\\\\/]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap());
        let leaf = prop_oneof![
            text,
            "-?[0-9]{1,4}(\\.[0-9]{1,2})?",
            Just("null".to_owned())
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            let ws = "[ \t\r\n]{0,2}";
            prop_oneof![
                proptest::collection::vec((ws, inner.clone(), ws), 0..4).prop_map(|items| {
                    let items: Vec<String> =
                        items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                    format!("[{}]", items.join(","))
                }),
                proptest::collection::vec(("[a-z ]{1,3}", ws, inner), 0..4).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(k, w, v)| {
                            format!("{}{w}:{w}{v}", serde_json::to_string(&k).unwrap())
                        })
                        .collect();
                    format!("{{ {} }}", items.join(" , "))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn minifies_as_the_char_reference(json in value()) {
            let mut out = String::new();
            push_minified(&mut out, &json);
            prop_assert_eq!(out, minified_by_chars(&json));
        }

        /// Any record the core accepts, rendered back, parses as the same event: what a
        /// stored event turned back into input must be.
        #[test]
        fn rendered_records_parse_as_themselves(
            id in "[a-zA-Z0-9#\"\\\\ é-]{1,12}",
            start in any::<bool>(),
            ts in -9_000_000_000_000_000_000i64..9_000_000_000_000_000_000,
            whole_seconds in any::<bool>(),
            fare in proptest::option::of(0i64..100_000_000),
            extras in proptest::collection::vec(("x_[a-z]{1,4}", value()), 0..4),
        ) {
            let ts = if whole_seconds { ts - ts.rem_euclid(1_000_000_000) } else { ts };
            let mut record = format!(
                r#"{{"event_type":"{}","timestamp":"{}","trip_id":{}"#,
                if start { "trip_start" } else { "trip_end" },
                format_rfc3339_utc(ts),
                serde_json::to_string(&id).unwrap(),
            );
            if let Some(f) = fare {
                record.push_str(&format!(r#","fare":"{}""#, crate::money::format_cents(f)));
            }
            for (k, v) in &extras {
                record.push_str(&format!(r#","{k}":{v}"#));
            }
            record.push('}');
            let ParseOutcome::Accepted(event) = parse_record(record.as_bytes()) else {
                // Duplicate extra keys are malformed: nothing stored to render.
                return Ok(());
            };
            let rendered = render_records(std::slice::from_ref(&event));
            prop_assert!(rendered.ends_with('\n') && rendered.matches('\n').count() == 1);
            prop_assert_eq!(parse_record(rendered.trim_end().as_bytes()), ParseOutcome::Accepted(event));
        }

        #[test]
        fn quotes_keys_as_serde_json(key in "(?s).{0,8}") {
            let mut out = String::new();
            push_json_string(&mut out, &key);
            prop_assert_eq!(out, serde_json::to_string(&key).unwrap());
        }
    }
}
