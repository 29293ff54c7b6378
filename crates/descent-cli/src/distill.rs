//! `descent distill`: a (smaller) student trained against one or more teacher runs (knowledge
//! distillation, Hinton et al. 2015), with `descent train`'s flags for the student.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::train::{DistillSettings, TrainArgs};

/// The flags of `descent distill`.
#[derive(clap::Args, Debug, Clone)]
pub struct DistillArgs {
    /// A teacher: the folder of a trained classifier run (lenet, mlp, resnet, plain). Repeatable:
    /// several teachers' probabilities at the temperature are averaged.
    // Not required with --resume, so that its own refusal (resume with `descent train`) is said.
    #[arg(long = "teacher", value_name = "RUN_DIR", required_unless_present = "resume")]
    pub teachers: Vec<PathBuf>,
    /// The student model: lenet (--width 3 for a narrow one), mlp (--hidden 32 for a small one),
    /// resnet or plain.
    #[arg(long, required_unless_present = "resume", default_value = "")]
    pub student: String,
    /// Weight of the teachers' term: loss = α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − α)·CE(y,
    /// z_s). 0.9 is Keras' Distiller example default (its alpha = 0.1 weighs the labels' term).
    #[arg(long, default_value_t = 0.9)]
    pub alpha: f64,
    /// Softmax temperature T (Keras' Distiller default 3).
    #[arg(long, default_value_t = 3.0)]
    pub temperature: f64,
    #[command(flatten)]
    pub base: TrainArgs,
}

/// The student's training settings: `descent train`'s, with the teachers in its config.
pub fn settings(a: DistillArgs, matches: &clap::ArgMatches) -> Result<TrainArgs> {
    let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    if given("model") {
        bail!("--model: the student is given with --student MODEL");
    }
    if given("resume") {
        bail!("--resume: continue a distillation run with `descent train --resume RUN_DIR` (its teachers are in its config)");
    }
    if given("config") {
        bail!("--config: give the student's settings as flags");
    }
    crate::folder::distinct("--teacher", &a.teachers)?;
    if let Some(t) = a.teachers.iter().find(|t| t.to_str().is_none()) {
        // The run's config.json records its teachers' paths, in JSON text.
        bail!(
            "--teacher {}: not a UTF-8 path, which the run's config.json cannot record; rename the folder",
            t.display()
        );
    }
    if !matches!(a.student.as_str(), "lenet" | "mlp" | "resnet" | "plain") {
        bail!("--student {}: distillation trains a classifier; accepted: lenet, mlp, resnet, plain", a.student);
    }
    if let Some(out) = &a.base.out {
        let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        if let Some(t) = a.teachers.iter().find(|t| canon(t).is_some() && canon(t) == canon(out)) {
            bail!("--out {}: the teacher {}; the student needs a folder of its own", out.display(), t.display());
        }
    }
    let mut base = a.base;
    base.model = a.student;
    if a.alpha == 0.0 {
        bail!(
            "--alpha 0: the teachers' term would have no weight and the student would learn from the labels alone; train it with descent train, or give --alpha in (0, 1]"
        );
    }
    base.distill = Some(DistillSettings {
        // Absolute, so that the run resumes (and its config.toml replays) from any folder.
        teachers: a.teachers.iter().map(|t| std::fs::canonicalize(t).unwrap_or_else(|_| t.clone())).collect(),
        alpha: a.alpha,
        temperature: a.temperature,
        teacher_weights: vec![],
        teachers_from_run: vec![],
    });
    if base.out.is_none() {
        let stem = format!("distill-{}-seed{}", base.model, base.seed);
        base.out = (1..)
            .map(|k| PathBuf::from("runs").join(if k == 1 { stem.clone() } else { format!("{stem}-{k}") }))
            .find(|d| !d.exists());
    }
    Ok(base)
}
