//! Errors of the store and its jobs. Bad records are not errors: they are data, counted and
//! quarantined. These are the failures that stop a job.

use tripflow_runtime::CoreError;

/// Why a job stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The core failed or refused (bad time zone, bad date, trap).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The database failed.
    #[error("{what}")]
    Db {
        /// What was being done.
        what: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The state directory cannot be used as it is.
    #[error("{0}")]
    Damaged(String),
    /// Another process is writing the state directory.
    #[error("{0}")]
    Busy(String),
    /// A replay worker panicked (a bug): the replay stops at the last commit.
    #[error("a replay thread failed: {0}; the store keeps every batch committed before it")]
    Panicked(String),
    /// A replay's committing thread stopped (its own error is the one to report).
    #[error("the replay stopped")]
    Stopped,
    /// An input cannot be used as it is (a table export that does not check out); the
    /// message names the file and says what to do.
    #[error("{0}")]
    Input(String),
    /// Reading input or writing output failed.
    #[error("{what}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Adds what was being done to a SQLite error.
pub(crate) trait DbContext<T> {
    fn db(self, what: &str) -> Result<T, Error>;
}

impl<T> DbContext<T> for Result<T, rusqlite::Error> {
    fn db(self, what: &str) -> Result<T, Error> {
        self.map_err(|source| Error::Db {
            what: what.to_owned(),
            source,
        })
    }
}

/// Adds what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn io(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> IoContext<T> for Result<T, std::io::Error> {
    fn io(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}
