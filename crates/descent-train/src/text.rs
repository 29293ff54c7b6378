//! Character-level text for language models, as nanoGPT's `shakespeare_char`: the vocabulary is the
//! sorted set of the text's distinct characters (a character's id is its index there), the first
//! 90% of the characters train and the rest validate, and a batch is random windows of
//! `block_size + 1` characters: `x` the first `block_size`, `y` the same shifted by one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Which part of a [`CharCorpus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSplit {
    /// The first 90% of the characters.
    Train,
    /// The last 10%.
    Val,
}

/// A character vocabulary: distinct characters in sorted order, a character's id its index. What a
/// character-level model's checkpoint keeps to encode prompts and decode samples.
#[derive(Debug, Clone)]
pub struct CharVocab {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
    /// Where the vocabulary came from (a text file, a checkpoint), for error messages.
    source: String,
}

impl CharVocab {
    /// The vocabulary of these characters, which must be distinct, sorted and at least one (as
    /// [`CharCorpus`] makes them); `source` names it in errors.
    pub fn new(chars: Vec<char>, source: &str) -> Result<CharVocab> {
        if chars.is_empty() {
            return Err(Error::Data { path: source.into(), message: "the vocabulary is empty".into() });
        }
        if let Some(w) = chars.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::Data {
                path: source.into(),
                message: format!("the vocabulary is not sorted and distinct ({:?} before {:?})", w[0], w[1]),
            });
        }
        let ids = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        Ok(CharVocab { chars, ids, source: source.into() })
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The ids of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.ids.get(&c).copied().ok_or_else(|| {
                    Error::Param(format!(
                        "character {c:?} (U+{:04X}) is not in the {}-character vocabulary of {}",
                        c as u32,
                        self.chars.len(),
                        self.source
                    ))
                })
            })
            .collect()
    }

    /// The text of `ids`; an id outside the vocabulary is an error naming it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        ids.iter()
            .map(|&i| {
                self.chars.get(i as usize).copied().ok_or_else(|| {
                    Error::Param(format!("token id {i} is not in the {}-character vocabulary", self.chars.len()))
                })
            })
            .collect()
    }
}

/// A text as token ids over its own character vocabulary, split 90/10 by position.
#[derive(Debug, Clone)]
pub struct CharCorpus {
    /// Where the text came from (a file's path, or a name), for error messages.
    pub source: String,
    /// The distinct characters of the text, sorted; a character's id is its index.
    pub vocab: Vec<char>,
    codec: CharVocab,
    /// Ids of the first `⌊0.9·n⌋` characters.
    pub train: Vec<u32>,
    /// Ids of the remaining characters.
    pub val: Vec<u32>,
}

impl CharCorpus {
    /// A digest of the text (the CRC-32 of its character ids, train then validation split, with
    /// its vocabulary): two texts with the same characters but different content differ.
    pub fn digest(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        let vocab: String = self.vocab.iter().collect();
        h.update(&(vocab.len() as u64).to_le_bytes());
        h.update(vocab.as_bytes());
        for split in [&self.train, &self.val] {
            h.update(&(split.len() as u64).to_le_bytes());
            for id in split.iter() {
                h.update(&id.to_le_bytes());
            }
        }
        format!("crc32:{:08x}", h.finalize())
    }

    /// Reads a UTF-8 text file. A file that cannot be read, is not UTF-8 or is empty is an error
    /// naming it.
    pub fn load(path: impl AsRef<Path>) -> Result<CharCorpus> {
        let path = path.as_ref();
        let err = |message: String| Error::Data { path: path.display().to_string(), message };
        let bytes = crate::checkpoint::read_regular(path).map_err(|e| err(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            err(format!("not UTF-8 text: invalid byte 0x{:02x} at byte offset {at}", e.as_bytes()[at]))
        })?;
        CharCorpus::from_text(&text, &path.display().to_string())
    }

    /// The corpus of `text`; `source` names it in errors. An empty text is an error.
    pub fn from_text(text: &str, source: &str) -> Result<CharCorpus> {
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() {
            return Err(Error::Data { path: source.into(), message: "the text is empty".into() });
        }
        let mut vocab = chars.clone();
        vocab.sort_unstable();
        vocab.dedup();
        let codec = CharVocab::new(vocab.clone(), source)?;
        let all: Vec<u32> = chars.iter().map(|c| codec.ids[c]).collect();
        // Python's `int(n * 0.9)`: the product in double precision, truncated.
        let n_train = (all.len() as f64 * 0.9) as usize;
        let (train, val) = all.split_at(n_train);
        Ok(CharCorpus { source: source.into(), vocab, codec, train: train.to_vec(), val: val.to_vec() })
    }

    /// Number of distinct characters.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The ids of a split.
    pub fn split(&self, split: TextSplit) -> &[u32] {
        match split {
            TextSplit::Train => &self.train,
            TextSplit::Val => &self.val,
        }
    }

    /// The vocabulary, to encode and decode with.
    pub fn vocabulary(&self) -> &CharVocab {
        &self.codec
    }

    /// The ids of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.codec.encode(text)
    }

    /// The text of `ids`; an id outside the vocabulary is an error naming it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.codec.decode(ids)
    }

    /// The windows at these offsets of a split: `x` `[b, block]` holds characters `o … o+block−1`
    /// and `y` `[b, block]` characters `o+1 … o+block` of each offset `o` (u32 ids). A window past
    /// the split's end is an error.
    pub fn batch_at(&self, split: TextSplit, offsets: &[usize], block: usize) -> Result<(Tensor, Tensor)> {
        let data = self.split(split);
        if block >= data.len() {
            return Err(Error::Param(format!(
                "windows of {} characters: longer than the {}-character {split:?} split",
                block.saturating_add(1),
                data.len()
            )));
        }
        let (mut x, mut y) = (Vec::with_capacity(offsets.len() * block), Vec::with_capacity(offsets.len() * block));
        for &o in offsets {
            if o > data.len() - block - 1 {
                return Err(Error::Param(format!(
                    "window of {} characters at offset {o} runs past the {}-character {split:?} split",
                    block + 1,
                    data.len()
                )));
            }
            x.extend_from_slice(&data[o..o + block]);
            y.extend_from_slice(&data[o + 1..o + block + 1]);
        }
        let b = offsets.len();
        Ok((Tensor::from_vec(x, (b, block), &Device::Cpu)?, Tensor::from_vec(y, (b, block), &Device::Cpu)?))
    }

    /// `batch` random windows (nanoGPT's `get_batch`): offsets uniform in `0..len − block`, drawn
    /// from `rng`. A split not longer than `block` is an error.
    pub fn batch(&self, split: TextSplit, batch: usize, block: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        let n = self.split(split).len();
        if block == 0 || n <= block {
            return Err(Error::Param(format!(
                "the {split:?} split of {} has {n} characters, too few for windows of {block} + 1",
                self.source
            )));
        }
        let offsets: Vec<usize> = (0..batch).map(|_| rng.below(n - block)).collect();
        self.batch_at(split, &offsets, block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_split_and_windows() {
        let c = CharCorpus::from_text("hello world", "greeting").unwrap();
        assert_eq!(c.vocab.iter().collect::<String>(), " dehlorw");
        assert_eq!((c.train.len(), c.val.len()), (9, 2));
        assert_eq!(c.decode(&c.encode("lower").unwrap()).unwrap(), "lower");
        let (x, y) = c.batch_at(TextSplit::Train, &[0, 2], 3).unwrap();
        assert_eq!(c.decode(&x.flatten_all().unwrap().to_vec1::<u32>().unwrap()).unwrap(), "helllo");
        assert_eq!(c.decode(&y.flatten_all().unwrap().to_vec1::<u32>().unwrap()).unwrap(), "elllo ");
        let e = c.encode("hey").unwrap_err().to_string();
        assert!(e.contains("'y'") && e.contains("U+0079") && e.contains("greeting"), "{e}");
        assert!(c.batch_at(TextSplit::Train, &[6], 3).is_err());
        assert!(c.batch(TextSplit::Val, 1, 2, &mut Rng::new(0)).is_err());
        assert!(c.decode(&[8]).is_err());
        assert!(CharCorpus::from_text("", "nothing").unwrap_err().to_string().contains("nothing: the text is empty"));
        let v = CharVocab::new(c.vocab.clone(), "a checkpoint").unwrap();
        assert_eq!(v.chars(), c.vocabulary().chars());
        assert_eq!(v.decode(&v.encode("world").unwrap()).unwrap(), "world");
        assert!(v.encode("!").unwrap_err().to_string().contains("vocabulary of a checkpoint"));
        assert!(CharVocab::new(vec!['b', 'a'], "x").unwrap_err().to_string().contains("not sorted"));
        assert!(CharVocab::new(vec!['a', 'a'], "x").is_err());
        assert!(CharVocab::new(vec![], "x").is_err());
    }
}
