//! TensorBoard scalars: event files (TFRecord framing of `tensorflow.Event` protos) that
//! TensorBoard reads from a folder (`tensorboard --logdir DIR`), written through the `tfrecord`
//! crate. `descent train` writes a run's under its `tensorboard/`; a loop of your own writes its
//! scalars the same way:
//!
//! ```no_run
//! # fn main() -> descent_train::Result<()> {
//! let mut tb = descent_train::tensorboard::Scalars::create(std::path::Path::new("runs/mine"))?;
//! tb.scalar("train/loss", 1, 2.31)?;
//! tb.flush()?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use tfrecord::protobuf::event::What;
use tfrecord::{Event, EventWriter, EventWriterConfig};

use crate::error::{Error, Result};

/// An I/O error of the event file `path`, as a data error naming it.
fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Data { path: path.display().to_string(), message: format!("{what}: {e}") }
}

/// The start of an event file's name, as TensorBoard looks for it.
const EVENTS_PREFIX: &str = "events.out.tfevents.";

/// An open event file, appending scalars (a tag, a step, a value).
pub struct Scalars {
    path: PathBuf,
    writer: EventWriter<BufWriter<File>>,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Scalars {
    /// A new event file in `dir` (created if missing), named as TensorBoard expects
    /// (`events.out.tfevents.TIME.HOST`); a resumed run adds a second file beside the first.
    pub fn create(dir: &Path) -> Result<Scalars> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, "creating the folder", e))?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let path: PathBuf = (0..)
            .map(|k| {
                dir.join(format!(
                    "{EVENTS_PREFIX}{}.descent{}",
                    stamp.as_secs(),
                    if k == 0 { String::new() } else { format!(".{k}") }
                ))
            })
            .find(|p| !p.exists())
            .expect("some name is free");
        let mut writer = EventWriter::create(&path, EventWriterConfig { auto_flush: false })
            .map_err(|e| io(&path, "creating", e))?;
        writer
            .write_event(Event {
                wall_time: now(),
                step: 0,
                what: Some(What::FileVersion("brain.Event:2".into())),
                ..Default::default()
            })
            .map_err(|e| io(&path, "writing", e))?;
        Ok(Scalars { path, writer })
    }

    /// Cuts the event files already in `dir` back to the events of steps up to `steps` (the
    /// checkpoint a run resumes from), as the resume cuts the run's metric files: the resumed
    /// run writes the later steps again, in a file of its own, so that no (tag, step) appears
    /// twice. With `mid_epoch` (a checkpoint a step limit took inside an epoch) the `epoch/`
    /// scalars of that step go too: the resumed run writes the epoch's, whole, at its end. (They
    /// go here, at the resume's start, while metrics.jsonl keeps that epoch's row until the row
    /// that replaces it is written: the event files are a view of the logs, and the open writer's
    /// own file could not be rewritten then.) A torn or damaged tail (a kill mid-write) goes too.
    /// Each file rewritten atomically; files that keep every event are left alone.
    pub fn cut_back(dir: &Path, steps: u64, mid_epoch: bool) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry.map_err(|e| io(dir, "reading the folder", e))?.path();
            if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(EVENTS_PREFIX)) {
                continue;
            }
            let reader = tfrecord::EventIter::open(&path, tfrecord::RecordReaderConfig { check_integrity: true })
                .map_err(|e| io(&path, "reading", e))?;
            let (mut kept, mut changed) = (vec![], false);
            for event in reader {
                match event {
                    Ok(e) if mid_epoch && e.step == steps as i64 && is_epoch_scalar(&e) => changed = true,
                    Ok(e) if e.step >= 0 && e.step as u64 <= steps => kept.push(e),
                    Ok(_) => changed = true,
                    Err(_) => {
                        changed = true;
                        break;
                    }
                }
            }
            if changed {
                // The kept records framed in memory, then the file replaced by them whole.
                let mut bytes = Vec::new();
                let frame = |e| io(&path, "framing the kept events", e);
                let mut w =
                    EventWriter::from_writer(&mut bytes, EventWriterConfig { auto_flush: false }).map_err(frame)?;
                for e in kept {
                    w.write_event(e).map_err(frame)?;
                }
                w.flush().map_err(frame)?;
                crate::checkpoint::write_atomic(&path, &bytes)?;
            }
        }
        Ok(())
    }
}

/// Whether the event holds an epoch's scalars (`epoch/…`, written at an epoch's end or a cut).
fn is_epoch_scalar(e: &tfrecord::Event) -> bool {
    use tfrecord::protobuf::event::What;
    matches!(&e.what, Some(What::Summary(s)) if s.value.iter().any(|v| v.tag.starts_with("epoch/")))
}

impl Scalars {
    /// Appends `value` under `tag` (`train/loss`, `epoch/test_accuracy`) at `step`.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        self.writer.write_scalar(tag, (step as i64, now()), value as f32).map_err(|e| io(&self.path, "writing", e))
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|e| io(&self.path, "writing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resume's cut keeps the events of steps up to the checkpoint (the file's version record
    /// included) and drops the later ones and a torn last record.
    #[test]
    fn cut_back_keeps_the_events_up_to_the_checkpoint() {
        let dir = std::env::temp_dir().join(format!("descent-tb-cut-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut tb = Scalars::create(&dir).unwrap();
            for step in 1..=10 {
                tb.scalar("train/loss", step, 1.0 / step as f64).unwrap();
                tb.scalar("train/lr", step, 0.1).unwrap();
            }
            tb.flush().unwrap();
        }
        let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        // A record cut short by a kill.
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(&[40, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        std::fs::write(&file, &bytes).unwrap();
        Scalars::cut_back(&dir, 5, false).unwrap();
        let events: Vec<Event> =
            tfrecord::EventIter::open(&file, Default::default()).unwrap().map(|e| e.unwrap()).collect();
        assert!(matches!(events[0].what, Some(What::FileVersion(_))));
        let steps: Vec<i64> = events[1..].iter().map(|e| e.step).collect();
        assert_eq!(steps, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        // Nothing past the checkpoint: the file is left as it is.
        let before = std::fs::read(&file).unwrap();
        Scalars::cut_back(&dir, 5, false).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
