//! Building blocks to assemble models from, each matching PyTorch's forward and backward: embedding,
//! layer and batch normalization, GELU, softmax and log-softmax, causal multi-head self-attention,
//! average pooling and dropout.
//!
//! Where candle's composition is slow or gives the wrong gradient, a block is one candle op with its
//! own backward (f32 on the CPU, like the rest of descent's ops); otherwise it is candle's ops.

pub mod activation;
pub mod attention;
pub mod dropout;
pub mod embedding;
mod head_products;
pub mod norm;
pub mod pool;

pub use activation::{gelu, log_softmax, softmax, Gelu};
pub use attention::{causal_attention, causal_attention_with_weights, CausalSelfAttention};
pub use dropout::Dropout;
pub use embedding::{embedding, embedding_with, Embedding, EmbeddingOptions};
pub use norm::{batch_norm, layer_norm, BatchNorm, BatchNorm1d, BatchNorm2d, BatchNormOptions, LayerNorm};
pub use pool::{adaptive_avg_pool2d_1x1, avg_pool2d, AvgPool2d, Divisor, Rounding};

/// Rows handled per rayon task by the row-wise ops: small tensors stay on one thread.
pub(crate) const ROWS_PER_TASK: usize = 64;
