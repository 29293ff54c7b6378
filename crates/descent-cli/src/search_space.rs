//! Hyper-parameter search: spaces (uniform, log-uniform, integer, choice), samplers (grid, random,
//! TPE through the `tpe` crate) and the successive-halving rule of ASHA (Li et al. 2020,
//! "A System for Massively Parallel Hyperparameter Tuning") as Ray Tune's ASHA scheduler applies
//! it to stop trials.

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use serde_json::{Map, Value};

/// One dimension of a search space.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    Uniform { lo: f64, hi: f64 },
    LogUniform { lo: f64, hi: f64 },
    Int { lo: i64, hi: i64 },
    LogInt { lo: i64, hi: i64 },
    Choice(Vec<Value>),
}

/// A named dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub domain: Domain,
}

pub const KINDS: &str = "uniform:LO..HI, loguniform:LO..HI, int:LO..HI, logint:LO..HI, choice:A|B|…";

impl Param {
    #[cfg(test)]
    /// `NAME=KIND:ARGS`, e.g. `lr=loguniform:1e-4..1e-1`, `batch_size=int:16..128`,
    /// `schedule=choice:constant|cosine`.
    pub fn parse(s: &str) -> Result<Param> {
        let (name, def) = s.split_once('=').with_context(|| format!("`{s}`: expected NAME=KIND:ARGS ({KINDS})"))?;
        Self::parse_domain(name.trim(), def.trim())
    }

    /// A dimension from its name and `KIND:ARGS`.
    pub fn parse_domain(name: &str, def: &str) -> Result<Param> {
        let what = format!("search dimension `{name}`");
        let (kind, args) =
            def.split_once(':').with_context(|| format!("{what}: `{def}` is not KIND:ARGS ({KINDS})"))?;
        let range = || -> Result<(f64, f64)> {
            let (a, b) = args.split_once("..").with_context(|| format!("{what}: `{args}` is not LO..HI"))?;
            let num = |x: &str| x.trim().parse::<f64>().with_context(|| format!("{what}: `{x}` is not a number"));
            let (lo, hi) = (num(a)?, num(b)?);
            use crate::show::Num;
            if !lo.is_finite() || !hi.is_finite() {
                bail!("{what}: the range {}..{} has a bound that is no finite number", Num(lo), Num(hi));
            }
            if lo >= hi {
                bail!("{what}: the range {}..{} is empty or inverted", Num(lo), Num(hi));
            }
            if !(hi - lo).is_finite() {
                // Its draws `lo + (hi − lo)·u` would all be infinite (then clamped to `hi`).
                bail!("{what}: the range {}..{} is wider than a double holds", Num(lo), Num(hi));
            }
            Ok((lo, hi))
        };
        let int = |(lo, hi): (f64, f64)| -> Result<(i64, i64)> {
            if lo.fract() != 0.0 || hi.fract() != 0.0 {
                bail!("{what}: an integer range needs integer bounds, got {lo}..{hi}");
            }
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer up to it is a float
            if lo.abs() > EXACT || hi.abs() > EXACT {
                bail!("{what}: integer bounds beyond ±2^53 ({lo}..{hi})");
            }
            Ok((lo as i64, hi as i64))
        };
        let domain = match kind.trim() {
            "uniform" => {
                let (lo, hi) = range()?;
                Domain::Uniform { lo, hi }
            }
            "loguniform" | "log" => {
                let (lo, hi) = range()?;
                if lo <= 0.0 {
                    bail!("{what}: a log scale needs positive bounds, got {lo}..{hi}");
                }
                Domain::LogUniform { lo, hi }
            }
            "int" => {
                let (lo, hi) = int(range()?)?;
                Domain::Int { lo, hi }
            }
            "logint" => {
                let (lo, hi) = int(range()?)?;
                if lo <= 0 {
                    bail!("{what}: a log scale needs positive bounds, got {lo}..{hi}");
                }
                Domain::LogInt { lo, hi }
            }
            "choice" => {
                if args.split('|').any(|v| v.trim().is_empty()) && !args.trim().is_empty() {
                    bail!("{what}: an empty value between the |s of `{args}`; list each value once, separated by |");
                }
                let vals: Vec<Value> = args
                    .split('|')
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| crate::train::parse_value(v).map_err(|e| anyhow::anyhow!("{what}: `{}`: {e}", v.trim())))
                    .collect::<Result<_>>()?;
                if vals.is_empty() {
                    bail!("{what}: a choice needs at least one value");
                }
                if let Some(v) = vals.iter().enumerate().find(|(i, v)| vals[..*i].contains(v)).map(|(_, v)| v) {
                    bail!("{what}: {v} is listed twice; list each value once");
                }
                Domain::Choice(vals)
            }
            other => bail!("{what}: unknown kind `{other}`; accepted: {KINDS}"),
        };
        Ok(Param { name: name.to_string(), domain })
    }

    /// The TPE coordinate: the value on its sampling scale (log10 for log domains, the index for a
    /// choice), and the range of that coordinate.
    fn coord_range(&self) -> (f64, f64) {
        match &self.domain {
            Domain::Uniform { lo, hi } => (*lo, *hi),
            Domain::LogUniform { lo, hi } => (lo.log10(), hi.log10()),
            Domain::Int { lo, hi } => (*lo as f64 - 0.5, *hi as f64 + 0.5),
            Domain::LogInt { lo, hi } => ((*lo as f64 - 0.5).max(0.5).log10(), (*hi as f64 + 0.5).log10()),
            Domain::Choice(v) => (0.0, v.len() as f64),
        }
    }

    /// The value at a coordinate (clamped into the domain).
    fn at(&self, c: f64) -> Value {
        match &self.domain {
            Domain::Uniform { lo, hi } => Value::from(c.clamp(*lo, *hi)),
            Domain::LogUniform { lo, hi } => Value::from(10f64.powf(c).clamp(*lo, *hi)),
            Domain::Int { lo, hi } => Value::from((c.round() as i64).clamp(*lo, *hi)),
            Domain::LogInt { lo, hi } => Value::from((10f64.powf(c).round() as i64).clamp(*lo, *hi)),
            Domain::Choice(v) => v[(c.floor().max(0.0) as usize).min(v.len() - 1)].clone(),
        }
    }

    /// The coordinate of a value (for telling TPE a finished trial).
    fn coord(&self, v: &Value) -> Option<f64> {
        match &self.domain {
            Domain::Uniform { .. } | Domain::Int { .. } => v.as_f64(),
            Domain::LogUniform { .. } | Domain::LogInt { .. } => v.as_f64().filter(|x| *x > 0.0).map(f64::log10),
            Domain::Choice(vals) => vals.iter().position(|c| c == v).map(|i| i as f64 + 0.5),
        }
    }

    /// Whether `v` is a value of this dimension (a trial read back from its file must be one).
    pub fn contains(&self, v: &Value) -> bool {
        match &self.domain {
            // A few ulps of slack: grid points of earlier sweeps were not clamped.
            Domain::Uniform { lo, hi } | Domain::LogUniform { lo, hi } => {
                let slack = 1e-12 * lo.abs().max(hi.abs());
                v.as_f64().is_some_and(|x| *lo - slack <= x && x <= *hi + slack)
            }
            Domain::Int { lo, hi } | Domain::LogInt { lo, hi } => v.as_i64().is_some_and(|x| *lo <= x && x <= *hi),
            Domain::Choice(vals) => vals.contains(v),
        }
    }

    /// A uniform draw on the sampling scale.
    pub fn sample(&self, rng: &mut rand::rngs::StdRng) -> Value {
        use rand::RngExt;
        let (a, b) = self.coord_range();
        self.at(a + (b - a) * rng.random::<f64>())
    }

    /// The grid values: every choice, every integer (or `points` spread over the scale when there
    /// are more), `points` values evenly spread (on the log scale for log domains).
    pub fn grid(&self, points: usize) -> Vec<Value> {
        let spread = |a: f64, b: f64| -> Vec<f64> {
            if points <= 1 {
                return vec![(a + b) / 2.0];
            }
            (0..points).map(|i| a + (b - a) * i as f64 / (points - 1) as f64).collect()
        };
        match &self.domain {
            // Clamped: `lo + (hi − lo)·1` need not round to `hi`.
            Domain::Uniform { lo, hi } => {
                spread(*lo, *hi).into_iter().map(|x| Value::from(x.clamp(*lo, *hi))).collect()
            }
            Domain::LogUniform { lo, hi } => {
                spread(lo.log10(), hi.log10()).into_iter().map(|c| Value::from(10f64.powf(c).clamp(*lo, *hi))).collect()
            }
            Domain::Int { lo, hi } | Domain::LogInt { lo, hi }
                if hi.checked_sub(*lo).and_then(|d| d.checked_add(1)).is_some_and(|n| n as u64 <= points as u64) =>
            {
                (*lo..=*hi).map(Value::from).collect()
            }
            Domain::Int { lo, hi } => {
                dedup(spread(*lo as f64, *hi as f64).into_iter().map(|c| Value::from(c.round() as i64)))
            }
            Domain::LogInt { lo, hi } => dedup(
                spread((*lo as f64).log10(), (*hi as f64).log10())
                    .into_iter()
                    .map(|c| Value::from((10f64.powf(c).round() as i64).clamp(*lo, *hi))),
            ),
            Domain::Choice(v) => v.clone(),
        }
    }
}

fn dedup(it: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut out: Vec<Value> = vec![];
    for v in it {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Every combination of the dimensions' grid values, the first dimension slowest.
pub fn grid(space: &[Param], points: usize) -> Vec<Map<String, Value>> {
    let mut out = vec![Map::new()];
    for p in space {
        let vals = p.grid(points);
        out = out
            .into_iter()
            .flat_map(|m| {
                vals.iter().map(move |v| {
                    let mut m = m.clone();
                    m.insert(p.name.clone(), v.clone());
                    m
                })
            })
            .collect();
    }
    out
}

/// How the next trial's values are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Grid,
    Random,
    /// Tree-structured Parzen estimators (Bergstra et al. 2011), one per dimension as Optuna's
    /// default, after `startup` random trials.
    Tpe {
        startup: usize,
    },
}

/// The generator of trial `i` of a sweep seeded `seed`: a trial's draw depends only on these (and,
/// for TPE, on the trials finished before it), so a resumed sweep proposes what it would have.
pub fn trial_rng(seed: u64, i: usize) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A finished trial as the samplers see it: its values and its loss (lower is better).
#[derive(Debug, Clone)]
pub struct Told {
    pub values: Map<String, Value>,
    pub loss: f64,
}

/// The values of trial `i` (not for grids, whose trials are the grid's points).
pub fn propose(space: &[Param], method: Method, i: usize, seed: u64, history: &[Told]) -> Result<Map<String, Value>> {
    let mut rng = trial_rng(seed, i);
    let tpe = matches!(method, Method::Tpe { startup } if history.len() >= startup.max(1));
    let mut out = Map::new();
    for p in space {
        let v = if tpe {
            let (a, b) = p.coord_range();
            let range = tpe::range(a, b).map_err(|e| anyhow::anyhow!("{}: {e}", p.name))?;
            let estimator = if matches!(p.domain, Domain::Choice(_)) {
                tpe::histogram_estimator()
            } else {
                tpe::parzen_estimator()
            };
            let mut opt = tpe::TpeOptimizer::new(estimator, range);
            for t in history {
                if let Some(c) = t.values.get(&p.name).and_then(|v| p.coord(v)) {
                    // A diverged trial's NaN objective is the worst loss, as a failed trial's
                    // infinity (TPE takes no NaN).
                    let loss = if t.loss.is_nan() { f64::INFINITY } else { t.loss };
                    opt.tell(c.clamp(a, b - 1e-12 * (b - a).abs().max(1.0)), loss)
                        .map_err(|e| anyhow::anyhow!("TPE for `{}`: {e}", p.name))?;
                }
            }
            let c = opt.ask(&mut rng).map_err(|e| anyhow::anyhow!("TPE for `{}`: {e}", p.name))?;
            p.at(c)
        } else {
            p.sample(&mut rng)
        };
        out.insert(p.name.clone(), v);
    }
    Ok(out)
}

/// Successive halving's rule at one rung, as Ray Tune's ASHA scheduler applies it: a trial whose
/// objective (lower is better) is `value` goes on unless it is worse than the `1/η` quantile
/// (linearly interpolated, as numpy's) of the values `others` recorded at this rung before it;
/// the first trial at a rung always goes on.
pub fn promotable(value: f64, others: &[f64], eta: usize) -> bool {
    let mut sorted: Vec<f64> = others.iter().copied().filter(|v| !v.is_nan()).collect();
    if value.is_nan() {
        return false;
    }
    if sorted.is_empty() {
        return true;
    }
    sorted.sort_by(f64::total_cmp);
    let pos = (sorted.len() - 1) as f64 / eta.max(2) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    let cutoff = if i + 1 < sorted.len() { sorted[i] + frac * (sorted[i + 1] - sorted[i]) } else { sorted[i] };
    value <= cutoff
}

/// The rungs of a budget of `max` steps: `min·η^k` below `max`.
pub fn rungs(min: u64, eta: usize, max: u64) -> Vec<u64> {
    let mut out = vec![];
    let mut r = min.max(1);
    while r < max {
        out.push(r);
        r = r.saturating_mul(eta.max(2) as u64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> Vec<Param> {
        ["lr=loguniform:1e-5..1e-1", "wd=uniform:0..0.5", "bs=logint:16..256", "k=int:1..3", "s=choice:a|b|7"]
            .iter()
            .map(|s| Param::parse(s).unwrap())
            .collect()
    }

    /// Draws stay in their bounds, and a log scale spreads them evenly over the decades (about a
    /// quarter per decade for 1e-5..1e-1), where a linear draw would put nearly all in the last.
    #[test]
    fn samples_stay_in_bounds_and_honour_log_scales() {
        let sp = space();
        let mut per_decade = [0usize; 4];
        let mut choices = std::collections::HashMap::new();
        for i in 0..4000 {
            let v = propose(&sp, Method::Random, i, 7, &[]).unwrap();
            let lr = v["lr"].as_f64().unwrap();
            assert!((1e-5..=1e-1).contains(&lr));
            per_decade[((lr.log10() + 5.0).floor() as usize).min(3)] += 1;
            assert!((0.0..=0.5).contains(&v["wd"].as_f64().unwrap()));
            let bs = v["bs"].as_i64().unwrap();
            assert!((16..=256).contains(&bs));
            assert!((1..=3).contains(&v["k"].as_i64().unwrap()));
            *choices.entry(v["s"].to_string()).or_insert(0) += 1;
        }
        for c in per_decade {
            assert!((850..1150).contains(&c), "{per_decade:?}");
        }
        assert_eq!(choices.len(), 3, "{choices:?}");
        // Reproducible per trial.
        assert_eq!(propose(&sp, Method::Random, 5, 7, &[]).unwrap(), propose(&sp, Method::Random, 5, 7, &[]).unwrap());
    }

    #[test]
    fn the_grid_enumerates_exactly() {
        let sp: Vec<Param> = ["lr=loguniform:1e-4..1e-2", "k=int:1..3", "s=choice:a|b"]
            .iter()
            .map(|s| Param::parse(s).unwrap())
            .collect();
        let g = grid(&sp, 3);
        assert_eq!(g.len(), 3 * 3 * 2);
        let lrs: Vec<f64> = sp[0].grid(3).iter().map(|v| v.as_f64().unwrap()).collect();
        for (a, b) in lrs.iter().zip([1e-4, 1e-3, 1e-2]) {
            assert!((a / b - 1.0).abs() < 1e-12, "{lrs:?}");
        }
        assert_eq!(sp[1].grid(3), vec![Value::from(1), Value::from(2), Value::from(3)]);
        let distinct: std::collections::HashSet<String> = g.iter().map(|m| serde_json::to_string(m).unwrap()).collect();
        assert_eq!(distinct.len(), g.len());
        assert_eq!(Param::parse("n=int:0..100").unwrap().grid(5).len(), 5);
        // The last point of a uniform range is its bound (0.3 + (0.9 − 0.3) rounds above 0.9),
        // and every point is in the space a resumed sweep checks its trials against.
        for spec in ["wd=uniform:0.3..0.9", "x=uniform:0.001..0.01", "lr=loguniform:1e-4..0.3"] {
            let p = Param::parse(spec).unwrap();
            for points in [2, 3, 7] {
                let g = p.grid(points);
                assert!(g.iter().all(|v| p.contains(v)), "{spec}: {g:?}");
            }
        }
        assert_eq!(Param::parse("wd=uniform:0.3..0.9").unwrap().grid(2)[1], Value::from(0.9));
        assert!(!Param::parse("wd=uniform:0.3..0.9").unwrap().contains(&Value::from(0.91)));
    }

    #[test]
    fn bad_dimensions_are_named() {
        for (s, needle) in [
            ("lr=loguniform:1e-1..1e-4", "inverted"),
            ("lr=loguniform:0..1", "positive"),
            ("lr=uniform:1..1", "empty"),
            ("lr=normal:0..1", "unknown kind"),
            ("lr", "NAME=KIND"),
            ("k=int:1.5..3", "integer"),
            ("schedule=choice:constant|constant", "\"constant\" is listed twice"),
            ("lr=choice:0.1|0.1", "0.1 is listed twice"),
            ("momentum=choice:0.9|", "an empty value"),
            ("momentum=choice:|0.9", "an empty value"),
        ] {
            let e = format!("{:#}", Param::parse(s).unwrap_err());
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    /// TPE, after its random start, concentrates near the minimum of a smooth objective: its later
    /// proposals are better on average than random ones.
    #[test]
    fn tpe_finds_the_valley_better_than_chance() {
        let sp = vec![Param::parse("x=uniform:-5..5").unwrap(), Param::parse("y=loguniform:1e-4..1").unwrap()];
        let f = |m: &Map<String, Value>| {
            let (x, y) = (m["x"].as_f64().unwrap(), m["y"].as_f64().unwrap());
            (x - 1.0).powi(2) + (y.log10() + 2.0).powi(2)
        };
        let run = |method| {
            let mut hist = vec![];
            for i in 0..60 {
                let v = propose(&sp, method, i, 3, &hist).unwrap();
                hist.push(Told { loss: f(&v), values: v });
            }
            hist[30..].iter().map(|t| t.loss).sum::<f64>() / 30.0
        };
        let (tpe, random) = (run(Method::Tpe { startup: 10 }), run(Method::Random));
        assert!(tpe < random / 2.0, "TPE {tpe} vs random {random}");
    }

    /// On a synthetic objective (each trial's value at a rung is its final value) the rule stops
    /// exactly the trials worse than the first third of those before them.
    #[test]
    fn the_pruner_stops_the_trials_it_should() {
        assert_eq!(rungs(10, 3, 300), vec![10, 30, 90, 270]);
        assert!(rungs(10, 3, 10).is_empty());
        let finals = [5.0, 3.0, 8.0, 1.0, 9.0, 2.0, 7.0, 6.0, 4.0];
        let promoted: Vec<bool> = (0..finals.len()).map(|i| promotable(finals[i], &finals[..i], 3)).collect();
        // Cutoffs (the 1/3 quantile of the earlier values): none, 5, 3.67, 4.33, 3, 3.67, 2.67,
        // 3, 3.67.
        assert_eq!(promoted, [true, true, false, true, false, true, false, false, false]);
        // Ties pass; NaN never does, and is ignored among the others.
        assert!(promotable(3.0, &[3.0, 3.0, 3.0], 3));
        assert!(!promotable(f64::NAN, &[1.0], 3));
        assert!(promotable(2.0, &[f64::NAN], 3));
    }

    /// A diverged trial's NaN objective is told to TPE as the worst loss, not refused.
    #[test]
    fn tpe_takes_a_nan_objective_as_the_worst() {
        let sp = space();
        let history: Vec<Told> = (0..4)
            .map(|i| {
                let values = propose(&sp, Method::Random, i, 3, &[]).unwrap();
                Told { values, loss: if i == 1 { f64::NAN } else { i as f64 } }
            })
            .collect();
        propose(&sp, Method::Tpe { startup: 2 }, 4, 3, &history).unwrap();
    }
}
