//! The folders descent writes (run, compare, sweep, landscape, lr-find and plot folders): which
//! files are descent's, how a folder is claimed (an exclusive lock, `--force`), and how its files
//! are written so that a crash never leaves a torn or half-written one.
//!
//! The rules, as the README's "Reliability" section states them:
//! - Every folder descent makes holds a marker, `descent.json`, naming its kind and a random id.
//! - `--force` replaces only a folder of the same kind that descent wrote (by its marker: files
//!   named like descent's, `table.md` or `sweep.json`, do not make a folder descent's), and then
//!   only descent's own files in it; an empty folder is taken as is. Anything else is refused
//!   before anything is deleted.
//! - A folder is locked (an OS file lock on `.descent.lock`, released by the kernel when the
//!   process ends, however it ends) for as long as a command writes into it: a second command on
//!   the same folder is refused.
//! - Whole files are written to a temporary file beside them, synced, then renamed over the old
//!   one; records are appended one complete line per write.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// `p` as an absolute path, as the OS will take it once its missing folders are made: its longest
/// existing prefix resolved (links followed), then the names after it, `.` and `..` folded by name
/// (nothing missing can be a link). `None` where the current folder cannot be read.
pub fn resolved(p: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let abs = std::path::absolute(p).ok()?;
    let mut base = abs.as_path();
    let mut rest = vec![];
    loop {
        if let Ok(mut out) = base.canonicalize() {
            for c in rest.into_iter().rev() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::Normal(name) => out.push(name),
                    _ => {}
                }
            }
            return Some(out);
        }
        rest.push(base.components().next_back()?);
        base = base.parent()?;
    }
}

/// The marker file in every folder descent makes.
pub const MARKER: &str = "descent.json";
/// The lock file of a folder in use.
pub const LOCK: &str = ".descent.lock";

/// How TensorBoard's event files (those descent writes in a run's `tensorboard/`) begin.
const TFEVENTS_PREFIX: &str = "events.out.tfevents.";

/// The files of a run folder.
pub mod run {
    pub const CONFIG_JSON: &str = "config.json";
    pub const CONFIG_TOML: &str = "config.toml";
    pub const METRICS_JSONL: &str = "metrics.jsonl";
    pub const METRICS_CSV: &str = "metrics.csv";
    pub const STEPS_JSONL: &str = "steps.jsonl";
    pub const STEPS_CSV: &str = "steps.csv";
    pub const EVALS_JSONL: &str = "evals.jsonl";
    pub const GRAD_NORMS_JSONL: &str = "grad_norms.jsonl";
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    pub const TENSORBOARD: &str = "tensorboard";
    /// What `descent prune` and `descent quantize` add (see `descent_train::compress`).
    pub const COMPRESS_JSON: &str = descent_train::compress::INFO;
    pub const MODEL_F32: &str = descent_train::compress::MODEL_F32;
    pub const MODEL_INT8: &str = descent_train::compress::MODEL_INT8;
    pub const COMPACT: &str = descent_train::compress::COMPACT;
}

/// What kind of folder: each kind has its own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Run,
    Compare,
    Sweep,
    Landscape,
    LrFind,
    Plot,
    /// `descent bench optimizers`.
    Benchmark,
    /// `descent bench sweep`: its sweeps and default runs, each a folder of its own kind that
    /// replaces itself (`--force` leaves them to their own claims).
    SweepBenchmark,
}

impl Kind {
    /// The sub-folder of run folders a compare or benchmark (`runs`) or sweep (`trials`) folder
    /// holds, which its `--force` clears run by run.
    fn runs_folder(self) -> Option<&'static str> {
        match self {
            Kind::Compare | Kind::Benchmark => Some("runs"),
            Kind::Sweep => Some("trials"),
            _ => None,
        }
    }

    /// Whether the command that writes folders of this kind has `--force` (`plot` replaces its
    /// own folder without being asked).
    fn has_force_flag(self) -> bool {
        self != Kind::Plot
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Compare => "compare",
            Kind::Sweep => "sweep",
            Kind::Landscape => "landscape",
            Kind::LrFind => "lr-find",
            Kind::Plot => "plot",
            Kind::Benchmark => "benchmark",
            Kind::SweepBenchmark => "bench-sweep",
        }
    }

    /// The files (and folders) descent writes at the top of a folder of this kind.
    fn files(self) -> &'static [&'static str] {
        match self {
            Kind::Run => &[
                run::CONFIG_JSON,
                run::CONFIG_TOML,
                run::METRICS_JSONL,
                run::METRICS_CSV,
                run::STEPS_JSONL,
                run::STEPS_CSV,
                run::EVALS_JSONL,
                run::GRAD_NORMS_JSONL,
                run::CHECKPOINT,
                run::TENSORBOARD,
                run::COMPRESS_JSON,
                run::MODEL_F32,
                run::MODEL_INT8,
                run::COMPACT,
            ],
            Kind::Compare => &["runs", "table.md", "table.csv", "compare.json", "report.html"],
            Kind::Sweep => &["sweep.json", "trials.jsonl", "trials", "table.md", "table.csv", "best.toml"],
            Kind::Landscape => &["table.md", "table.csv"],
            Kind::LrFind => &["lr_find.csv"],
            Kind::Plot => &[],
            Kind::Benchmark => &["bench.json", "runs.jsonl", "runs", "table.md", "table.csv", "report.html"],
            Kind::SweepBenchmark => &[],
        }
    }

    /// Whether `name` is a chart this kind draws (PNG and SVG).
    fn is_chart(self, name: &str) -> bool {
        let Some(stem) = name.strip_suffix(".png").or_else(|| name.strip_suffix(".svg")) else { return false };
        match self {
            Kind::Run => false,
            Kind::Compare | Kind::Plot => crate::runs::CHART_STEMS.contains(&stem),
            Kind::Sweep => ["objective", "curves"].contains(&stem) || stem.starts_with("param_"),
            Kind::Landscape => descent_core::landscape::TestFunction::ALL.iter().any(|f| f.name() == stem),
            Kind::LrFind => stem == "lr_find",
            Kind::Benchmark => ["curves", "lr_search"].contains(&stem),
            Kind::SweepBenchmark => false,
        }
    }

    /// Whether `name` at the top of a folder of this kind is descent's.
    fn owns(self, name: &str) -> bool {
        name == MARKER || name == LOCK || self.files().contains(&name) || self.is_chart(name) || is_leftover(self, name)
    }

    /// Whether a folder without a marker holds files named as this kind's (descent's before its
    /// marker was deleted, or a user's): for the message refusing to resume it, never to take it.
    fn looks_like(self, dir: &Path) -> bool {
        let has = |n: &str| dir.join(n).is_file();
        match self {
            Kind::Run => has(run::CONFIG_JSON) && (has(run::METRICS_JSONL) || has(run::STEPS_JSONL)),
            Kind::Compare => has("compare.json"),
            Kind::Sweep => has("sweep.json"),
            Kind::Landscape => has("table.md") && has("table.csv") && !has("compare.json") && !has("sweep.json"),
            Kind::LrFind => has("lr_find.csv"),
            Kind::Plot => false,
            Kind::Benchmark => has("bench.json"),
            Kind::SweepBenchmark => false,
        }
    }
}

/// The marker file's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub kind: Kind,
    /// A random id given when the folder is made: checkpoints carry it, so one run's checkpoint
    /// is never resumed in another's folder.
    pub id: String,
    /// The descent version that made the folder.
    pub version: String,
    /// Why a run ended before its epochs or steps did (early stopping, a target reached), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The id of the compare or sweep folder whose run this is: only that folder's `--force`
    /// clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Marker {
    fn new(kind: Kind, parent: Option<&str>) -> Marker {
        Marker {
            kind,
            id: new_id(),
            version: env!("CARGO_PKG_VERSION").into(),
            ended: None,
            parent: parent.map(String::from),
        }
    }

    /// The marker of `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Marker>> {
        let path = dir.join(MARKER);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: not a descent folder marker", path.display()))
    }

    /// Writes the marker into `dir`, atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(MARKER), serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// 16 hex digits from the clock, the process and a counter: unique enough to tell runs apart.
fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

/// A folder this process writes into, locked until dropped.
#[derive(Debug)]
pub struct Claimed {
    pub dir: PathBuf,
    pub marker: Marker,
    _lock: File,
}

/// What an existing folder is, for a command about to write a folder of `kind` there.
enum Found {
    Empty,
    Ours,
    OtherKind(Kind),
    /// A run of its own, or of another compare or sweep folder, where one of `parent` was expected.
    OtherParent,
    Foreign(Vec<String>),
}

/// The folder above `dir` whose marker has the id `parent` (a compare, sweep or benchmark folder
/// holds its runs two levels down at most), named with its kind; else "a compare, sweep or
/// benchmark folder".
pub fn owner_of(dir: &Path, parent: &str) -> String {
    owner(dir, parent)
        .map(|(d, kind)| format!("the {} folder {}", kind.name(), d.display()))
        .unwrap_or_else(|| "a compare, sweep or benchmark folder".into())
}

/// How the command that owns the run `dir` (whose marker names `parent`) trains it again: a
/// compare trains its runs itself (again with --force), a sweep or benchmark resumes its
/// unfinished trials or runs.
pub fn rerun_by_owner(dir: &Path, parent: &str) -> String {
    match owner(dir, parent) {
        Some((d, Kind::Compare)) => {
            format!("it is a run of the compare folder {}: run the compare again with --force", d.display())
        }
        Some((d, Kind::Sweep)) => format!(
            "it is a trial of the sweep folder {}, which trains its trials itself: `descent sweep --resume {}` runs \
             one it had not finished",
            d.display(),
            d.display()
        ),
        Some((d, Kind::Benchmark)) => format!(
            "it is a run of the benchmark folder {}, which trains its runs itself: `descent bench optimizers --resume \
             {}` runs one it had not finished",
            d.display(),
            d.display()
        ),
        _ => format!("it is a run of {}: run that command again", owner_of(dir, parent)),
    }
}

/// The folder above `dir` whose marker has the id `parent`, and its kind.
pub fn owner(dir: &Path, parent: &str) -> Option<(PathBuf, Kind)> {
    dir.ancestors()
        .skip(1)
        .take(3)
        .find_map(|d| Marker::read(d).ok().flatten().filter(|m| m.id == parent).map(|m| (d.to_path_buf(), m.kind)))
}

/// Whether `dir` is the output of `descent prune` or `descent quantize` (its `compress.json`
/// without a run's `config.json`), which is no training run: the commands that read or resume a
/// run refuse it by name.
pub fn is_compressed_output(dir: &Path) -> bool {
    dir.join(run::COMPRESS_JSON).exists() && !dir.join(run::CONFIG_JSON).exists()
}

/// Whether `name` is a temporary file descent writes before renaming it over one of the files of a
/// `kind` folder, which a command killed at the wrong moment leaves behind: `.NAME.tmpPID` (any
/// file, [`write_atomic`]) and `.STEM.tmpPID.EXT` (a chart), where `NAME` (`STEM.EXT`) is the
/// kind's own, and an older version's `NAME.safetensors.tmp`. A user's `.notes.tmp` or
/// `weights.safetensors.tmp` is not descent's.
pub fn is_leftover(kind: Kind, name: &str) -> bool {
    let ours = |file: &str| file == MARKER || kind.files().contains(&file) || kind.is_chart(file);
    if let Some((base, tail)) = name.strip_prefix('.').and_then(|rest| rest.rsplit_once(".tmp")) {
        let (pid, ext) = match tail.split_once('.') {
            Some((pid, ext)) => (pid, Some(ext)),
            None => (tail, None),
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        return match ext {
            Some(ext) => ours(&format!("{base}.{ext}")),
            None => ours(base),
        };
    }
    name.strip_suffix(".tmp").is_some_and(|file| file.ends_with(".safetensors") && kind.files().contains(&file))
}

/// The temporary file a command killed while writing `file` of the `kind` folder `dir` left
/// beside it, if any ([`is_leftover`]'s names for that file).
pub fn leftover_of(dir: &Path, kind: Kind, file: &str) -> Option<PathBuf> {
    let names = entries(dir).ok()?;
    names
        .into_iter()
        .find(|n| {
            is_leftover(kind, n)
                && (n == &format!("{file}.tmp")
                    || n.strip_prefix(&format!(".{file}.tmp"))
                        .is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit())))
        })
        .map(|n| dir.join(n))
}

/// Removes the temporary files a killed command left in the `kind` folder `dir` (its lock held,
/// so none is being written).
pub fn remove_leftovers(dir: &Path, kind: Kind) -> Result<()> {
    for name in entries(dir)?.into_iter().filter(|n| is_leftover(kind, n)) {
        let p = dir.join(&name);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            remove_file(&p)?;
        }
    }
    Ok(())
}

/// What `dir` is to a command writing a `kind` folder there for the compare or sweep folder
/// `parent` (`None`: for itself). A folder holding nothing but descent's lock and temporary
/// files (a command killed before its marker was written) is empty.
fn inspect(dir: &Path, kind: Kind, parent: Option<&str>) -> Result<Found> {
    let names = entries(dir)?;
    if names.iter().all(|n| n == LOCK || is_leftover(kind, n)) {
        return Ok(Found::Empty);
    }
    match Marker::read(dir)? {
        Some(m) if m.kind == kind && m.parent.as_deref() == parent => Ok(Found::Ours),
        Some(m) if m.kind == kind => Ok(Found::OtherParent),
        Some(m) => Ok(Found::OtherKind(m.kind)),
        None => Ok(Found::Foreign(names)),
    }
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = vec![];
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Whether another process holds the lock of `dir` (a command is writing it), with its process
/// id where the lock file records one; not when this process holds it. Tested with a shared
/// lock, released at once.
pub fn in_use_by(dir: &Path) -> Option<Option<u32>> {
    let path = dir.join(LOCK);
    let f = File::open(&path).ok()?;
    match f.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).ok().and_then(|h| h.trim().parse::<u32>().ok());
            // This process's own claim (a resume reading the folder it holds) is not another's.
            (pid != Some(std::process::id())).then_some(pid)
        }
        _ => None,
    }
}

/// The refusal of `dir`, whose lock another command holds (`pid` where its lock file records it).
fn in_use(dir: &Path, pid: Option<u32>) -> anyhow::Error {
    let who = pid.map(|p| format!(" (process {p})")).unwrap_or_default();
    anyhow::anyhow!("{} is in use by another descent command{who}; wait for it to finish", dir.display())
}

/// Takes the lock of `dir` (which exists), or says who holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(in_use(dir, std::fs::read_to_string(&path).ok().and_then(|h| h.trim().parse().ok())));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// Checks, without changing anything, that [`claim_new`] would take `dir`: for a command to say
/// so before it spends time computing what it will write there.
pub fn check_new(dir: &Path, kind: Kind, force: bool, resume_hint: bool, parent: Option<&str>) -> Result<()> {
    refuse_dangling_link(dir)?;
    if dir.exists() {
        if !dir.is_dir() {
            bail!("{} exists and is not a folder", dir.display());
        }
        check_replaceable(dir, kind, force, resume_hint, parent)?;
        // In use by another command: said now, as the claim would.
        if let Some(pid) = in_use_by(dir) {
            return Err(in_use(dir, pid));
        }
    }
    Ok(())
}

/// A run folder inside a compare's `runs/` or a sweep's `trials/` that is a link (to a run,
/// anywhere): refused before anything is cleared, since `--force` neither follows nor removes a
/// link there and a run written through it would land in someone else's folder.
pub fn refuse_link_in(dir: &Path) -> Result<()> {
    if dir.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        bail!("{}: a link; descent writes each run into a folder of its own there: move the link away", dir.display());
    }
    Ok(())
}

/// A link whose target does not exist is not a place for a new folder (creating through it would
/// fail with "File exists"): named, with its target.
fn refuse_dangling_link(dir: &Path) -> Result<()> {
    if !dir.exists() && dir.symlink_metadata().is_ok() {
        let target = std::fs::read_link(dir).map(|t| t.display().to_string()).unwrap_or_default();
        bail!(
            "{}: a link to {target}, which does not exist; give a folder (or create the link's target)",
            dir.display()
        );
    }
    Ok(())
}

/// That `dir` is a folder: else one line saying whether it is missing or a file, and what to give
/// (`what`: "the folder of a `descent train` run", …).
pub fn require_dir(dir: &Path, what: &str) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else if dir.exists() {
        bail!("{}: a file, not a folder; give {what}", dir.display())
    } else {
        bail!("{}: no such folder; give {what}", dir.display())
    }
}

/// Claims `dir` for a new folder of `kind`: creates it if missing; takes it as is if empty; with
/// `force`, clears descent's files from a folder of the same kind that descent wrote. Anything
/// else is refused before anything is deleted. `resume_hint` adds `--resume DIR` to the advice
/// for an existing folder. `parent` is the id of the compare or sweep folder the new folder is a
/// run of.
pub fn claim_new(dir: &Path, kind: Kind, force: bool, resume_hint: bool, parent: Option<&str>) -> Result<Claimed> {
    refuse_dangling_link(dir)?;
    let existed = dir.exists();
    if existed {
        if !dir.is_dir() {
            bail!("{} exists and is not a folder", dir.display());
        }
        check_replaceable(dir, kind, force, resume_hint, parent)?;
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let lock = lock(dir)?;
    if existed {
        // Checked again under the lock: another command may have written in between.
        check_replaceable(dir, kind, force, resume_hint, parent)?;
        refuse_obstacles(dir, kind)?;
        let old = Marker::read(dir)?.map(|m| m.id);
        // A run sub-folder this command rewrites must be left empty by the clearing: a file of
        // the user's in one would make the new run refuse the folder after its results were
        // deleted. Checked before anything is deleted.
        let kept = foreign_in_runs(dir, kind, old.as_deref())?;
        if !kept.is_empty() {
            let more = if kept.len() > 3 { format!(" and {} more", kept.len() - 3) } else { String::new() };
            bail!(
                "{}: --force would rewrite run folders holding files descent did not write ({}{more}); move them away first",
                dir.display(),
                kept.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            );
        }
        clear(dir, kind, old.as_deref(), Clearing::KeepMarker)?;
        remove_leftovers(dir, kind)?;
    }
    // Written over the old marker by a rename: a kill in between leaves the folder marked.
    let marker = Marker::new(kind, parent);
    marker.write(dir)?;
    Ok(Claimed { dir: dir.to_path_buf(), marker, _lock: lock })
}

fn check_replaceable(dir: &Path, kind: Kind, force: bool, resume_hint: bool, parent: Option<&str>) -> Result<()> {
    let d = dir.display();
    match inspect(dir, kind, parent)? {
        Found::Empty => Ok(()),
        Found::Ours if force => Ok(()),
        Found::Ours if resume_hint => {
            bail!("{} folder {d} exists; pass --force to replace it or --resume {d} to continue it", kind.name())
        }
        Found::Ours => bail!("{} folder {d} exists; pass --force to replace it", kind.name()),
        Found::OtherParent => bail!(
            "{d} holds a {} that is not this command's own (another run, compare or sweep made it): choose another --out",
            kind.name()
        ),
        Found::OtherKind(k) => bail!(
            "{d} is a descent {} folder, not a {} folder: choose another --out{}",
            k.name(),
            kind.name(),
            if kind.has_force_flag() { " (--force replaces only a folder of the same kind)" } else { "" }
        ),
        Found::Foreign(names) => {
            let shown: Vec<&str> = names.iter().take(3).map(|s| s.as_str()).collect();
            let more = if names.len() > 3 { format!(" and {} more", names.len() - 3) } else { String::new() };
            bail!(
                "{d} is not a folder descent wrote (it holds {}{more}); descent writes only into a new or empty folder{}: choose another --out",
                shown.join(", "),
                if force && kind.has_force_flag() { " and --force replaces only descent's own folders" } else { "" }
            )
        }
    }
}

/// The order [`clear`] deletes a folder's entries in: by name, the marker last. A command killed
/// while clearing then leaves a folder still marked as descent's, which the retried `--force`
/// clears, rather than one it must refuse as foreign.
fn clearing_order(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|n| n == MARKER);
    names
}

/// Refuses a folder where descent will write a file of `kind` but a folder of that name is in the
/// way (`checkpoint.safetensors` made a folder): found before anything is trained or deleted,
/// not when the first checkpoint fails after an epoch.
fn refuse_obstacles(dir: &Path, kind: Kind) -> Result<()> {
    let folders = [run::TENSORBOARD, "runs", "trials"];
    for name in kind.files().iter().map(|n| n.to_string()).filter(|n| !folders.contains(&n.as_str())) {
        let p = dir.join(&name);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            bail!("{}: a folder where descent writes a file; move it away", p.display());
        }
    }
    Ok(())
}

/// Whether [`clear`] deletes the folder's marker too.
#[derive(Clone, Copy, PartialEq)]
enum Clearing {
    /// Everything of descent's: a run sub-folder removed with its contents.
    All,
    /// All but the marker, which the folder's new command writes over by a rename.
    KeepMarker,
}

/// Removes descent's files of a `kind` folder whose marker id was `id` (its sub-folders of runs
/// too, only those it made, each only of descent's files), its marker too unless `how` keeps it;
/// everything else stays.
fn clear(dir: &Path, kind: Kind, id: Option<&str>, how: Clearing) -> Result<()> {
    for name in clearing_order(entries(dir)?) {
        if name == LOCK || !kind.owns(&name) || (how == Clearing::KeepMarker && name == MARKER) {
            continue;
        }
        let p = dir.join(&name);
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("reading {}", p.display()))?;
        if meta.is_dir() {
            match (kind, name.as_str()) {
                (_, name) if kind.runs_folder() == Some(name) => {
                    for sub in entries(&p)? {
                        let s = p.join(&sub);
                        // A link there (to a run, anywhere) is the user's: neither followed nor removed.
                        if real_dir(&s) && matches!(inspect(&s, Kind::Run, id)?, Found::Ours | Found::Empty) {
                            // A run folder in use by another command is not cleared under it.
                            let _lock = lock(&s)?;
                            clear(&s, Kind::Run, None, Clearing::All)?;
                            remove_if_empty(&s)?;
                        }
                    }
                }
                (Kind::Run, run::TENSORBOARD) => {
                    for sub in entries(&p)? {
                        if sub.starts_with(TFEVENTS_PREFIX) {
                            remove_file(&p.join(sub))?;
                        }
                    }
                }
                _ => continue,
            }
            remove_if_empty(&p)?;
        } else {
            remove_file(&p)?;
        }
    }
    Ok(())
}

/// The files (as `runs/NAME/FILE`) that [`clear`] would leave in the run sub-folders of a compare
/// or sweep folder whose marker id was `id`: what descent did not write there.
fn foreign_in_runs(dir: &Path, kind: Kind, id: Option<&str>) -> Result<Vec<String>> {
    let Some(runs) = kind.runs_folder() else { return Ok(vec![]) };
    let p = dir.join(runs);
    let mut out = vec![];
    if !p.is_dir() {
        return Ok(out);
    }
    for sub in entries(&p)? {
        let s = p.join(&sub);
        if real_dir(&s) && matches!(inspect(&s, Kind::Run, id)?, Found::Ours) {
            for name in entries(&s)? {
                if name != LOCK && !Kind::Run.owns(&name) {
                    out.push(format!("{runs}/{sub}/{name}"));
                } else if name == run::TENSORBOARD && real_dir(&s.join(&name)) {
                    // The clearing removes only the event files there.
                    for f in entries(&s.join(&name))? {
                        if !f.starts_with(TFEVENTS_PREFIX) {
                            out.push(format!("{runs}/{sub}/{name}/{f}"));
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Whether `p` is a folder itself, not a link to one.
fn real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn remove_file(p: &Path) -> Result<()> {
    std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))
}

/// Removes `dir` if nothing but a lock file is left in it.
fn remove_if_empty(dir: &Path) -> Result<()> {
    let names = entries(dir)?;
    if names.iter().all(|n| n == LOCK) {
        if names.iter().any(|n| n == LOCK) {
            remove_file(&dir.join(LOCK))?;
        }
        std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Claims an existing folder of `kind` to continue it (`--resume`).
pub fn claim_existing(dir: &Path, kind: Kind) -> Result<Claimed> {
    let d = dir.display();
    if dir.exists() && !dir.is_dir() {
        bail!("{d}: a file, not a folder; --resume takes the folder of a descent {} to continue", kind.name());
    }
    if !dir.is_dir() {
        bail!("{d}: no such folder to resume");
    }
    let marker = match Marker::read(dir)? {
        Some(m) if m.kind == kind => m,
        Some(m) => bail!("{d} is a descent {} folder, not a {} folder", m.kind.name(), kind.name()),
        // Nothing is written into a folder without a marker: its files may be anyone's.
        None if kind.looks_like(dir) => bail!(
            "{d} has no {MARKER} (a {} of an older descent, or its marker was deleted), so nothing ties its files \
             together; it cannot be resumed safely: start it again in a new folder (--out)",
            kind.name()
        ),
        None => bail!("{d} is not a descent {} folder (no {MARKER})", kind.name()),
    };
    let lock = lock(dir)?;
    refuse_obstacles(dir, kind)?;
    Ok(Claimed { dir: dir.to_path_buf(), marker, _lock: lock })
}

/// That no folder is given twice to `flag` (spelled differently or not: compared by their
/// canonical paths), where each would count as another one (an ensemble's members, teachers).
pub fn distinct(flag: &str, dirs: &[PathBuf]) -> Result<()> {
    let mut seen: Vec<PathBuf> = vec![];
    for d in dirs {
        let c = std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if seen.contains(&c) {
            bail!("{flag} {}: given twice (each folder once)", d.display());
        }
        seen.push(c);
    }
    Ok(())
}

/// Writes a whole file atomically ([`descent_train::checkpoint::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(descent_train::checkpoint::write_atomic(path, bytes)?)
}

/// Appends `text` (whole lines) to `path` in one write; with `sync`, flushed to disk before
/// returning.
pub fn append(path: &Path, text: &str, sync: bool) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    debug_assert!(text.ends_with('\n'), "records are whole lines");
    let go = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(text.as_bytes())?;
        if sync {
            f.sync_data()?;
        }
        Ok(())
    };
    go().with_context(|| format!("appending to {}", path.display()))
}

/// A line-record file's complete lines (ending in a newline) that `keep` accepts, as the file's
/// new text, or `None` where the file stays as it is (missing, or every line kept). Nothing is
/// written: the caller writes it (atomically), with the other files it rewrites.
pub fn kept_lines(path: &Path, mut keep: impl FnMut(&str) -> bool) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let kept: String = text.split_inclusive('\n').filter(|l| l.ends_with('\n') && keep(l.trim_end())).collect();
    Ok((kept != text).then_some(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("descent-folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A path resolves through the links of its existing part, and its missing part by name.
    #[test]
    #[cfg(unix)]
    fn a_path_resolves_as_far_as_it_exists() {
        let d = tmp("resolved");
        std::fs::create_dir_all(d.join("real/sub")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        let real = d.join("real").canonicalize().unwrap();
        assert_eq!(resolved(&d.join("link/sub")), Some(real.join("sub")));
        assert_eq!(resolved(&d.join("link/new/deeper")), Some(real.join("new/deeper")));
        assert_eq!(resolved(&d.join("link/new/../other/./x")), Some(real.join("other/x")));
        assert_eq!(resolved(&d.join("link/sub/..")), Some(real.clone()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A `--force` killed while clearing leaves the marker, which goes last: the retried `--force`
    /// clears the rest instead of refusing the folder as foreign.
    #[test]
    fn a_clearing_cut_short_is_cleared_by_the_next_force() {
        let d = tmp("cut-short");
        let claimed = claim_new(&d, Kind::Run, false, true, None).unwrap();
        for f in [run::CONFIG_JSON, run::STEPS_CSV, run::METRICS_JSONL] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        drop(claimed);
        // `clear` deletes everything else, then the marker (which sorts before these by name).
        let order = clearing_order(entries(&d).unwrap());
        assert_eq!(order.last().map(String::as_str), Some(MARKER), "{order:?}");
        // Killed just before the marker: only it (and the lock) remain, with one file.
        for f in [run::CONFIG_JSON, run::STEPS_CSV] {
            std::fs::remove_file(d.join(f)).unwrap();
        }
        claim_new(&d, Kind::Run, true, true, None).unwrap();
        assert!(!d.join(run::METRICS_JSONL).exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A command killed before its marker was renamed into place leaves its lock and the marker's
    /// temporary file: the folder is descent's and empty, and a retry takes it (removing the
    /// leftover). `--force` over a folder with a user's file replaces the marker by a rename, so
    /// a kill in the middle never leaves that folder unmarked.
    #[test]
    fn a_command_killed_before_its_marker_leaves_a_folder_it_can_take_again() {
        let d = tmp("before-marker");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(LOCK), "1").unwrap();
        std::fs::write(d.join(".descent.json.tmp4242"), "{").unwrap();
        std::fs::write(d.join(".checkpoint.safetensors.tmp4242"), "partial").unwrap();
        std::fs::write(d.join("checkpoint.safetensors.tmp"), "an older descent's").unwrap();
        claim_new(&d, Kind::Run, false, true, None).unwrap();
        assert_eq!(entries(&d).unwrap(), vec![LOCK.to_string(), MARKER.to_string()]);
        // Cleared for --force with a note of the user's: the marker is never deleted.
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        std::fs::write(d.join(run::CONFIG_JSON), "{}").unwrap();
        let before = std::fs::read_to_string(d.join(MARKER)).unwrap();
        clear(&d, Kind::Run, None, Clearing::KeepMarker).unwrap();
        assert_eq!(std::fs::read_to_string(d.join(MARKER)).unwrap(), before);
        assert!(d.join("notes.txt").exists() && !d.join(run::CONFIG_JSON).exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A folder where a file of descent's goes is found before anything is cleared or trained.
    #[test]
    fn a_folder_in_the_way_of_a_file_is_refused_first() {
        let d = tmp("obstacle");
        let claimed = claim_new(&d, Kind::Run, false, true, None).unwrap();
        std::fs::write(d.join(run::CONFIG_JSON), "{}").unwrap();
        drop(claimed);
        std::fs::create_dir(d.join(run::CHECKPOINT)).unwrap();
        for e in [claim_new(&d, Kind::Run, true, true, None).err(), claim_existing(&d, Kind::Run).err()] {
            let e = e.expect("refused").to_string();
            assert!(e.contains("checkpoint.safetensors: a folder where descent writes a file"), "{e}");
        }
        assert!(d.join(run::CONFIG_JSON).exists(), "nothing deleted");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn force_never_deletes_a_foreign_folder() {
        let d = tmp("foreign");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        let e = claim_new(&d, Kind::Run, true, true, None).unwrap_err().to_string();
        assert!(e.contains("not a folder descent wrote") && e.contains("notes.txt"), "{e}");
        assert_eq!(entries(&d).unwrap(), vec!["notes.txt"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn force_clears_only_descents_files() {
        let d = tmp("ours");
        let c = claim_new(&d, Kind::Run, false, true, None).unwrap();
        std::fs::write(d.join(run::METRICS_JSONL), "{}\n").unwrap();
        std::fs::write(d.join("mine.txt"), "keep").unwrap();
        drop(c);
        let again = claim_new(&d, Kind::Run, false, true, None).unwrap_err().to_string();
        assert!(again.contains("--force"), "{again}");
        let c = claim_new(&d, Kind::Run, true, true, None).unwrap();
        assert!(!d.join(run::METRICS_JSONL).exists());
        assert_eq!(std::fs::read_to_string(d.join("mine.txt")).unwrap(), "keep");
        drop(c);
        let e = claim_new(&d, Kind::Sweep, true, false, None).unwrap_err().to_string();
        assert!(e.contains("descent run folder"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_claimed_folder_is_refused_to_a_second_claim() {
        let d = tmp("lock");
        let c = claim_new(&d, Kind::Run, false, true, None).unwrap();
        let e = claim_existing(&d, Kind::Run).unwrap_err().to_string();
        assert!(e.contains("in use by another descent command"), "{e}");
        drop(c);
        claim_existing(&d, Kind::Run).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn kept_lines_drop_a_torn_last_line() {
        let d = tmp("retain");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("m.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        assert_eq!(kept_lines(&p, |_| true).unwrap().as_deref(), Some("{\"step\":1}\n{\"step\":2}\n"));
        assert_eq!(kept_lines(&d.join("missing.jsonl"), |_| true).unwrap(), None);
        std::fs::write(&p, "{\"step\":1}\n").unwrap();
        assert_eq!(kept_lines(&p, |_| true).unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
