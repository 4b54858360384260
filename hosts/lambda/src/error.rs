//! The one error type of the functions.
//!
//! A handler that returns an error fails its invocation: Lambda retries it (for stream sources,
//! per the event source mapping's retry and bisect settings) and reports the error's type
//! ([`Error::error_type`]) and message, which Step Functions shows for the KPI state machine's
//! tasks. Every message says what failed and, where it can, what to do.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use tripflow_runtime::CoreError;

use crate::config::ConfigError;
use crate::kpi::ChunksFailed;

/// What a function failed with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The core failed (a trap, its memory cap or its deadline), or refused a KPI request.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An AWS call failed past its retries (or with an error retrying cannot help): the call,
    /// and the service's error.
    #[error("{call}: {error}")]
    Aws {
        /// The call, e.g. `UpdateItem(mark DIRTY/DAY#2019-03-01)`.
        call: String,
        /// The service's error code and message, or the transport's error.
        error: String,
    },
    /// Something read back from the table, S3 or an event is not what the functions write:
    /// what, and where.
    #[error("{0}")]
    Unreadable(String),
    /// A request the function refuses (a KPI payload's bad date or setting): what is wrong and
    /// what would be accepted.
    #[error("{0}")]
    Request(String),
    /// A conditional write lost to concurrent writers more often than the function tries
    /// again: what was being written.
    #[error("{0}")]
    Contended(String),
    /// KPI chunks that failed past their retries; nothing was published.
    #[error(transparent)]
    ChunksFailed(#[from] ChunksFailed),
    /// An event or a result that is not the JSON expected.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The Lambda runtime's loop stopped (the Runtime API went away).
    #[error("the Lambda runtime stopped: {0}")]
    Runtime(lambda_runtime::Error),
    /// A task of the invocation panicked or was cancelled.
    #[error("a task of the invocation failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// An AWS call that failed, described from the SDK's error (see [`crate::retry::describe`]).
    pub fn aws<E: ProvideErrorMetadata + std::error::Error + 'static>(
        call: impl Into<String>,
        e: &SdkError<E, HttpResponse>,
    ) -> Error {
        Error::Aws {
            call: call.into(),
            error: crate::retry::describe(e),
        }
    }

    /// The error type Lambda reports for a failed invocation, which Step Functions shows as
    /// the task's error name: `ChunksFailed` when a KPI state-machine execution ends on chunks
    /// that failed past their retries, `TripflowError` for anything else.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::ChunksFailed(_) => "ChunksFailed",
            _ => "TripflowError",
        }
    }
}

impl From<Error> for lambda_runtime::Diagnostic {
    fn from(e: Error) -> lambda_runtime::Diagnostic {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().into(),
            error_message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failed_chunks_have_their_own_error_type() {
        let chunks = Error::from(ChunksFailed {
            failed: vec!["2019-01-01..2019-01-31 (Lambda.ServiceException: boom)".into()],
            total: 3,
        });
        let d = lambda_runtime::Diagnostic::from(chunks);
        assert_eq!(d.error_type, "ChunksFailed");
        assert!(
            d.error_message.contains("1 of 3 chunks"),
            "{}",
            d.error_message
        );
        let other = Error::Request("from must be YYYY-MM-DD".into());
        assert_eq!(other.error_type(), "TripflowError");
        let aws = Error::Aws {
            call: "PutObject(kpi)".into(),
            error: "SlowDown".into(),
        };
        assert_eq!(aws.to_string(), "PutObject(kpi): SlowDown");
    }
}
