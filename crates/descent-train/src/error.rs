//! Typed errors of the training engine.

/// What can go wrong while loading data or training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the optimizer core (a hyper-parameter, a shape, a state).
    #[error(transparent)]
    Core(#[from] descent_core::Error),
    /// An error of candle (a tensor op, a device).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
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

/// Result alias of the training engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
