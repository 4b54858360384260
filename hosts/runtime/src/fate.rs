//! What became of each record of a batch: the one place where the core's answers (each
//! record's parse outcome, each accepted event's decision) become one fate per record, for every
//! host. The replay files the fates in its logs and quarantine, the Lambda ingest in DynamoDB
//! and on the DLQ; neither maps outcomes or decisions on its own.

use tripflow_core::batch::Skipped;
use tripflow_core::{Decision, EventRef, ParseOutcome, Reason, TripEvent};

use crate::Parsed;

/// A rejected record as the AWS ingest keeps it: one message on the rejected-records queue
/// (DLQ), its bytes inline or, when too large for a message, in S3. The audit reads a file of
/// these (`tripflow-local rejects` writes one, with spilled bytes fetched inline).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DlqMessage {
    /// Reason code, as in the CLI's quarantine (`bad_fare`, `conflicting_duplicate`, …).
    pub reason: String,
    /// What exactly is wrong.
    pub detail: String,
    /// The record's original bytes, base64; empty when they were spilled to S3.
    pub raw_base64: String,
    /// Where the record's bytes are when its message would have been larger than
    /// `DLQ_MAX_MESSAGE_BYTES`: `s3://<bucket>/<key>`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw_s3: Option<String>,
    /// The record's length in bytes.
    #[serde(default)]
    pub raw_len: u64,
    /// The Kinesis shard.
    pub shard_id: String,
    /// The record's sequence number in its shard.
    pub sequence_number: String,
    /// The record's partition key.
    pub partition_key: String,
    /// For a conflicting duplicate inside one batch: the sequence number of the copy kept.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_sequence_number: Option<String>,
}

impl DlqMessage {
    /// The record's original bytes, when the message carries them (`raw_base64`).
    pub fn raw(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        if self.raw_base64.is_empty() && self.raw_len > 0 {
            return Err(match &self.raw_s3 {
                Some(uri) => format!(
                    "the bytes of {}/{} were spilled to {uri}; fetch them inline with \
                     `tripflow-local rejects`",
                    self.shard_id, self.sequence_number
                ),
                None => format!(
                    "{}/{} carries no bytes",
                    self.shard_id, self.sequence_number
                ),
            });
        }
        base64::engine::general_purpose::STANDARD
            .decode(&self.raw_base64)
            .map_err(|e| {
                format!(
                    "{}/{}: raw_base64 is not base64 ({e})",
                    self.shard_id, self.sequence_number
                )
            })
    }
}

/// One record's parse outcome, kept between parsing and resolving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Only white space.
    Blank,
    /// An accepted event (the next one in accepted order).
    Accepted,
    /// Rejected by the core, or failed in it.
    Rejected {
        /// Why.
        reason: Reason,
        /// What exactly, from the core (or the core's failure).
        detail: String,
    },
}

/// A batch's parse outcomes: one [`Line`] per record, and the record of each accepted event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    /// One per record, in order.
    pub lines: Vec<Line>,
    /// For each accepted event (numbered from 0 in record order), its record.
    pub accepted: Vec<usize>,
}

impl Lines {
    /// `records` records that are all accepted events (a host that parsed them before, such as
    /// the Spark job's resolve stage).
    pub fn accepted(records: usize) -> Lines {
        Lines {
            lines: vec![Line::Accepted; records],
            accepted: (0..records).collect(),
        }
    }

    /// The outcomes of a batch of `records` parsed in one guest (`batches.batch`), from the
    /// records it skipped; `None` when they are not records of the batch in order (a component
    /// that breaks the contract).
    pub fn from_skipped(records: usize, skipped: Vec<Skipped>) -> Option<Lines> {
        let mut out = Lines {
            lines: Vec::with_capacity(records),
            accepted: Vec::with_capacity(records),
        };
        let mut skipped = skipped.into_iter().peekable();
        for record in 0..records {
            out.lines
                .push(match skipped.next_if(|s| s.line as usize == record) {
                    Some(Skipped { reason: None, .. }) => Line::Blank,
                    Some(Skipped {
                        reason: Some(r), ..
                    }) => Line::Rejected {
                        reason: r.reason(),
                        detail: r.detail().to_owned(),
                    },
                    None => {
                        out.accepted.push(record);
                        Line::Accepted
                    }
                });
        }
        skipped.next().is_none().then_some(out)
    }

    /// The outcomes of a batch parsed with [`crate::parse_isolating`], and its accepted events
    /// in order. A record the core failed on is rejected as [`Reason::CoreFailure`], with the
    /// failure as the detail.
    pub fn from_parsed(parsed: Vec<Parsed>) -> (Lines, Vec<TripEvent>) {
        let mut out = Lines {
            lines: Vec::with_capacity(parsed.len()),
            accepted: Vec::with_capacity(parsed.len()),
        };
        let mut events = Vec::with_capacity(parsed.len());
        for (record, outcome) in parsed.into_iter().enumerate() {
            out.lines.push(match outcome {
                Ok(ParseOutcome::Blank) => Line::Blank,
                Ok(ParseOutcome::Accepted(event)) => {
                    events.push(event);
                    out.accepted.push(record);
                    Line::Accepted
                }
                Ok(ParseOutcome::Rejected(r)) => Line::Rejected {
                    reason: r.reason(),
                    detail: r.detail().to_owned(),
                },
                Err(failure) => Line::Rejected {
                    reason: Reason::CoreFailure,
                    detail: failure.to_string(),
                },
            });
        }
        (out, events)
    }
}

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Only white space: not an event, not an error.
    Blank,
    /// The first copy of its key: store it.
    Stored {
        /// The accepted event's number.
        event: u32,
    },
    /// An exact copy of a stored event: count it, store nothing.
    Duplicate {
        /// The accepted event's number.
        event: u32,
    },
    /// Kept with its reason and its bytes, not stored.
    Rejected(Rejection),
}

/// A record kept instead of stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// What exactly.
    pub detail: String,
    /// For a conflicting duplicate, the copy stored first.
    pub first: Option<FirstCopy>,
}

/// Where the first copy of a conflicting duplicate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstCopy {
    /// A record of the same batch.
    Record(usize),
    /// A stored event: an index into what the host handed `resolve` as stored.
    Stored(u32),
}

/// Every record's fate: `lines`, with each accepted event's decision from `decisions` (one per
/// accepted event, as `matching.resolve` returns them); `None` when the counts differ (a
/// component that breaks the contract).
pub fn fates(lines: &Lines, decisions: &[Decision]) -> Option<Vec<Fate>> {
    if decisions.len() != lines.accepted.len() {
        return None;
    }
    let mut decisions = decisions.iter().enumerate();
    let fates = lines
        .lines
        .iter()
        .map(|line| match line {
            Line::Blank => Some(Fate::Blank),
            Line::Rejected { reason, detail } => Some(Fate::Rejected(Rejection {
                reason: *reason,
                detail: detail.clone(),
                first: None,
            })),
            Line::Accepted => {
                let (event, decision) = decisions.next()?;
                let event = event as u32;
                Some(match decision {
                    Decision::Store => Fate::Stored { event },
                    Decision::Duplicate(_) => Fate::Duplicate { event },
                    Decision::ConflictingDuplicate(c) => Fate::Rejected(Rejection {
                        reason: Reason::ConflictingDuplicate,
                        detail: c.detail.clone(),
                        first: Some(match c.first {
                            EventRef::Incoming(j) => {
                                FirstCopy::Record(*lines.accepted.get(j as usize)?)
                            }
                            EventRef::Stored(j) => FirstCopy::Stored(j),
                        }),
                    }),
                })
            }
        })
        .collect::<Option<Vec<Fate>>>()?;
    decisions.next().is_none().then_some(fates)
}

#[cfg(test)]
mod tests {
    use tripflow_core::{Conflict, Reject};

    use super::*;

    #[test]
    fn each_record_gets_its_outcome_or_its_events_decision() {
        let parsed: Vec<Parsed> = vec![
            Ok(ParseOutcome::Blank),
            Ok(ParseOutcome::Rejected(Reject::BadFare("-1".into()))),
            Ok(ParseOutcome::Accepted(TripEvent {
                trip_id: "a".into(),
                kind: tripflow_core::EventKind::Start,
                timestamp_ns: 0,
                fare_cents: None,
                extras: String::new(),
            })),
            Err(crate::CoreError::OutOfMemory { limit_mib: 64 }),
            Ok(ParseOutcome::Accepted(TripEvent {
                trip_id: "a".into(),
                kind: tripflow_core::EventKind::Start,
                timestamp_ns: 1,
                fare_cents: None,
                extras: String::new(),
            })),
        ];
        let (lines, events) = Lines::from_parsed(parsed);
        assert_eq!(events.len(), 2);
        assert_eq!(lines.accepted, [2, 4]);
        let decisions = [
            Decision::Store,
            Decision::ConflictingDuplicate(Conflict {
                first: EventRef::Incoming(0),
                detail: "timestamp".into(),
            }),
        ];
        let got = fates(&lines, &decisions).unwrap();
        assert_eq!(got[0], Fate::Blank);
        assert!(matches!(&got[1], Fate::Rejected(r) if r.reason == Reason::BadFare));
        assert_eq!(got[2], Fate::Stored { event: 0 });
        assert!(matches!(&got[3], Fate::Rejected(r) if r.reason == Reason::CoreFailure));
        assert!(matches!(
            &got[4],
            Fate::Rejected(Rejection {
                reason: Reason::ConflictingDuplicate,
                first: Some(FirstCopy::Record(2)),
                ..
            })
        ));
        assert_eq!(fates(&lines, &decisions[..1]), None);
    }

    #[test]
    fn skipped_records_must_be_records_of_the_batch_in_order() {
        let skip = |line, reason| Skipped { line, reason };
        let lines = Lines::from_skipped(3, vec![skip(1, None)]).unwrap();
        assert_eq!(lines.lines[1], Line::Blank);
        assert_eq!(lines.accepted, [0, 2]);
        assert_eq!(Lines::from_skipped(3, vec![skip(3, None)]), None);
        assert_eq!(
            Lines::from_skipped(3, vec![skip(1, None), skip(0, None)]),
            None
        );
    }
}
