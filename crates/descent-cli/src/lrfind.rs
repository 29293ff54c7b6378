//! `descent lr-find`: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for
//! Training Neural Networks"; fastai's `lr_find`): train from the initial weights while the
//! learning rate grows exponentially, record the loss, stop once it diverges, and suggest the
//! learning rate where the smoothed loss falls fastest.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use descent_train::model::Init;
use descent_train::rng::Rng;
use descent_train::train::{train_from, Control, EpochEnd, EpochMetrics, Hooks, LrSchedule, SpecSchedule, StepMetrics};

use crate::folder;
use crate::plot::{self, Chart, Series, YScale};
use crate::train::{self, TrainArgs};

/// The flags of `descent lr-find`.
#[derive(clap::Args, Debug, Clone)]
pub struct LrFindArgs {
    /// The first learning rate.
    #[arg(long, default_value_t = 1e-7)]
    pub start_lr: f64,
    /// The last learning rate.
    #[arg(long, default_value_t = 10.0)]
    pub end_lr: f64,
    /// Steps from the first to the last learning rate.
    #[arg(long, default_value_t = 300)]
    pub num_steps: u64,
    /// Stop once the smoothed loss exceeds this multiple of its minimum.
    #[arg(long, default_value_t = 4.0)]
    pub diverge: f64,
    #[command(flatten)]
    pub base: TrainArgs,
}

/// The longest test (each step's point is kept and drawn).
const MAX_STEPS: u64 = 1_000_000;
/// The fewest steps a test takes, and the fewest points a suggestion is read from.
const MIN_STEPS: u64 = 10;

/// One step of the test.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub lr: f64,
    pub loss: f64,
    /// Exponential moving average of the loss (β = 0.9), debiased.
    pub smoothed: f64,
}

/// Records the test and stops it at divergence.
struct Recorder {
    start: f64,
    diverge: f64,
    points: Vec<Point>,
    avg: f64,
    best: f64,
    /// Whether the test stopped because the smoothed loss passed `diverge` × its best.
    diverged: bool,
}

impl Hooks for &mut Recorder {
    fn on_step(&mut self, s: &StepMetrics) -> Control {
        // fastai smooths with 0.98, whose memory (about 50 steps) spans two decades of a 200-step
        // test and shifts the curve right; 0.9 keeps it within half a decade.
        const BETA: f64 = 0.9;
        self.avg = BETA * self.avg + (1.0 - BETA) * s.loss as f64;
        let smoothed = self.avg / (1.0 - BETA.powi(s.step as i32));
        self.points.push(Point { lr: self.start * s.lr_scale, loss: s.loss as f64, smoothed });
        self.best = self.best.min(smoothed);
        if s.step > 1 && smoothed > self.diverge * self.best {
            self.diverged = true;
            Control::Stop
        } else {
            Control::Continue
        }
    }

    fn on_epoch(&mut self, _m: &EpochMetrics, _end: &mut EpochEnd) -> descent_train::Result<()> {
        Ok(())
    }
}

/// What a range test's curve says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// The learning rate where the smoothed loss falls fastest (per decade), before its minimum,
    /// and a tenth of the learning rate at the minimum.
    Suggest(f64, f64),
    /// The loss never fell and rose above its noise: the range starts above the usable rates.
    Rising,
    /// The loss moved by no more than its batch-to-batch noise (`fall`, `noise`): nothing learned
    /// in the range, which ends below the usable rates (or the model does not learn).
    Flat { fall: f64, noise: f64 },
}

/// The batch-to-batch noise of the loss over `points`: the standard deviation of one step's
/// loss about its trend, from the differences of consecutive losses (a trend moves them little,
/// the noise by √2 of its own) by their median absolute deviation (a diverging end's jumps do not
/// count).
fn noise(points: &[Point]) -> f64 {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            0.0
        } else {
            v[v.len() / 2]
        }
    };
    let diffs: Vec<f64> = points.windows(2).map(|w| w[1].loss - w[0].loss).filter(|d| d.is_finite()).collect();
    let mid = median(diffs.clone());
    1.4826 * median(diffs.into_iter().map(|d| (d - mid).abs()).collect()) / std::f64::consts::SQRT_2
}

/// The suggestions ([`Verdict::Suggest`]) where the smoothed loss fell, from its highest before
/// its minimum to that minimum, by more than three times the loss's noise; else why there are
/// none.
pub fn suggest(points: &[Point]) -> Option<Verdict> {
    // Skip the first tenth, and at least the average's memory (10 steps) where the test is three
    // times as long: the moving average is still warming up (its first value is a single batch's
    // loss, as noisy as any).
    let first = (points.len() / 10).max(10.min(points.len() / 3));
    let min = (first..points.len()).min_by(|&a, &b| points[a].smoothed.total_cmp(&points[b].smoothed))?;
    // Slopes over a quarter of a decade each side: neighbouring steps differ by batch noise more
    // than by the trend.
    let decades = (points[points.len() - 1].lr / points[0].lr).log10().max(1e-9);
    let k = ((points.len() as f64 / decades / 4.0).round() as usize).max(1);
    let slope = |i: usize| {
        let (a, b) = (i.saturating_sub(k), (i + k).min(points.len() - 1));
        if a == b {
            return 0.0;
        }
        (points[b].smoothed - points[a].smoothed) / (points[b].lr.log10() - points[a].lr.log10())
    };
    let noise = noise(points);
    let lowest = points[min].smoothed;
    let fall = points[first..=min].iter().map(|p| p.smoothed).fold(lowest, f64::max) - lowest;
    let steepest = (first..=min).min_by(|&a, &b| slope(a).total_cmp(&slope(b)))?;
    if min == first || slope(steepest) >= 0.0 || slope(steepest).is_nan() {
        let rise = points[points.len() - 1].smoothed - lowest;
        return Some(if rise > 3.0 * noise { Verdict::Rising } else { Verdict::Flat { fall, noise } });
    }
    // The smoothed curve of pure noise wanders by about the noise itself over a test (its own
    // spread is a quarter of the noise's, more while the average warms up): a fall is the
    // trend's when it is more than three times the noise.
    if fall <= 3.0 * noise {
        return Some(Verdict::Flat { fall, noise });
    }
    Some(Verdict::Suggest(points[steepest].lr, points[min].lr / 10.0))
}

/// Whether a train flag was given (differs from its default).
pub type Given = fn(&TrainArgs) -> bool;

/// The train flags lr-find has no use for (it sets its own length, learning rates and folder), by
/// their argument ids, with whether one was given: refused when given, hidden from its help.
pub const UNUSED_TRAIN_FLAGS: &[(&str, Given)] = &[
    ("epochs", |b| b.epochs.is_some()),
    ("steps", |b| b.steps.is_some()),
    ("patience", |b| b.patience.is_some()),
    ("min_delta", |b| b.min_delta != 0.0),
    ("min_loss_change", |b| b.min_loss_change.is_some()),
    ("target_accuracy", |b| b.target_accuracy.is_some()),
    ("validation", |b| b.validation != 0),
    ("tensorboard", |b| b.tensorboard),
    ("resume", |b| b.resume.is_some()),
    ("schedule_interval", |b| b.schedule_interval != "step"),
    ("log_grad_norms", |b| b.log_grad_norms),
    ("prune_to", |b| b.prune_to.is_some()),
    ("prune_schedule", |b| b.prune_schedule.is_some()),
    ("prune_start", |b| b.prune_start.is_some()),
    ("prune_end", |b| b.prune_end.is_some()),
    ("prune_frequency", |b| b.prune_frequency.is_some()),
    ("ema", |b| b.ema.is_some()),
    ("ema_warmup", |b| b.ema_warmup),
    ("swa_start", |b| b.swa_start.is_some()),
    ("swa_lr", |b| b.swa_lr.is_some()),
    ("swa_anneal_epochs", |b| b.swa_anneal_epochs.is_some()),
    ("swa_anneal", |b| b.swa_anneal.is_some()),
    ("average_buffers", |b| b.average_buffers),
    // The schedule's own settings (lr-find's rate is its exponential ramp).
    ("warmup_steps", |b| b.warmup_steps.is_some()),
    ("decay_steps", |b| b.decay_steps.is_some()),
    ("min_lr", |b| b.min_lr.is_some()),
    ("schedule_args", |b| b.schedule_args.as_object().is_none_or(|o| !o.is_empty())),
];

pub fn run(a: LrFindArgs) -> Result<()> {
    if !(a.start_lr > 0.0 && a.end_lr > a.start_lr && a.start_lr.is_finite() && a.end_lr.is_finite()) {
        bail!("--start-lr {} and --end-lr {}: need finite rates with 0 < start < end", a.start_lr, a.end_lr);
    }
    if !(MIN_STEPS..=MAX_STEPS).contains(&a.num_steps) {
        bail!("--num-steps {}: the test takes between {MIN_STEPS} and {MAX_STEPS} steps", a.num_steps);
    }
    if !(a.diverge > 1.0 && a.diverge.is_finite()) {
        bail!("--diverge {}: a finite multiple above 1", a.diverge);
    }
    // The test sets its own length, learning rates and folder: train settings it would not use
    // are refused rather than ignored.
    let b = &a.base;
    if b.model == "gpt" {
        bail!("lr-find: the gpt model is not available here; it trains through `descent train` and `descent compare`");
    }
    if let Some((id, _)) = UNUSED_TRAIN_FLAGS.iter().find(|(_, given)| given(b)) {
        let hint = if *id == "steps" { " (use --num-steps)" } else { "" };
        bail!(
            "lr-find does not use {}{hint}: the test runs from the initial weights for --num-steps steps",
            train::flag_of(id)
        );
    }
    train::one_process(b)?;
    if let Some(path) = &b.config {
        bail!("--config {}: lr-find takes its settings as flags only; give them on the command line", path.display());
    }
    if a.base.lr.is_some() || a.base.schedule.as_deref().is_some_and(|s| s != "constant") {
        bail!("lr-find sets the learning rate itself: use --start-lr and --end-lr, without --lr or --schedule");
    }
    // The rate in --hparams too (`lr`, `learning_rate`), and optimizers with none of their own
    // (wrappers, chains), whose rate lr-find could not sweep.
    let (lib, name) = descent_core::spec::resolve_optimizer(a.base.optimizer())?;
    let key = descent_core::spec::lr_key(lib);
    if a.base.hparams.get(key).is_some() {
        bail!("--hparams `{key}`: lr-find sets the learning rate itself; use --start-lr and --end-lr");
    }
    // A group's own rate would stay fixed while the others are swept: the curve would be neither.
    if let Some((pattern, _)) =
        a.base.groups.iter().find(|(_, g)| ["lr", "learning_rate"].iter().any(|k| g.get(*k).is_some()))
    {
        bail!("--group {pattern}: lr-find sweeps one learning rate for every parameter; remove the group's `{key}`");
    }
    if !descent_core::spec::takes_learning_rate(lib, &name, &a.base.hparams) {
        bail!(
            "--optimizer {}: it has no learning rate of its own (its rate is inside --hparams), so lr-find cannot sweep one",
            a.base.optimizer()
        );
    }
    let out = a.base.out.clone().unwrap_or_else(|| PathBuf::from("runs/lr-find"));
    folder::check_new(&out, folder::Kind::LrFind, a.base.force, false, None)?;
    let mut args = a.base.clone();
    args.lr = Some(a.start_lr);
    train::validate(&args)?;
    let init = Init::parse(&args.init)?;
    let mut rng = Rng::new(args.seed);
    let (model, train_set, test_set, loss) = train::workload(
        &args.model,
        train::Arch::of(&args),
        init,
        args.dropout(),
        args.normalize,
        &args.data,
        &mut rng,
    )?;
    // A batch larger than the training set is refused as `train` refuses it (not cut to the set).
    train::validate_for_data(&args, train_set.len())?;
    let mut cfg = train::config(&args, loss)?;
    let (start, ratio, n) = (a.start_lr, a.end_lr / a.start_lr, a.num_steps);
    cfg.schedule = LrSchedule::Spec(SpecSchedule {
        name: "learning-rate range test".into(),
        schedule: Arc::new(move |t: u64| start * ratio.powf(t.min(n - 1) as f64 / (n - 1) as f64)),
        base_lr: start,
        per_epoch: false,
    });
    cfg.max_steps = Some(n);
    cfg.epochs = usize::try_from(n.div_ceil(cfg.steps_per_epoch(train_set.len()).max(1))).unwrap_or(usize::MAX);
    // The optimizer over the model, with the ramp as its schedule: one whose rate a schedule
    // cannot set (torch Rprop) is refused before the folder is made.
    descent_train::train::optimizer_for(model.as_ref(), &cfg)?;
    // Claimed (created and locked) before the test trains: a folder that cannot be written
    // fails now, not after the test, and a second command cannot write into it meanwhile.
    let _claimed = folder::claim_new(&out, folder::Kind::LrFind, a.base.force, false, None)?;
    println!(
        "learning-rate range test: {} with {}, {:e} to {:e} over {} steps (batch {}{})",
        args.model,
        args.optimizer(),
        a.start_lr,
        a.end_lr,
        n,
        cfg.batch_size,
        if cfg.accumulate > 1 { format!(" × {} accumulated", cfg.accumulate) } else { String::new() }
    );
    let mut rec =
        Recorder { start, diverge: a.diverge, points: vec![], avg: 0.0, best: f64::INFINITY, diverged: false };
    match train_from(model.as_ref(), &train_set, &test_set, &cfg, None, &mut rec) {
        Ok(_) => {}
        // A non-finite loss is the test's natural end at a too-large learning rate.
        Err(e) if e.to_string().contains("training stopped") => rec.diverged = true,
        Err(e) => return Err(e.into()),
    }
    let points = rec.points;
    let mut csv = "step,lr,loss,smoothed\n".to_string();
    for (i, p) in points.iter().enumerate() {
        csv += &format!("{},{},{},{}\n", i + 1, p.lr, p.loss, p.smoothed);
    }
    folder::write_atomic(&out.join("lr_find.csv"), csv.as_bytes())?;
    // As few points as the shortest test allows (a test that diverged within its first ten steps)
    // are too coarse a curve for its slope: no suggestion.
    let too_few = points.len() < MIN_STEPS as usize;
    let verdict = if too_few { None } else { suggest(&points) };
    let suggestion = match verdict {
        Some(Verdict::Suggest(steep, min10)) => Some((steep, min10)),
        _ => None,
    };
    let mut series = vec![Series {
        raw: points.iter().map(|p| (p.lr, p.loss)).collect(),
        ..Series::line(
            format!("{} {}", args.model, args.optimizer()),
            points.iter().map(|p| (p.lr, p.smoothed)).collect(),
        )
    }];
    if let Some((steep, _)) = suggestion {
        let lo = points.iter().map(|p| p.smoothed).fold(f64::INFINITY, f64::min);
        let hi = points.first().map(|p| p.smoothed).unwrap_or(lo);
        series.push(Series::line(format!("suggested {}", plot::tick(steep)), vec![(steep, lo), (steep, hi)]));
    }
    let chart = Chart {
        title: format!("learning-rate range test: {} with {}", args.model, args.optimizer()),
        log_x: true,
        integer_x: false,
        x_label: "learning rate (log scale)".into(),
        y_label: "training loss (smoothed; raw faint)".into(),
        y_scale: YScale::Auto,
        series,
        legend: plotters::chart::SeriesLabelPosition::UpperLeft,
        fit_faint: false,
    };
    plot::line_chart(&chart, &out.join("lr_find"))?;
    let stopped = rec.diverged;
    println!(
        "{} steps{}; loss, smoothed loss and the chart in {}",
        points.len(),
        if stopped { " (stopped: the loss diverged)" } else { "" },
        out.display()
    );
    match suggestion {
        Some((steep, min10)) => {
            println!("suggested learning rate: {} (steepest descent of the smoothed loss)", plot::tick(steep));
            println!("                         {} (a tenth of the learning rate at the minimum)", plot::tick(min10));
        }
        None if points.is_empty() => println!("no suggestion: the test recorded no step"),
        None if too_few => println!(
            "no suggestion: the loss diverged after {} step(s), too few to locate its steepest descent; narrow the \
             range (--end-lr) or start it lower (--start-lr)",
            points.len()
        ),
        None => match verdict {
            Some(Verdict::Flat { fall, noise }) => println!(
                "no suggestion: the smoothed loss fell by {fall:.3} at most, within its batch-to-batch noise ({noise:.3}): \
                 nothing was learned in this range; raise its end (--end-lr)"
            ),
            _ => println!(
                "no suggestion: the smoothed loss never fell (lowest at {}); start the range lower (--start-lr)",
                plot::tick(points.iter().min_by(|a, b| a.smoothed.total_cmp(&b.smoothed)).map_or(f64::NAN, |p| p.lr))
            ),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a synthetic curve (flat, a smooth fall between 1e-4 and 1e-2, steepest at 1e-3, then a
    /// rise) the steepest descent is found near 1e-3 and the other suggestion is a tenth of the
    /// minimum's learning rate.
    #[test]
    fn suggestions_follow_the_curve() {
        let points: Vec<Point> = (0..100)
            .map(|i| {
                let lr = 10f64.powf(-6.0 + 6.0 * i as f64 / 99.0);
                let x = lr.log10();
                let t = ((x + 4.0) / 2.0).clamp(0.0, 1.0);
                let s = if x < -2.0 { 2.0 - 1.8 * (3.0 * t * t - 2.0 * t * t * t) } else { 0.2 + (x + 2.0).powi(2) };
                Point { lr, loss: s, smoothed: s }
            })
            .collect();
        let Some(Verdict::Suggest(steep, min10)) = suggest(&points) else { panic!("{:?}", suggest(&points)) };
        assert!((7e-4..1.5e-3).contains(&steep), "{steep}");
        let min_lr = points.iter().min_by(|a, b| a.smoothed.total_cmp(&b.smoothed)).unwrap().lr;
        assert_eq!(min10, min_lr / 10.0);
    }

    /// A loss that only rises (a range starting above the usable rates) suggests nothing.
    #[test]
    fn a_loss_that_never_falls_suggests_nothing() {
        let points: Vec<Point> = (0..50)
            .map(|i| {
                let lr = 10f64.powf(5.0 + i as f64 / 49.0);
                let s = 2.3 + i as f64 * i as f64;
                Point { lr, loss: s, smoothed: s }
            })
            .collect();
        assert_eq!(suggest(&points), Some(Verdict::Rising));
    }

    /// A flat curve of batch noise (nothing learns in the range) suggests nothing, whatever the
    /// noise's draws, and says the range ends too low: not that it starts too high.
    #[test]
    fn a_loss_flat_within_its_noise_suggests_nothing() {
        for seed in 0..1000u64 {
            let mut rng = descent_train::rng::Rng::new(seed);
            let (mut avg, mut points) = (0.0, vec![]);
            for i in 0..30 {
                let loss = 2.3 + 0.05 * (rng.uniform() as f64 - 0.5);
                avg = 0.9 * avg + 0.1 * loss;
                let smoothed = avg / (1.0 - 0.9f64.powi(i + 1));
                points.push(Point { lr: 1e-9 * 100f64.powf(i as f64 / 29.0), loss, smoothed });
            }
            assert!(matches!(suggest(&points), Some(Verdict::Flat { .. })), "seed {seed}: {:?}", suggest(&points));
        }
    }
}
