//! # descent-train
//!
//! The training engine on candle: descent's optimizers updating candle `Var`s in place, datasets,
//! models and the training loop.
//!
//! For a candle model of your own (its parameters in a `VarMap`), [`OptimizerConfig`] and
//! [`VarOptimizer::for_varmap`] give the optimizers with parameter groups by name, clipping, a
//! schedule and checkpoints, without descent's models or loop: see [`optim`] and the `quickstart`
//! (the README's first program), `own_model` and `read_checkpoint` examples.

#![warn(missing_docs)]

pub mod augment;
pub mod average;
pub mod checkpoint;
pub mod compress;
pub mod conv;
pub(crate) mod cpu;
pub mod data;
pub mod dataset;
pub mod error;
pub(crate) mod gemm;
pub mod gpt;
pub mod layers;
pub mod linear;
pub mod lm;
pub mod loss;
pub mod mnist;
pub mod model;
pub mod nn;
pub mod optim;
pub mod parallel;
pub mod precision;
pub mod prune;
pub mod qat;
pub mod quant;
pub mod resnet;
pub mod rng;
pub mod tensorboard;
pub mod text;
pub mod train;

pub use error::{Error, Result};
pub use optim::{NonFinite, OptimizerConfig, VarOptimizer};
