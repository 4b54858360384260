//! Rejected records as they are kept: reason, detail, position and the original bytes.

use base64::Engine as _;
use serde::Serialize;

/// One rejected record, as written to the quarantine file (one JSON object per line).
///
/// The original bytes are kept exactly: as the string `raw` when they are UTF-8, otherwise
/// as `raw_base64`. A conflicting duplicate also carries the first stored copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuarantineRecord {
    /// The input's name (`stdin` for `-`).
    pub source: String,
    /// 1-based line number in that input.
    pub line: u64,
    /// Reason code (`bad_fare`, `conflicting_duplicate`, …).
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
    /// The record's bytes.
    #[serde(flatten)]
    pub raw: RawBytes,
    /// For a conflicting duplicate: the first stored copy's bytes, as `{"raw": …}` or
    /// `{"raw_base64": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_copy: Option<RawBytes>,
}

/// Bytes kept exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBytes(pub Vec<u8>);

impl Serialize for RawBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match std::str::from_utf8(&self.0) {
            Ok(text) => map.serialize_entry("raw", text)?,
            Err(_) => map.serialize_entry(
                "raw_base64",
                &base64::engine::general_purpose::STANDARD.encode(&self.0),
            )?,
        }
        map.end()
    }
}

impl QuarantineRecord {
    /// The record as one NDJSON line (with its `\n`).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("quarantine records serialise");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bytes_exactly() {
        let r = QuarantineRecord {
            source: "a.ndjson".into(),
            line: 3,
            reason: "malformed_json".into(),
            detail: "x".into(),
            raw: RawBytes(b"{\"a\":\xff}".to_vec()),
            first_copy: None,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(v["raw_base64"], "eyJhIjr/fQ==");
        assert!(v.get("raw").is_none() && v.get("first_copy").is_none());
        let text = QuarantineRecord {
            raw: RawBytes(b"not json \"quoted\"".to_vec()),
            first_copy: Some(RawBytes(b"{}".to_vec())),
            ..r
        };
        let v: serde_json::Value = serde_json::from_str(&text.to_line()).unwrap();
        assert_eq!(v["raw"], "not json \"quoted\"");
        assert_eq!(v["first_copy"]["raw"], "{}");
    }
}
