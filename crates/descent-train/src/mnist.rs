//! The MNIST idx format (LeCun et al.), gzip-compressed or not: a big-endian magic number whose
//! third byte is the element type (0x08 = unsigned byte) and fourth the number of dimensions, the
//! dimensions as big-endian `u32`, then the data.

use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An idx array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    /// The size of each axis.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

fn data_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Data { path: path.display().to_string(), message: message.into() }
}

/// Parses idx bytes (already decompressed); `path` names the file in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<Idx> {
    if bytes.len() < 4 {
        return Err(data_err(path, format!("truncated: {} bytes, no idx header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(data_err(
            path,
            format!(
                "wrong magic number {:02x}{:02x}{:02x}{:02x}: not an idx file of unsigned bytes",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(data_err(path, "idx header declares 0 dimensions"));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(data_err(path, format!("truncated: header needs {header} bytes, file has {}", bytes.len())));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().expect("4 bytes")) as usize)
        .collect();
    // Checked: the dimensions come from the file; nothing is allocated from them.
    let body = &bytes[header..];
    let n = match dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= body.len() => n,
        n => {
            let need = n.map_or("more".to_string(), |n| n.to_string());
            return Err(data_err(
                path,
                format!("truncated: dimensions {dims:?} need {need} bytes of data, file has {}", body.len()),
            ));
        }
    };
    if body.len() > n {
        return Err(trailing(path, body.len() - n, &dims));
    }
    Ok(Idx { dims, data: copy_or_refuse(path, "its data", body)? })
}

/// `v` copied into a new vector, or an error naming the file and the memory it needed where the
/// allocation fails (an address-space limit, `ulimit -v`): the process must not abort.
pub(crate) fn copy_or_refuse<T: Copy>(path: &Path, what: &str, v: &[T]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(v.len()).map_err(|_| {
        let mb = (std::mem::size_of_val(v) as f64 / 1e6).ceil();
        data_err(path, format!("not enough memory to hold {what} ({mb} MB)"))
    })?;
    out.extend_from_slice(v);
    Ok(out)
}

fn trailing(path: &Path, extra: usize, dims: &[usize]) -> Error {
    data_err(path, format!("{extra} bytes of trailing data after dimensions {dims:?}"))
}

/// The length of the idx file whose header (magic and dimensions) `head` starts with, when the
/// header is whole, valid and its size fits in memory.
fn declared_len(head: &[u8]) -> Option<usize> {
    if head.len() < 4 || head[..3] != [0, 0, 8] || head[3] == 0 {
        return None;
    }
    let header = 4 + 4 * head[3] as usize;
    let dims = head.get(4..header)?;
    dims.chunks_exact(4)
        .try_fold(1usize, |a, d| a.checked_mul(u32::from_be_bytes(d.try_into().expect("4 bytes")) as usize))?
        .checked_add(header)
}

/// Reads a file, telling a missing file (with the forms accepted) from one that cannot be read.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => data_err(path, "missing (an idx file is accepted plain or gzip-compressed as .gz)"),
        _ => data_err(path, format!("cannot be read: {e}")),
    })
}

/// Gunzips an idx stream: the header first, then no more than the data it declares (so a
/// corrupt or hostile stream cannot make it allocate more than the file's true contents), then
/// the rest of the stream is read through without keeping it, for the gzip checksum and to count
/// any trailing data. Every member of the stream is read, as `zcat` reads them (`cat a.gz b.gz`,
/// pigz and bgzip write several); bytes after the last member that are not one are an error.
fn gunzip_idx(path: &Path, raw: &[u8]) -> Result<Idx> {
    let gz = |e: std::io::Error| data_err(path, format!("gzip: {e}"));
    let mut dec = flate2::read::MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    (&mut dec).take(4).read_to_end(&mut out).map_err(gz)?;
    if out.len() == 4 && out[..3] == [0, 0, 8] {
        (&mut dec).take(4 * out[3] as u64).read_to_end(&mut out).map_err(gz)?;
    }
    let Some(len) = declared_len(&out) else { return parse_idx(path, &out) };
    (&mut dec).take(len as u64 + 1).read_to_end(&mut out).map_err(gz)?;
    let rest = std::io::copy(&mut dec, &mut std::io::sink()).map_err(gz)?;
    if out.len() > len || rest > 0 {
        let idx = parse_idx(path, &out[..len])?;
        let extra = usize::try_from(rest).unwrap_or(usize::MAX).saturating_add(out.len() - len);
        return Err(trailing(path, extra, &idx.dims));
    }
    parse_idx(path, &out)
}

/// Reads an idx file, gunzipping it if it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let raw = read_file(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        gunzip_idx(path, &raw)
    } else {
        parse_idx(path, &raw)
    }
}

/// One split of MNIST: images as `count × rows × cols` bytes and their labels.
#[derive(Debug, Clone)]
pub struct Split {
    /// Pixels, `count × rows × cols`, row-major.
    pub images: Vec<u8>,
    /// The digit of each image.
    pub labels: Vec<u8>,
    /// Rows of an image.
    pub rows: usize,
    /// Columns of an image.
    pub cols: usize,
    /// The files the images and labels were read from.
    pub images_file: PathBuf,
    /// The file the labels were read from.
    pub labels_file: PathBuf,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Refuses images of another size than `rows × cols` (a model's input), naming the file.
    pub fn expect_size(&self, rows: usize, cols: usize) -> Result<()> {
        if (self.rows, self.cols) != (rows, cols) {
            return Err(data_err(
                &self.images_file,
                format!("images are {}×{}, the model takes {rows}×{cols}", self.rows, self.cols),
            ));
        }
        Ok(())
    }
}

/// The training and test splits.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// The 60 000 training images.
    pub train: Split,
    /// The 10 000 test images.
    pub test: Split,
}

impl Mnist {
    /// A digest of both splits' images and labels (CRC-32 over their sizes and bytes), recorded in
    /// a run's checkpoints: the same digest means the same data, wherever it was read from.
    pub fn digest(&self) -> String {
        let mut h = crc32fast::Hasher::new();
        for s in [&self.train, &self.test] {
            for n in [s.labels.len(), s.rows, s.cols] {
                h.update(&(n as u64).to_le_bytes());
            }
            h.update(&s.images);
            h.update(&s.labels);
        }
        format!("crc32:{:08x}", h.finalize())
    }
}

/// `stem.gz` or `stem` in `dir`, whichever exists; both is refused (they may hold different
/// data, and taking one would silently drop the other). Anything but absence (no permission to
/// look) is reported as it is, with the path.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let mut found = vec![];
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        match std::fs::metadata(&p) {
            Ok(_) => found.push(p),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(data_err(&p, format!("cannot be read: {e}"))),
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(data_err(
            &dir.join(format!("{stem}.gz")),
            format!("missing (accepted: {stem}.gz, gzip-compressed, or {stem}, plain; neither is there)"),
        )),
        _ => Err(data_err(&found[1], format!("and {stem}.gz are both there; keep one (they may hold different data)"))),
    }
}

/// The number of dimensions an idx file's header declares (its magic's last byte), read without
/// the rest of the file; `None` when the header is not an idx one.
fn header_rank(path: &Path) -> Option<u8> {
    let raw = std::fs::read(path).ok()?;
    let head = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut h = Vec::new();
        (&mut flate2::read::MultiGzDecoder::new(raw.as_slice())).take(4).read_to_end(&mut h).ok()?;
        h
    } else {
        raw.get(..4)?.to_vec()
    };
    (head.len() == 4 && head[..3] == [0, 0, 8]).then(|| head[3])
}

/// [`read_idx`] of a file that must have `rank` dimensions (`what` says which): a header of
/// another rank is named as such, rather than as the truncated or trailing data that reading it
/// with the wrong dimensions finds.
fn read_idx_of_rank(path: &Path, rank: u8, what: &str) -> Result<Idx> {
    match read_idx(path) {
        Err(e) => match header_rank(path) {
            Some(r) if r != rank => Err(data_err(
                path,
                format!("its header declares {r} dimension(s) (magic 0000080{r:x}); {what} has {rank} (magic 0000080{rank:x})"),
            )),
            _ => Err(e),
        },
        ok => ok,
    }
}

fn load_split(dir: &Path, images: &str, labels: &str) -> Result<Split> {
    let (ip, lp) = (find(dir, images)?, find(dir, labels)?);
    let img = read_idx_of_rank(&ip, 3, "an idx file of images (count, rows, cols)")?;
    let lab = read_idx_of_rank(&lp, 1, "an idx file of labels (count)")?;
    if img.dims.len() != 3 {
        return Err(data_err(&ip, format!("expected 3 dimensions (count, rows, cols), got {:?}", img.dims)));
    }
    if lab.dims.len() != 1 {
        return Err(data_err(&lp, format!("expected 1 dimension (count), got {:?}", lab.dims)));
    }
    if img.dims[0] != lab.dims[0] {
        return Err(data_err(&lp, format!("{} labels for {} images in {}", lab.dims[0], img.dims[0], ip.display())));
    }
    if let Some((i, &l)) = lab.data.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(data_err(&lp, format!("label {l} at index {i} is out of range 0..=9")));
    }
    Ok(Split {
        images: img.data,
        labels: lab.data,
        rows: img.dims[1],
        cols: img.dims[2],
        images_file: ip,
        labels_file: lp,
    })
}

/// Loads the four standard files (`train-images-idx3-ubyte[.gz]`, …) from a folder.
pub fn load(dir: &Path) -> Result<Mnist> {
    Ok(Mnist {
        train: load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
}

/// [`load`], refusing images of another size than `rows × cols` (the model's input) with an error
/// naming the images file and both sizes.
pub fn load_expecting(dir: &Path, rows: usize, cols: usize) -> Result<Mnist> {
    let m = load(dir)?;
    m.train.expect_size(rows, cols)?;
    m.test.expect_size(rows, cols)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("descent-mnist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_set(dir: &Path, n: u32, labels: &[u8], gzip: bool) {
        let files = [
            ("train-images-idx3-ubyte", idx(&[n, 2, 3], &vec![7; (n * 6) as usize])),
            ("train-labels-idx1-ubyte", idx(&[n], labels)),
            ("t10k-images-idx3-ubyte", idx(&[1, 2, 3], &[1, 2, 3, 4, 5, 6])),
            ("t10k-labels-idx1-ubyte", idx(&[1], &[4])),
        ];
        for (name, bytes) in files {
            if gzip {
                std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn reads_gzip_and_plain_files() {
        for gzip in [true, false] {
            let d = tmpdir(&format!("ok{gzip}"));
            write_set(&d, 2, &[3, 9], gzip);
            let m = load(&d).unwrap();
            assert_eq!((m.train.len(), m.train.rows, m.train.cols), (2, 2, 3));
            assert_eq!(m.train.labels, vec![3, 9]);
            assert_eq!(m.test.images, vec![1, 2, 3, 4, 5, 6]);
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    /// A stream of several gzip members (`cat a.gz b.gz`, pigz, bgzip) reads as `zcat` reads it;
    /// bytes after the last member that are no gzip member are refused.
    #[test]
    fn reads_every_gzip_member_and_refuses_trailing_bytes() {
        let p = Path::new("x.idx.gz");
        let whole = idx(&[4], &[1, 2, 3, 4]);
        let two = [gz(&whole[..7]), gz(&whole[7..])].concat();
        assert_eq!(gunzip_idx(p, &two).unwrap().data, vec![1, 2, 3, 4]);
        let junk = [gz(&whole), b"trailing junk".to_vec()].concat();
        let e = gunzip_idx(p, &junk).unwrap_err().to_string();
        assert!(e.starts_with("x.idx.gz: gzip"), "{e}");
    }

    #[test]
    fn malformed_files_get_one_line_errors_naming_the_file() {
        let p = Path::new("x.idx");
        let e = parse_idx(p, &[0, 0, 8]).unwrap_err().to_string();
        assert!(e.starts_with("x.idx: truncated"), "{e}");
        let e = parse_idx(p, &[0, 0, 9, 1, 0, 0, 0, 1, 5]).unwrap_err().to_string();
        assert!(e.contains("wrong magic number"), "{e}");
        let e = parse_idx(p, &idx(&[4], &[1, 2])).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("need 4 bytes"), "{e}");

        let d = tmpdir("bad");
        write_set(&d, 2, &[3, 12], true);
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("train-labels-idx1-ubyte.gz") && e.contains("label 12 at index 1"), "{e}");
        write_set(&d, 2, &[3], true);
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::remove_file(d.join("t10k-images-idx3-ubyte.gz")).unwrap();
        write_set(&d, 2, &[3, 4], true);
        std::fs::remove_file(d.join("t10k-images-idx3-ubyte.gz")).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("t10k-images-idx3-ubyte.gz: missing"), "{e}");
        // A corrupt gzip stream.
        std::fs::write(d.join("train-images-idx3-ubyte.gz"), [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        assert!(!e.contains('\n'));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unreadable_files_report_the_os_error_and_missing_ones_the_accepted_names() {
        let d = tmpdir("unreadable");
        write_set(&d, 2, &[3, 4], false);
        // A folder where a file should be: found, but reading it fails with the OS's reason.
        std::fs::remove_file(d.join("train-labels-idx1-ubyte")).unwrap();
        std::fs::create_dir(d.join("train-labels-idx1-ubyte")).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("train-labels-idx1-ubyte: cannot be read:") && !e.contains("missing"), "{e}");
        std::fs::remove_dir(d.join("train-labels-idx1-ubyte")).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("train-labels-idx1-ubyte.gz: missing"), "{e}");
        assert!(e.contains("gzip-compressed") && e.contains("plain"), "{e}");
        // A file without read permission (not refused to root, who reads anything).
        write_set(&d, 2, &[3, 4], false);
        let p = d.join("t10k-labels-idx1-ubyte");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        }
        if std::fs::read(&p).is_err() {
            let e = load(&d).unwrap_err().to_string();
            assert!(e.contains("t10k-labels-idx1-ubyte: cannot be read:") && e.contains("ermission"), "{e}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn inconsistent_files_are_errors_not_panics() {
        let p = Path::new("x.idx");
        // Dimensions whose product overflows, or far beyond the file: refused before any
        // allocation from them.
        let huge = idx(&[u32::MAX, u32::MAX, u32::MAX], &[1, 2, 3]);
        let e = parse_idx(p, &huge).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("need more bytes"), "{e}");
        let e = parse_idx(p, &idx(&[u32::MAX, 2], &[1, 2, 3])).unwrap_err().to_string();
        assert!(e.contains("need 8589934590 bytes"), "{e}");
        let d = tmpdir("huge");
        std::fs::write(d.join("h.gz"), gz(&huge)).unwrap();
        let e = read_idx(&d.join("h.gz")).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // Trailing data in a gzip stream is counted without being kept.
        std::fs::write(d.join("t.gz"), gz(&idx(&[2], &[1; 1000]))).unwrap();
        let e = read_idx(&d.join("t.gz")).unwrap_err().to_string();
        assert!(e.contains("998 bytes of trailing data after dimensions [2]"), "{e}");
        // Fewer labels than images.
        write_set(&d, 3, &[1, 2], true);
        let lab = d.join("train-labels-idx1-ubyte.gz");
        std::fs::write(&lab, gz(&idx(&[2], &[1, 2]))).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("2 labels for 3 images"), "{e}");
        // Images written with a labels' header (rank 1): the header is named, not the data it
        // would make trailing.
        write_set(&d, 3, &[1, 2, 3], true);
        let img = d.join("train-images-idx3-ubyte.gz");
        let mut bytes = idx(&[3, 2, 2], &[0; 12]);
        bytes[3] = 1;
        std::fs::write(&img, gz(&bytes)).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("declares 1 dimension(s)") && e.contains("images"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_set_of_another_image_size_is_refused_naming_the_file() {
        let d = tmpdir("size");
        write_set(&d, 2, &[3, 9], true);
        let m = load(&d).unwrap();
        assert_eq!(m.train.images_file, d.join("train-images-idx3-ubyte.gz"));
        assert_eq!(m.test.labels_file, d.join("t10k-labels-idx1-ubyte.gz"));
        assert!(load_expecting(&d, 2, 3).is_ok());
        match load_expecting(&d, 28, 28).unwrap_err() {
            Error::Data { path, message } => {
                assert_eq!(path, d.join("train-images-idx3-ubyte.gz").display().to_string());
                assert_eq!(message, "images are 2×3, the model takes 28×28");
            }
            e => panic!("{e}"),
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_bundled_mnist_loads() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let m = load(&dir).unwrap();
        assert_eq!((m.train.len(), m.test.len(), m.train.rows, m.train.cols), (60_000, 10_000, 28, 28));
        let mut counts = [0usize; 10];
        m.test.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts.iter().sum::<usize>(), 10_000);
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
