//! A one-pass reader for the shape nearly every event has: one JSON object whose strings,
//! keys included, have no escapes, nested at most [`MAX_DEPTH`] deep.
//!
//! serde_json, reading into borrowed raw values, is the reference: [`scan`] answers only when
//! it is sure serde_json would read the record without error and into the same fields, and
//! otherwise declines (`None`), so the caller reads the record with serde_json and every
//! rejection keeps serde_json's words. It declines on an escape, a duplicate contract key,
//! deeper nesting and any syntax error. `tests::agrees_with_serde_json` holds it to that.
//!
//! It exists for speed: it allocates nothing (unless the record has other fields), checks
//! UTF-8 once for the whole record, and does no per-value dispatch through serde's visitors.

use std::borrow::Cow;

use crate::event::Fields;

/// The deepest nesting of objects and arrays read here (serde_json reads up to 127 levels).
const MAX_DEPTH: u32 = 16;

/// The record's fields, or `None` when serde_json must read it.
pub(crate) fn scan(record: &[u8]) -> Option<Fields<'_>> {
    // One check for the whole record: afterwards every slice between ASCII delimiters is
    // valid UTF-8. A record that is not UTF-8 is not valid JSON either; serde_json says where.
    let text = std::str::from_utf8(record).ok()?;
    let mut s = Scanner { text, at: 0 };
    let mut fields = Fields::default();
    s.skip_ws();
    s.expect(b'{')?;
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.at += 1;
    } else {
        loop {
            let key = s.string()?;
            let key = &key[1..key.len() - 1];
            s.skip_ws();
            s.expect(b':')?;
            s.skip_ws();
            let value = s.value(0)?;
            let slot = match key {
                "trip_id" => &mut fields.trip_id,
                "event_type" => &mut fields.event_type,
                "timestamp" => &mut fields.timestamp,
                "fare" => &mut fields.fare,
                _ => {
                    fields.extras.push((Cow::Borrowed(key), value));
                    s.skip_ws();
                    if s.end_of_member()? {
                        break;
                    }
                    continue;
                }
            };
            if slot.is_some() {
                // serde_json's reader names the duplicate.
                return None;
            }
            *slot = Some(value);
            s.skip_ws();
            if s.end_of_member()? {
                break;
            }
        }
    }
    s.skip_ws();
    (s.at == record.len()).then_some(fields)
}

/// The bytes that end a string's plain run: the quote, a backslash and control characters.
const STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        stops[b] = true;
        b += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// Where the plain run at the start of `bytes` ends: the index of its first [`STOPS`] byte.
///
/// Eight bytes at a time (in the guest too: WebAssembly has 64-bit integers), which also cuts
/// the loop's iterations, and with them the guest's deadline checks, eightfold. A byte `b` is
/// flagged in its high bit when `b < 0x20`, `b == b'"'` or `b == b'\\'` (the "has less" and
/// "has zero" tests of Bit Twiddling Hacks); a borrow can flag a byte only above a flagged
/// one, so the lowest flag is the first stop.
fn plain_run(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let stops = control
            | zero_in(w ^ (ONES * u64::from(b'"')))
            | zero_in(w ^ (ONES * u64::from(b'\\')));
        if stops != 0 {
            return Some(at + (stops.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes[at..].iter().position(|&b| STOPS[usize::from(b)])?;
    Some(at + tail)
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// JSON's white space, as serde_json skips it.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// After a member: `true` at the object's `}`, `false` at a `,` (and the next key's
    /// white space skipped).
    fn end_of_member(&mut self) -> Option<bool> {
        match self.peek()? {
            b'}' => {
                self.at += 1;
                Some(true)
            }
            b',' => {
                self.at += 1;
                self.skip_ws();
                Some(false)
            }
            _ => None,
        }
    }

    /// A string without escapes or control characters, quotes included.
    fn string(&mut self) -> Option<&'a str> {
        let start = self.at;
        self.expect(b'"')?;
        let rest = &self.bytes()[self.at..];
        let len = plain_run(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&self.text[start..self.at])
    }

    /// One value's JSON text; `None` for anything this reader declines.
    fn value(&mut self, depth: u32) -> Option<&'a str> {
        match self.peek()? {
            b'"' => self.string(),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'{' | b'[' if depth < MAX_DEPTH => self.nested(depth + 1),
            _ => None,
        }
    }

    /// An object or array, syntax checked; serde_json's raw value keeps any duplicate keys in
    /// it, and so does this.
    fn nested(&mut self, depth: u32) -> Option<&'a str> {
        let start = self.at;
        let close = if self.peek()? == b'{' { b'}' } else { b']' };
        self.at += 1;
        self.skip_ws();
        if self.peek()? == close {
            self.at += 1;
            return Some(&self.text[start..self.at]);
        }
        loop {
            if close == b'}' {
                self.string()?;
                self.skip_ws();
                self.expect(b':')?;
                self.skip_ws();
            }
            self.value(depth)?;
            self.skip_ws();
            match self.peek()? {
                b',' => {
                    self.at += 1;
                    self.skip_ws();
                }
                b if b == close => {
                    self.at += 1;
                    return Some(&self.text[start..self.at]);
                }
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &'static str) -> Option<&'a str> {
        let end = self.at + word.len();
        if self.bytes().get(self.at..end)? != word.as_bytes() {
            return None;
        }
        let text = &self.text[self.at..end];
        self.at = end;
        Some(text)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, JSON's number grammar.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(&self.text[start..self.at])
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::read_fields;
    use proptest::prelude::*;

    /// What `scan` answers must be what serde_json answers.
    fn check(record: &[u8]) -> bool {
        match scan(record) {
            Some(fields) => {
                let reference = read_fields(record).unwrap_or_else(|e| {
                    panic!(
                        "scan read {:?} but serde_json refused it: {e}",
                        String::from_utf8_lossy(record)
                    )
                });
                assert_eq!(fields, reference, "{:?}", String::from_utf8_lossy(record));
                true
            }
            None => false,
        }
    }

    #[test]
    fn reads_the_common_shapes() {
        for record in [
            r#"{"trip_id": "t1", "event_type": "trip_end", "timestamp": "2024-01-21T13:24:04Z", "fare": 8.97}"#,
            r#"{"trip_id":"t1","event_type":"trip_start","timestamp":1552201500,"fare":null}"#,
            " {\"trip_id\":\"Zürich-🚕\" ,\r\n\"timestamp\":-0.5e+3,\"b\":true,\"a\":false} \r",
            r#"{"trip_id":"t","vendor":"x","vendor_id":2,"fare":"12.50"}"#,
            r#"{}"#,
            r#"{"x":"y","x":1}"#,
            r#"{"":0}"#,
            r#"{"meta":{"source":"generator","v":[1, {}, [], {"a":{"a":1},"a":2}]},"trip_id":"g"}"#,
        ] {
            assert!(check(record.as_bytes()), "{record} was declined");
        }
    }

    #[test]
    fn declines_what_serde_json_must_read() {
        for record in [
            &br#"{"trip_id":"a","trip_id":"b"}"#[..],
            br#"{"trip_id":"a\u0041"}"#,
            br#"{"trip\u005fid":"a"}"#,
            br#"{"x":{"k":"\n"}}"#,
            br#"{"x":[1,]}"#,
            br#"{"x":{"k"}}"#,
            br#"{"x":{"k":1]}"#,
            br#"{"x":[1}}"#,
            br#"{"x":{,}}"#,
            br#"{"x":[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]}"#,
            b"{\"trip_id\":\"a\x07b\"}",
            b"{\"trip_id\":\"\xff\"}",
            br#"{"fare":01}"#,
            br#"{"fare":1.}"#,
            br#"{"fare":.5}"#,
            br#"{"fare":1e}"#,
            br#"{"fare":-}"#,
            br#"{"fare":tru}"#,
            br#"{"a":1,}"#,
            br#"{"a":1 "b":2}"#,
            br#"{"a":1} x"#,
            br#"{"a":1}{}"#,
            br#"{"a" 1}"#,
            br#"["a"]"#,
            br#"{"a":1"#,
            b"{\"a\":1}\x0b",
            b"",
        ] {
            assert_eq!(scan(record), None, "{:?}", String::from_utf8_lossy(record));
        }
    }

    /// Pieces of records, valid and not, that the property below strings together.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just(" ".to_string()),
            Just("\r\n\t".to_string()),
            Just("\"trip_id\"".to_string()),
            Just("\"event_type\"".to_string()),
            Just("\"timestamp\"".to_string()),
            Just("\"fare\"".to_string()),
            Just("\"x\\u00e9\"".to_string()),
            Just("\"é\\\"\"".to_string()),
            Just("[1,{\"a\":2}]".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("fals".to_string()),
            "\"[a-z_é🚕\\x01\\x7f]{0,6}\"",
            "-?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
        ]
    }

    /// A valid flat record with the contract's fields in any order, extra fields and
    /// white space, so that the property sees many records `scan` must read.
    fn flat_record() -> impl Strategy<Value = String> {
        // Mostly valid values, and numbers and strings near the grammar's edges (leading
        // zeros, a bare `.` or exponent, escapes, control characters); objects and arrays of
        // them, now and then with a missing, doubled or trailing comma.
        let leaf = prop_oneof![
            4 => "\"[a-zA-Z0-9 :.é-]{0,12}\"",
            4 => "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
            2 => "-?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
            1 => "\"[a\\\\\"\\x01\\x7f]{0,4}\"",
            1 => Just("null".to_string()),
            1 => Just("true".to_string()),
        ];
        let value = leaf.prop_recursive(3, 12, 3, |inner| {
            let sep = || prop_oneof![12 => Just(","), 1 => Just(""), 1 => Just(",,")];
            let trailing = || proptest::bool::weighted(0.08);
            prop_oneof![
                (
                    proptest::collection::vec(inner.clone(), 0..4),
                    sep(),
                    trailing()
                )
                    .prop_map(|(items, sep, trailing)| {
                        format!("[{}{}]", items.join(sep), if trailing { "," } else { "" })
                    }),
                (
                    proptest::collection::vec(("[ab]{0,1}", inner), 0..4),
                    sep(),
                    trailing()
                )
                    .prop_map(|(members, sep, trailing)| {
                        let members: Vec<String> = members
                            .iter()
                            .map(|(k, v)| format!("\"{k}\" : {v}"))
                            .collect();
                        format!(
                            "{{{}{}}}",
                            members.join(sep),
                            if trailing { "," } else { "" }
                        )
                    }),
            ]
        });
        let key = prop_oneof![
            Just("trip_id".to_string()),
            Just("event_type".to_string()),
            Just("timestamp".to_string()),
            Just("fare".to_string()),
            "[a-z_]{0,5}",
        ];
        let ws = "[ \t\r\n]{0,2}";
        proptest::collection::vec((key, value, ws, ws), 0..7).prop_map(|members| {
            let body: Vec<String> = members
                .into_iter()
                .map(|(k, v, a, b)| format!("{a}\"{k}\"{b}:{a}{v}{b}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Eight bytes at a time finds the stop the byte-by-byte table finds, wherever it is:
        /// mostly plain bytes (ASCII and UTF-8's high bytes, borrows included) with a few stops.
        #[test]
        fn plain_run_finds_the_first_stop(
            bytes in proptest::collection::vec(
                prop_oneof![
                    8 => 0x20u8..=0xff,
                    1 => prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, Just(0x21u8), Just(0x5d), Just(0xa2), Just(0xdc)],
                ],
                0..40,
            )
        ) {
            let expected = bytes.iter().position(|&b| STOPS[usize::from(b)]);
            prop_assert_eq!(plain_run(&bytes), expected);
        }

        /// Arbitrary strings of JSON-ish pieces: `scan` either declines or reads exactly what
        /// serde_json reads.
        #[test]
        fn agrees_with_serde_json(pieces in proptest::collection::vec(piece(), 0..14)) {
            check(pieces.concat().as_bytes());
        }

        /// Flat records: `scan` reads every one without escapes that serde_json reads without
        /// a duplicate contract key, and reads it the same; a byte changed anywhere keeps the
        /// agreement.
        #[test]
        fn reads_flat_records(record in flat_record(), at in any::<usize>(), byte in any::<u8>()) {
            let read = check(record.as_bytes());
            if !record.contains('\\') {
                let reference = read_fields(record.as_bytes());
                prop_assert_eq!(read, reference.is_ok(), "{}", record);
            }
            let mut changed = record.into_bytes();
            let at = at % changed.len();
            changed[at] = byte;
            check(&changed);
        }
    }
}
