//! Typed errors of the core crate.

/// Everything that can go wrong in the core: bad specs, bad hyper-parameters, bad shapes, bad state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name (optimizer, schedule, keyword argument, …) that is not known.
    #[error("unknown {kind} `{name}`; accepted: {accepted}")]
    Unknown {
        /// What was looked up (`optimizer`, `schedule`, `library`, …).
        kind: &'static str,
        /// The name given.
        name: String,
        /// The accepted names, comma-separated.
        accepted: String,
    },
    /// A name among many (the optimizers of the registry) that is not known: the nearest known
    /// ones are named rather than all of them.
    #[error("unknown {kind} `{name}`; {suggestion}")]
    UnknownAmongMany {
        /// What was looked up.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The nearest known names, or where to find them all.
        suggestion: String,
    },
    /// A hyper-parameter outside its valid range, refused at construction as torch and optax do.
    #[error("invalid hyper-parameter: {0}")]
    Invalid(String),
    /// A numerical routine that failed on the values it was given (an SVD or eigendecomposition
    /// that did not converge, a matrix with NaN or infinite entries), as torch.linalg raises.
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// A missing or ill-typed field in a spec or file.
    #[error("{context}: {message}")]
    Field {
        /// Where: the optimizer, schedule or file and the argument or field.
        context: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// Gradients or parameters whose count or sizes do not match the optimizer's.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A saved state that does not fit this optimizer.
    #[error("state: {0}")]
    State(String),
    /// A run longer than its schedule supports (torch `OneCycleLR` stepped past `total_steps`).
    #[error(
        "Tried to step {} times. The specified number of total steps is {supported} (a run of {requested} steps)",
        .supported.saturating_add(1)
    )]
    TooManySteps {
        /// Steps asked for.
        requested: u64,
        /// Steps the schedule defines.
        supported: u64,
    },
    /// A closure-driven optimizer (L-BFGS, SAM, Polyak SGD, MoMo, …) asked for where only
    /// gradients will be given: it evaluates the objective itself.
    #[error(
        "{0} evaluates the objective itself (a closure-driven optimizer): it cannot be stepped with \
         gradients alone"
    )]
    NeedsClosure(String),
    /// A file that could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Result alias of the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Checks a condition on a hyper-parameter, with the library's wording.
pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Invalid(msg()))
    }
}
