//! # descent-core
//!
//! Optimizers, gradient transformations and learning-rate schedules on flat `f32` buffers, with no
//! tensor library underneath. They reproduce `torch.optim` and optax to their recorded numbers and
//! compose the way optax does: small [`Transform`]s chained into optimizers, elementwise chains fused
//! block by block so a step is one pass over memory.
//!
//! ```
//! use descent_core::schedule::{warmup_cosine_decay, WarmupCosineDecay};
//! use descent_core::transforms::{AddDecayedWeights, ScaleByAdam, ScaleByAdamConfig, ScaleByLearningRate};
//! use descent_core::{chain, Optimizer};
//!
//! // AdamW with a warm-up + cosine learning rate (optax.adamw with warmup_cosine_decay_schedule).
//! let lr = warmup_cosine_decay(WarmupCosineDecay {
//!     init_value: 0.0,
//!     peak_value: 1e-3,
//!     warmup_steps: 100,
//!     decay_steps: 1_000,
//!     end_value: 1e-5,
//!     exponent: 1.0,
//! })
//! .unwrap();
//! let adamw = chain(vec![
//!     Box::new(ScaleByAdam::new(ScaleByAdamConfig { b2: 0.95, ..Default::default() })),
//!     Box::new(AddDecayedWeights::new(1e-4)),
//!     Box::new(ScaleByLearningRate::new(lr, true)),
//! ]);
//! let mut params = vec![vec![0.5f32; 6], vec![0.0f32; 3]];
//! let shapes = vec![vec![2, 3], vec![3]];
//! let views: Vec<&[f32]> = params.iter().map(|p| p.as_slice()).collect();
//! let mut opt = Optimizer::new(adamw, shapes, &views).unwrap();
//! let grads = vec![vec![0.1f32; 6], vec![-0.2f32; 3]];
//! opt.step_vecs(&mut params, &grads).unwrap();
//! assert_eq!(opt.steps(), 1);
//! ```

#![warn(missing_docs)]

pub mod alloc;
pub mod chain;
pub mod closure;
pub mod error;
pub mod json;
pub mod kernel;
pub mod landscape;
pub mod learning_rate;
pub mod optax;
pub mod optimizer;
pub mod po;
pub mod replay;
pub mod rng;
pub mod schedule;
pub mod sparse;
pub mod spec;
pub mod state;
pub mod torch;
pub mod transform;
pub mod transforms;

pub use chain::chain;
pub use error::{Error, Result};
pub use kernel::Elementwise;
pub use learning_rate::{LearningRate, ScalarOrSchedule};
pub use optimizer::{NonFinite, Optimizer};
pub use transform::Transform;
