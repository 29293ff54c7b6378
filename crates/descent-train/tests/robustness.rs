//! Damaged files: a checkpoint or an idx file with bytes flipped, cut off or inserted, or with its
//! header rewritten, is read as an error (or, when the damage changed nothing the file means, as
//! the original), never a panic, and without allocating out of proportion to the file.

mod scratch;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::Device;
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::mnist;
use descent_train::model::{Init, LinearRegression};
use descent_train::rng::Rng;
use descent_train::train::{train_from, EpochEnd, EpochMetrics, Loss, TrainConfig};
use proptest::prelude::*;

/// The system allocator, recording the largest single allocation of the current thread.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-local may already be gone while a thread shuts down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// Runs `f` and returns its result with the largest single allocation it made.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(|l| l.get()))
}

fn tmpdir(tag: &str) -> scratch::Scratch {
    scratch::Scratch::new("robust", tag)
}

/// A real checkpoint (linear regression, Adam with its buffers, cut inside an epoch) and its bytes.
fn checkpoint() -> &'static (Checkpoint, Vec<u8>) {
    static CK: OnceLock<(Checkpoint, Vec<u8>)> = OnceLock::new();
    CK.get_or_init(|| {
        let mut rng = Rng::new(2);
        let data = Dataset::regression(40, &mut rng).unwrap();
        let model = LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap();
        let mut c = TrainConfig::new("adam", Some(0.01), 2, 8, Loss::Mse);
        c.max_steps = Some(7);
        let mut last = None;
        train_from(&model, &data, &data, &c, None, |_: &EpochMetrics, end: &mut EpochEnd| {
            last = Some(end.checkpoint()?);
            Ok(())
        })
        .unwrap();
        let mut ck = last.unwrap();
        ck.run_id = "r".into();
        let dir = tmpdir("ck");
        let path = dir.join("checkpoint.safetensors");
        ck.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (ck, bytes)
    })
}

/// One damage to a file's bytes.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, mask: u8 },
    Truncate { len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    Set { at: usize, value: u8 },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        any::<usize>().prop_map(|len| Damage::Truncate { len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Damage::Remove { at, len }),
        (any::<usize>(), prop_oneof![Just(0u8), Just(0xff), Just(b'9'), Just(b'"'), Just(b'{'), Just(b',')])
            .prop_map(|(at, value)| Damage::Set { at, value }),
    ]
}

/// Applies damages, positions taken modulo the length (the first bytes, the header length and
/// the JSON header, are hit as often as the data).
fn apply(bytes: &[u8], damages: &[Damage]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for d in damages {
        let n = b.len().max(1);
        match d {
            Damage::Flip { at, mask } => {
                if !b.is_empty() {
                    b[at % n] ^= mask;
                }
            }
            Damage::Truncate { len } => b.truncate(len % n),
            Damage::Insert { at, bytes } => {
                let at = at % (b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Damage::Remove { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                b.drain(at.min(end)..end);
            }
            Damage::Set { at, value } => {
                if !b.is_empty() {
                    b[at % n] = *value;
                }
            }
        }
    }
    b
}

/// Reads a checkpoint from damaged bytes through a file, as a resume does.
fn load_damaged(bytes: &[u8], tag: &str) -> (descent_train::Result<Checkpoint>, usize) {
    let dir = tmpdir(tag);
    let path = dir.join("checkpoint.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let r = measured(|| Checkpoint::load(&path));
    std::fs::remove_file(&path).unwrap();
    r
}

/// The most a load may allocate at once: the file read whole, and a small multiple for the
/// parsed header and tensors.
fn allowance(file_len: usize) -> usize {
    4 * file_len + (64 << 10)
}

/// A change of the JSON header, re-serialized with a consistent header length.
#[derive(Debug, Clone)]
enum HeaderEdit {
    /// A metadata field set to a value (numbers out of range, text, empty).
    Meta { key: usize, value: String },
    /// A metadata field removed.
    Drop { key: usize },
    /// A tensor's shape replaced (huge dimensions whose product overflows included).
    Shape { tensor: usize, shape: Vec<u64> },
    /// A tensor's offsets replaced.
    Offsets { tensor: usize, start: u64, end: u64 },
    /// A tensor's dtype replaced.
    Dtype { tensor: usize, dtype: &'static str },
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let value = prop_oneof![
        Just(String::new()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        Just("1e400".to_string()),
        Just("descent-checkpoint-1".to_string()),
        Just("{\"lr\": null}".to_string()),
        "[0-9a-f]{1,9}",
        any::<u64>().prop_map(|v| v.to_string()),
    ];
    let dim = prop_oneof![0u64..4, Just(u32::MAX as u64), Just(u64::MAX), Just(1 << 62)];
    prop_oneof![
        (any::<usize>(), value).prop_map(|(key, value)| HeaderEdit::Meta { key, value }),
        any::<usize>().prop_map(|key| HeaderEdit::Drop { key }),
        (any::<usize>(), prop::collection::vec(dim, 0..4))
            .prop_map(|(tensor, shape)| HeaderEdit::Shape { tensor, shape }),
        (any::<usize>(), prop_oneof![0u64..64, Just(u64::MAX)], prop_oneof![0u64..64, Just(u64::MAX)])
            .prop_map(|(tensor, start, end)| HeaderEdit::Offsets { tensor, start, end }),
        (any::<usize>(), prop::sample::select(vec!["F64", "F16", "U8", "BOOL", "I64", "F32"]))
            .prop_map(|(tensor, dtype)| HeaderEdit::Dtype { tensor, dtype }),
    ]
}

fn edit_header(bytes: &[u8], edit: &HeaderEdit) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut tensors: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    tensors.sort();
    let meta = header["__metadata__"].as_object_mut().unwrap();
    let mut keys: Vec<String> = meta.keys().cloned().collect();
    keys.sort();
    match edit {
        HeaderEdit::Meta { key, value } => {
            meta.insert(keys[key % keys.len()].clone(), value.clone().into());
        }
        HeaderEdit::Drop { key } => {
            meta.remove(&keys[key % keys.len()]);
        }
        HeaderEdit::Shape { tensor, shape } => {
            header[&tensors[tensor % tensors.len()]]["shape"] = serde_json::json!(shape);
        }
        HeaderEdit::Offsets { tensor, start, end } => {
            header[&tensors[tensor % tensors.len()]]["data_offsets"] = serde_json::json!([start, end]);
        }
        HeaderEdit::Dtype { tensor, dtype } => {
            header[&tensors[tensor % tensors.len()]]["dtype"] = serde_json::json!(dtype);
        }
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    // Padded with spaces to 8 bytes, as safetensors writes it.
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A small MNIST-like set in `dir`, every file damaged by `damages` (plain or gzip-compressed
/// before or after the damage).
fn write_damaged_set(dir: &Path, damages: &[Damage], gzip: bool, damage_compressed: bool) -> usize {
    let files = [
        ("train-images-idx3-ubyte", idx(&[3, 4, 5], &(0..60).collect::<Vec<u8>>())),
        ("train-labels-idx1-ubyte", idx(&[3], &[1, 7, 9])),
        ("t10k-images-idx3-ubyte", idx(&[1, 4, 5], &[200; 20])),
        ("t10k-labels-idx1-ubyte", idx(&[1], &[0])),
    ];
    let mut largest = 0;
    for (name, plain) in files {
        let bytes = match (gzip, damage_compressed) {
            (false, _) => apply(&plain, damages),
            (true, false) => gz(&apply(&plain, damages)),
            (true, true) => apply(&gz(&plain), damages),
        };
        largest = largest.max(bytes.len()).max(plain.len());
        let (keep, drop) =
            if gzip { (format!("{name}.gz"), name.to_string()) } else { (name.to_string(), format!("{name}.gz")) };
        let _ = std::fs::remove_file(dir.join(drop));
        std::fs::write(dir.join(keep), bytes).unwrap();
    }
    largest
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Damaged bytes anywhere: an error, or (when the damage left the content as it was, e.g.
    /// whitespace in the header) exactly the checkpoint that was saved.
    #[test]
    fn damaged_checkpoints_are_refused(damages in prop::collection::vec(damage(), 1..4)) {
        let (ck, good) = checkpoint();
        let bad = apply(good, &damages);
        let (r, largest) = load_damaged(&bad, "bytes");
        if let Ok(back) = &r {
            prop_assert_eq!(back, ck);
        }
        prop_assert!(largest <= allowance(bad.len()), "{} bytes allocated at once for a {}-byte file", largest, bad.len());
    }

    /// A rewritten header, still a well-formed safetensors header: refused (the checksum, the
    /// offsets, the shapes or the format), never a panic or a huge allocation.
    #[test]
    fn checkpoints_with_an_edited_header_are_refused(edit in header_edit()) {
        let (ck, good) = checkpoint();
        let bad = edit_header(good, &edit);
        let (r, largest) = load_damaged(&bad, "header");
        if let Ok(back) = &r {
            prop_assert_eq!(back, ck);
        }
        prop_assert!(largest <= allowance(bad.len()), "{} bytes allocated at once for a {}-byte file", largest, bad.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Damaged idx files, plain, damaged then compressed, or compressed then damaged: the parser
    /// returns an error or a dataset, and allocates in proportion to the files.
    #[test]
    fn damaged_idx_files_never_panic(
        damages in prop::collection::vec(damage(), 1..3),
        gzip in any::<bool>(),
        damage_compressed in any::<bool>(),
    ) {
        let dir = tmpdir("idx");
        let largest_file = write_damaged_set(&dir, &damages, gzip, damage_compressed);
        let (r, largest) = measured(|| mnist::load(&dir));
        if let Ok(m) = &r {
            for s in [&m.train, &m.test] {
                prop_assert_eq!(s.images.len(), s.len() * s.rows * s.cols);
                prop_assert!(s.labels.iter().all(|&l| l < 10));
                prop_assert!(Dataset::mnist(s, false).is_ok());
            }
        }
        // Damaged gzip data decompresses to no more than what its idx header declares plus one
        // byte, and the header cannot be larger than the file.
        prop_assert!(largest <= 4 * largest_file + (64 << 10), "{} bytes allocated at once", largest);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A gzip stream inflating to far more than an idx header declares is not inflated into memory.
#[test]
fn a_gzip_bomb_is_not_inflated_into_memory() {
    let dir = tmpdir("bomb");
    let path = dir.join("bomb.gz");
    let mut plain = idx(&[4], &[1, 2, 3, 4]);
    plain.resize(64 << 20, 0);
    let packed = gz(&plain);
    assert!(packed.len() < 1 << 20);
    std::fs::write(&path, &packed).unwrap();
    let (r, largest) = measured(|| mnist::read_idx(&path));
    let e = r.unwrap_err().to_string();
    assert!(e.contains(&format!("{} bytes of trailing data", (64 << 20) - 12)), "{e}");
    assert!(largest < 4 << 20, "{largest} bytes allocated at once");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Headers declaring more data than any file has: refused before allocating from the count.
#[test]
fn huge_idx_counts_allocate_nothing_from_the_count() {
    for dims in [vec![u32::MAX], vec![u32::MAX, u32::MAX, u32::MAX], vec![1 << 30, 28, 28]] {
        let bytes = idx(&dims, &[0; 100]);
        let (r, largest) = measured(|| mnist::parse_idx(Path::new("x"), &bytes));
        assert!(r.unwrap_err().to_string().contains("truncated"));
        assert!(largest < 1 << 16, "{largest}");
        let packed = gz(&bytes);
        let dir = tmpdir("count");
        let path = dir.join("x.gz");
        std::fs::write(&path, &packed).unwrap();
        let (r, largest) = measured(|| mnist::read_idx(&path));
        assert!(r.unwrap_err().to_string().contains("truncated"));
        assert!(largest < 1 << 20, "{largest}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A checkpoint path that is a link to a device or a folder is refused by name: `/dev/zero`
/// would be read until memory runs out.
#[test]
fn a_checkpoint_that_is_no_regular_file_is_refused() {
    let dir = tmpdir("special");
    let link = dir.join("checkpoint.safetensors");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let e = Checkpoint::load(&link).expect_err("refused").to_string();
    assert!(e.contains("checkpoint.safetensors") && e.contains("not a regular file"), "{e}");
    std::fs::remove_file(&link).unwrap();
    std::fs::create_dir(&link).unwrap();
    let e = Checkpoint::load(&link).expect_err("refused").to_string();
    assert!(e.contains("not a regular file"), "{e}");
}
