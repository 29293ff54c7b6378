//! The MNIST idx format, gzip or not.
