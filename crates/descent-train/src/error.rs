//! Typed errors of the training engine.

/// What can go wrong while loading data or training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the optimizer core (a hyper-parameter, a shape, a state).
    #[error(transparent)]
    Core(#[from] descent_core::Error),
    /// An error of candle (a tensor op, a device), without the backtrace candle attaches when
    /// `RUST_BACKTRACE` is set (a message, not a crash).
    #[error("candle: {0}")]
    Candle(candle_core::Error),
    /// A data file that is missing, truncated or malformed.
    #[error("{path}: {message}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A parameter or gradient that is not what the optimizer expects.
    #[error("{0}")]
    Param(String),
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        fn bare(e: candle_core::Error) -> candle_core::Error {
            match e {
                candle_core::Error::WithBacktrace { inner, .. } => bare(*inner),
                e => e,
            }
        }
        Error::Candle(bare(e))
    }
}

/// Result alias of the training engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
