//! TensorBoard scalars: event files (TFRecord framing of `tensorflow.Event` protos) that
//! TensorBoard reads from a run folder's `tensorboard/`, written through the `tfrecord` crate.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tfrecord::protobuf::event::What;
use tfrecord::{Event, EventWriter, EventWriterConfig};

/// An open event file.
pub struct Scalars {
    writer: EventWriter<BufWriter<File>>,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Scalars {
    /// A new event file in `dir` (created if missing), named as TensorBoard expects
    /// (`events.out.tfevents.TIME.HOST`); a resumed run adds a second file beside the first.
    pub fn create(dir: &Path) -> Result<Scalars> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path: PathBuf = (0..)
            .map(|k| {
                dir.join(format!(
                    "events.out.tfevents.{}.descent{}",
                    stamp.as_secs(),
                    if k == 0 { String::new() } else { format!(".{k}") }
                ))
            })
            .find(|p| !p.exists())
            .expect("some name is free");
        let mut writer = EventWriter::create(&path, EventWriterConfig { auto_flush: false })
            .with_context(|| format!("creating {}", path.display()))?;
        writer
            .write_event(Event {
                wall_time: now(),
                step: 0,
                what: Some(What::FileVersion("brain.Event:2".into())),
                ..Default::default()
            })
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Scalars { writer })
    }

    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        Ok(self.writer.write_scalar(tag, (step as i64, now()), value as f32)?)
    }

    pub fn flush(&mut self) -> Result<()> {
        Ok(self.writer.flush()?)
    }
}
