//! The MNIST idx format (LeCun et al.), gzip-compressed or not: a big-endian magic number whose
//! third byte is the element type (0x08 = unsigned byte) and fourth the number of dimensions, the
//! dimensions as big-endian `u32`, then the data.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An idx array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
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
    let n: usize = dims.iter().product();
    let body = &bytes[header..];
    if body.len() < n {
        return Err(data_err(
            path,
            format!("truncated: dimensions {dims:?} need {n} bytes of data, file has {}", body.len()),
        ));
    }
    if body.len() > n {
        return Err(data_err(path, format!("{} bytes of trailing data after dimensions {dims:?}", body.len() - n)));
    }
    Ok(Idx { dims, data: body.to_vec() })
}

/// Reads an idx file, gunzipping it if it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<Idx> {
    let raw = std::fs::read(path).map_err(|e| data_err(path, e.to_string()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| data_err(path, format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(path, &bytes)
}

/// One split of MNIST: images as `count × rows × cols` bytes and their labels.
#[derive(Debug, Clone)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
    pub cols: usize,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The training and test splits.
#[derive(Debug, Clone)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(data_err(&dir.join(format!("{stem}.gz")), "missing (neither the .gz nor the uncompressed file is there)"))
}

fn load_split(dir: &Path, images: &str, labels: &str) -> Result<Split> {
    let (ip, lp) = (find(dir, images)?, find(dir, labels)?);
    let img = read_idx(&ip)?;
    let lab = read_idx(&lp)?;
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
    Ok(Split { images: img.data, labels: lab.data, rows: img.dims[1], cols: img.dims[2] })
}

/// Loads the four standard files (`train-images-idx3-ubyte[.gz]`, …) from a folder.
pub fn load(dir: &Path) -> Result<Mnist> {
    Ok(Mnist {
        train: load_split(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: load_split(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
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
