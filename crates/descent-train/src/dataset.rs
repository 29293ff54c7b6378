//! The data pipeline's two halves: a [`BatchSource`] turns sample indices into a batch `(x, y)`,
//! a sampler chooses the indices from a seeded [`Rng`].
//!
//! Sources: the in-memory tensors of [`crate::data::Dataset`] (MNIST as read by
//! [`crate::mnist`], the synthetic regression set) and [`TokenWindows`], a token stream whose
//! samples are the windows starting at each offset (the character corpus of [`crate::text`]).
//! Samplers: [`EpochSampler`] (each sample once per epoch in a shuffled order, in batches) and
//! [`RandomSampler`] (independent uniform draws with replacement, nanoGPT's `get_batch`).
//!
//! A sampler draws only from the generator it is handed, so the order is a function of the
//! generator's state: the training loops record that state in checkpoints (the state at an
//! epoch's start and the batch reached, or the state after the last step) and a resumed run draws
//! the same indices, bit for bit.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Samples addressed by index: `len` of them, and a batch of any of them.
pub trait BatchSource: Sync {
    /// The number of samples; valid indices are `0..len()`.
    fn len(&self) -> usize;

    /// Whether the source has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inputs and targets of the samples at `indices`, in that order, first axis the sample. An
    /// index past the end is an error.
    fn batch(&self, indices: &[u32]) -> Result<(Tensor, Tensor)>;

    /// Whether the source is well formed (inputs and targets of the same samples), checked before
    /// a run's first step. Well formed by default.
    fn check(&self) -> Result<()> {
        Ok(())
    }
}

impl BatchSource for crate::data::Dataset {
    fn len(&self) -> usize {
        crate::data::Dataset::len(self)
    }

    fn check(&self) -> Result<()> {
        crate::data::Dataset::check(self)
    }

    fn batch(&self, indices: &[u32]) -> Result<(Tensor, Tensor)> {
        crate::data::Dataset::batch(self, indices)
    }
}

/// A token stream as samples: sample `o` is the window at offset `o`, `x` its tokens
/// `o … o+block−1` and `y` the tokens `o+1 … o+block` (the next token at each position), both
/// `[b, block]` u32. There are `tokens − block` samples (every window has its next token).
#[derive(Debug, Clone, Copy)]
pub struct TokenWindows<'a> {
    tokens: &'a [u32],
    block: usize,
}

impl<'a> TokenWindows<'a> {
    /// The windows of `block` tokens of `tokens`; a stream not longer than `block` (no window
    /// with its next token) or a block of 0 is an error.
    pub fn new(tokens: &'a [u32], block: usize) -> Result<TokenWindows<'a>> {
        if block == 0 || tokens.len() <= block {
            return Err(Error::Param(format!(
                "{} tokens are too few for windows of {block} + 1 (block size {block})",
                tokens.len()
            )));
        }
        Ok(TokenWindows { tokens, block })
    }

    /// Tokens per window.
    pub fn block(&self) -> usize {
        self.block
    }
}

impl BatchSource for TokenWindows<'_> {
    fn len(&self) -> usize {
        self.tokens.len() - self.block
    }

    fn batch(&self, indices: &[u32]) -> Result<(Tensor, Tensor)> {
        let (n, block) = (self.len(), self.block);
        let mut x = Vec::with_capacity(indices.len() * block);
        let mut y = Vec::with_capacity(indices.len() * block);
        for &o in indices {
            let o = o as usize;
            if o >= n {
                return Err(Error::Param(format!(
                    "window offset {o} out of range: {n} windows of {block} + 1 in {} tokens",
                    self.tokens.len()
                )));
            }
            x.extend_from_slice(&self.tokens[o..o + block]);
            y.extend_from_slice(&self.tokens[o + 1..o + block + 1]);
        }
        let b = indices.len();
        Ok((Tensor::from_vec(x, (b, block), &Device::Cpu)?, Tensor::from_vec(y, (b, block), &Device::Cpu)?))
    }
}

/// A source's samples are indexed by `u32` ([`BatchSource::batch`]): at most `u32::MAX` of them
/// (more would wrap around, drawing some twice as often and others never).
pub fn indexable(n: usize) -> Result<()> {
    if n > u32::MAX as usize {
        return Err(Error::Param(format!("{n} samples: at most {} (samples are indexed by u32)", u32::MAX)));
    }
    Ok(())
}

/// Each sample once per epoch: `0..n` shuffled (Fisher–Yates) by the generator at the epoch's
/// start, cut into batches of `batch_size` (the last one shorter when `n` is not a multiple).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSampler {
    order: Vec<u32>,
    batch_size: usize,
}

impl EpochSampler {
    /// The epoch drawn from `rng` (which advances past the shuffle). A batch size of 0 is an error.
    pub fn new(n: usize, batch_size: usize, rng: &mut Rng) -> Result<EpochSampler> {
        if batch_size == 0 {
            return Err(Error::Param("batch size must be at least 1".into()));
        }
        indexable(n)?;
        let mut order: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut order);
        Ok(EpochSampler { order, batch_size })
    }

    /// The epoch whose generator state at its start was `state`: what a checkpoint taken inside
    /// an epoch records to continue it.
    pub fn at_state(n: usize, batch_size: usize, state: u64) -> Result<EpochSampler> {
        EpochSampler::new(n, batch_size, &mut Rng::new(state))
    }

    /// The whole epoch's order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Batches in the epoch.
    pub fn batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }

    /// The indices of batch `b` (`0..batches()`).
    pub fn batch(&self, b: usize) -> &[u32] {
        let start = (b * self.batch_size).min(self.order.len());
        &self.order[start..(start + self.batch_size).min(self.order.len())]
    }

    /// The batches in order.
    pub fn iter(&self) -> std::slice::Chunks<'_, u32> {
        self.order.chunks(self.batch_size)
    }
}

/// Independent uniform draws with replacement from `0..n`: nanoGPT's `get_batch`
/// (`torch.randint(len(data) − block_size, (batch_size,))`) on a [`TokenWindows`] source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomSampler {
    /// Samples drawn from: indices `0..n`.
    pub n: usize,
    /// Indices drawn per batch.
    pub batch_size: usize,
}

impl RandomSampler {
    /// Draws of `batch_size` indices from `0..n`; refused for more samples than a `u32` index
    /// reaches or a batch of 0.
    pub fn new(n: usize, batch_size: usize) -> Result<RandomSampler> {
        if batch_size == 0 {
            return Err(Error::Param("batch size must be at least 1".into()));
        }
        indexable(n)?;
        Ok(RandomSampler { n, batch_size })
    }

    /// The next batch of indices, drawn from `rng`.
    pub fn draw(&self, rng: &mut Rng) -> Vec<u32> {
        (0..self.batch_size).map(|_| rng.below(self.n) as u32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{CharCorpus, TextSplit};

    #[test]
    fn windows_match_the_corpus_batches() {
        let c = CharCorpus::from_text(&"the quick brown fox jumps over the lazy dog. ".repeat(20), "fox").unwrap();
        let w = TokenWindows::new(c.split(TextSplit::Train), 8).unwrap();
        assert_eq!(w.len(), c.train.len() - 8);
        let s = RandomSampler { n: w.len(), batch_size: 5 };
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        for _ in 0..4 {
            let (x, y) = w.batch(&s.draw(&mut a)).unwrap();
            let (cx, cy) = c.batch(TextSplit::Train, 5, 8, &mut b).unwrap();
            assert_eq!(x.to_vec2::<u32>().unwrap(), cx.to_vec2::<u32>().unwrap());
            assert_eq!(y.to_vec2::<u32>().unwrap(), cy.to_vec2::<u32>().unwrap());
        }
        assert_eq!(a, b);
        let e = w.batch(&[w.len() as u32]).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{e}");
        assert!(TokenWindows::new(&[1, 2, 3], 3).is_err());
        assert!(TokenWindows::new(&[1, 2, 3], 0).is_err());
    }

    #[test]
    fn epochs_are_permutations_from_the_generator_state() {
        let mut rng = Rng::new(9);
        let state = rng.state();
        let e = EpochSampler::new(103, 10, &mut rng).unwrap();
        assert_eq!(e.batches(), 11);
        assert_eq!(e.batch(10).len(), 3);
        assert_eq!(e.iter().count(), 11);
        let mut all: Vec<u32> = e.iter().flatten().copied().collect();
        assert_eq!(all, e.order());
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(EpochSampler::at_state(103, 10, state).unwrap(), e);
        // The order the training loop has always drawn.
        assert_eq!(e.order(), crate::data::epoch_order(103, &mut Rng::new(state)));
        let mut again = Rng::new(state);
        EpochSampler::new(103, 10, &mut again).unwrap();
        assert_eq!(again, rng);
        assert!(EpochSampler::new(5, 0, &mut rng).is_err());
    }
}
