//! # descent-train
//!
//! The training engine on candle: descent's optimizers updating candle `Var`s in place, datasets,
//! models and the training loop.

pub mod checkpoint;
pub mod conv;
pub(crate) mod cpu;
pub mod data;
pub mod error;
pub(crate) mod gemm;
pub mod layers;
pub mod linear;
pub mod loss;
pub mod mnist;
pub mod model;
pub mod nn;
pub mod optim;
pub mod rng;
pub mod train;

pub use error::{Error, Result};
pub use optim::VarOptimizer;
