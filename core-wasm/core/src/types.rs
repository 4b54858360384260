//! The data that crosses the WIT boundary, as plain Rust types.
//!
//! Each type mirrors one in `wit/tripflow.wit`; the component crate converts between the two
//! field by field, so the native library and the component cannot drift apart silently.

use std::fmt;

/// Records longer than this many bytes are rejected as [`Reject::TooLarge`] (192 KiB).
///
/// It is the largest record every host can keep whole: the AWS pipeline stores a trip as one
/// DynamoDB item (at most 400 KB) that carries both halves' other fields, so two records of
/// this size plus the item's keys and numbers (under 2 KiB) fit one item. A record that the
/// replay accepts is therefore one the production pipeline can store, and vice versa.
pub const MAX_RECORD_BYTES: u32 = 192 * 1024;

/// The default of [`Clock::max_skew_ns`]: one hour.
pub const DEFAULT_MAX_SKEW_NS: i64 = 3_600 * 1_000_000_000;

/// Which half of a trip an event describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `"event_type": "trip_start"`.
    Start,
    /// `"event_type": "trip_end"`.
    End,
}

impl EventKind {
    /// The `event_type` string of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Start => "trip_start",
            EventKind::End => "trip_end",
        }
    }

    /// The other half.
    pub fn other(self) -> EventKind {
        match self {
            EventKind::Start => EventKind::End,
            EventKind::End => EventKind::Start,
        }
    }
}

/// A byte range of a host buffer holding one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// A validated, normalised event.
///
/// Two copies of the same event compare equal whatever their spelling: the fare is in cents,
/// the timestamp in nanoseconds, and the other fields are canonical JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TripEvent {
    /// The trip's id.
    pub trip_id: String,
    /// Start or end.
    pub kind: EventKind,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The fare in cents, when present.
    pub fare_cents: Option<i64>,
    /// Every other top-level field as canonical JSON (`{"a":1,"b":"x"}`), or `""` when none.
    pub extras: String,
}

/// Why a record was rejected, with a detail that names the offending value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Not a single JSON object.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A required field is absent or null.
    #[error("missing field: {0}")]
    MissingField(String),
    /// `event_type` is not one of the two known values.
    #[error("bad event_type: {0}")]
    BadEventType(String),
    /// `timestamp` cannot be read.
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
    /// `fare` is out of the contract.
    #[error("bad fare: {0}")]
    BadFare(String),
    /// `trip_id` is out of the contract.
    #[error("bad trip_id: {0}")]
    BadTripId(String),
    /// The record exceeds [`MAX_RECORD_BYTES`].
    #[error("too large: {0}")]
    TooLarge(String),
    /// A different copy of an already stored (trip_id, event_type).
    #[error("conflicting duplicate: {0}")]
    ConflictingDuplicate(String),
}

impl Reject {
    /// The reason this rejection is kept under.
    pub fn reason(&self) -> Reason {
        match self {
            Reject::MalformedJson(_) => Reason::MalformedJson,
            Reject::MissingField(_) => Reason::MissingField,
            Reject::BadEventType(_) => Reason::BadEventType,
            Reject::BadTimestamp(_) => Reason::BadTimestamp,
            Reject::BadFare(_) => Reason::BadFare,
            Reject::BadTripId(_) => Reason::BadTripId,
            Reject::TooLarge(_) => Reason::TooLarge,
            Reject::ConflictingDuplicate(_) => Reason::ConflictingDuplicate,
        }
    }

    /// The reason code used in quarantine files, DLQ messages and summaries.
    pub fn code(&self) -> &'static str {
        self.reason().as_str()
    }

    /// The human-readable detail.
    pub fn detail(&self) -> &str {
        match self {
            Reject::MalformedJson(d)
            | Reject::MissingField(d)
            | Reject::BadEventType(d)
            | Reject::BadTimestamp(d)
            | Reject::BadFare(d)
            | Reject::BadTripId(d)
            | Reject::TooLarge(d)
            | Reject::ConflictingDuplicate(d) => d,
        }
    }
}

/// Why a record was kept instead of stored: the contract's `types.reason`, the one list of
/// reason codes every host writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// See [`Reject::MalformedJson`].
    MalformedJson,
    /// See [`Reject::MissingField`].
    MissingField,
    /// See [`Reject::BadEventType`].
    BadEventType,
    /// See [`Reject::BadTimestamp`].
    BadTimestamp,
    /// See [`Reject::BadFare`].
    BadFare,
    /// See [`Reject::BadTripId`].
    BadTripId,
    /// See [`Reject::TooLarge`].
    TooLarge,
    /// See [`Reject::ConflictingDuplicate`].
    ConflictingDuplicate,
    /// The core itself failed on the record (a trap, its memory cap or its deadline) when the
    /// host parsed it alone.
    CoreFailure,
    /// The store refused an event the core decided to store.
    StoreRefused,
}

impl Reason {
    /// Every reason, in the contract's order.
    pub const ALL: [Reason; 10] = [
        Reason::MalformedJson,
        Reason::MissingField,
        Reason::BadEventType,
        Reason::BadTimestamp,
        Reason::BadFare,
        Reason::BadTripId,
        Reason::TooLarge,
        Reason::ConflictingDuplicate,
        Reason::CoreFailure,
        Reason::StoreRefused,
    ];

    /// The reasons the core gives (the cases of [`Reject`]), in the contract's order: the ones
    /// a summary lists even at zero. The contract lists them first.
    pub const CORE: &[Reason] = Reason::ALL.split_at(8).0;

    /// The reason code: the contract's case name with `_` for `-`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MissingField => "missing_field",
            Reason::BadEventType => "bad_event_type",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::BadFare => "bad_fare",
            Reason::BadTripId => "bad_trip_id",
            Reason::TooLarge => "too_large",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
            Reason::CoreFailure => "core_failure",
            Reason::StoreRefused => "store_refused",
        }
    }

    /// The reason of a code, `None` for a string that is not one.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// A valid event.
    Accepted(TripEvent),
    /// A rejected record.
    Rejected(Reject),
    /// White space only.
    Blank,
}

impl ParseOutcome {
    /// The event, if the record was accepted.
    pub fn into_accepted(self) -> Option<TripEvent> {
        match self {
            ParseOutcome::Accepted(event) => Some(event),
            _ => None,
        }
    }
}

/// Where the first stored copy of a (trip_id, event_type) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventRef {
    /// Index into the stored events handed to [`crate::resolve`].
    Stored(u32),
    /// Index into the incoming events handed to [`crate::resolve`].
    Incoming(u32),
}

/// A copy whose content differs from the first stored copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The copy that stays.
    pub first: EventRef,
    /// Which fields differ, with both values.
    pub detail: String,
}

/// What to do with one incoming event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// First copy: store it.
    Store,
    /// Identical to an earlier copy: count it, store nothing.
    Duplicate(EventRef),
    /// Different content under an existing key: quarantine it.
    ConflictingDuplicate(Conflict),
}

/// How a trip with both halves turned out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TripStatus {
    /// Counted in the KPIs.
    Completed,
    /// End before start.
    Invalid,
    /// No fare on either half.
    NoFare,
}

impl TripStatus {
    /// The status as it appears in summaries and stores.
    pub fn as_str(self) -> &'static str {
        match self {
            TripStatus::Completed => "completed",
            TripStatus::Invalid => "invalid",
            TripStatus::NoFare => "no_fare",
        }
    }
}

impl TripStatus {
    /// The status of a string [`TripStatus::as_str`] wrote, `None` for any other.
    pub fn from_str_opt(s: &str) -> Option<TripStatus> {
        [
            TripStatus::Completed,
            TripStatus::Invalid,
            TripStatus::NoFare,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TripStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trip that has both halves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClosedTrip {
    /// The trip's id.
    pub trip_id: String,
    /// The outcome.
    pub status: TripStatus,
    /// Start instant, ns.
    pub start_ns: i64,
    /// End instant, ns.
    pub end_ns: i64,
    /// The end's fare, else the start's.
    pub fare_cents: Option<i64>,
}

/// A trip closed by [`crate::pair_all`], with the UTC date of its start (`YYYY-MM-DD`): the
/// date a host files it under for a KPI job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paired {
    /// The trip, as [`crate::pair`] closes it.
    pub trip: ClosedTrip,
    /// The UTC date of the start.
    pub utc_day: String,
}

/// A closed trip and the incoming event that closed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closing {
    /// Index into the incoming events.
    pub closed_by: u32,
    /// The trip.
    pub trip: ClosedTrip,
}

/// The decisions for one batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// One per incoming event.
    pub decisions: Vec<Decision>,
    /// Trips closed by this batch.
    pub closed: Vec<Closing>,
    /// Incoming events stored whose trip is still open.
    pub opened: Vec<u32>,
    /// Newest timestamp among the events to store that the clock rule lets move the
    /// event-time watermark (events dated after `arrival + max skew` do not).
    pub newest_ns: Option<i64>,
    /// Incoming events to store whose timestamp is later than the batch's arrival plus the
    /// allowed skew: stored and matched, but kept out of the watermark.
    pub skewed: Vec<u32>,
}

/// When a batch arrived, by the host's clock, and how far an event's own clock may run ahead
/// of it before the event no longer moves the event-time watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Arrival time of the batch, ns since the epoch (Kinesis: the latest approximate arrival
    /// timestamp of its records; the replay: the wall clock when the batch is read).
    pub arrival_ns: i64,
    /// The allowed clock skew, ns.
    pub max_skew_ns: i64,
}

impl Clock {
    /// The latest event time that may move the watermark.
    pub fn horizon_ns(self) -> i64 {
        self.arrival_ns.saturating_add(self.max_skew_ns)
    }
}

/// What the KPIs need of a closed trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TripFare {
    /// Only completed trips count.
    pub status: TripStatus,
    /// Start instant, ns: decides the day.
    pub start_ns: i64,
    /// Fare in cents.
    pub fare_cents: Option<i64>,
}

impl From<&ClosedTrip> for TripFare {
    fn from(t: &ClosedTrip) -> TripFare {
        TripFare {
            status: t.status,
            start_ns: t.start_ns,
            fare_cents: t.fare_cents,
        }
    }
}

/// Running totals of one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayTotals {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Completed trips.
    pub trip_count: u64,
    /// Sum of fares, cents.
    pub total_cents: i64,
    /// Smallest fare, cents.
    pub min_cents: i64,
    /// Largest fare, cents.
    pub max_cents: i64,
}

/// One finished KPI row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayKpi {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Completed trips.
    pub trip_count: u64,
    /// Sum of fares, cents.
    pub total_cents: i64,
    /// Average, cents, rounded half-to-even.
    pub average_cents: i64,
    /// Smallest fare, cents.
    pub min_cents: i64,
    /// Largest fare, cents.
    pub max_cents: i64,
}

/// Why a KPI request was refused; each detail is a complete message naming the bad input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KpiError {
    /// Not an IANA zone name.
    #[error("{0}")]
    UnknownTimeZone(String),
    /// Not a `YYYY-MM-DD` date, or an empty range.
    #[error("{0}")]
    BadDate(String),
    /// A sum overflowed.
    #[error("{0}")]
    Overflow(String),
}
