//! `descent ensemble`: several runs of one classifier evaluated together, by the mean of their
//! class probabilities and by majority vote.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::D;
use descent_train::data::Dataset;
use descent_train::model::{Mode, Model};
use descent_train::rng::Rng;

use crate::evaluate::{accuracy_line, open_run, EvalSet, Weights};

/// The flags of `descent ensemble`.
#[derive(clap::Args, Debug, Clone)]
pub struct EnsembleArgs {
    /// The members: folders of `descent train` runs of the same classifier.
    #[arg(required = true, num_args = 2..)]
    pub dirs: Vec<PathBuf>,
    /// Which weights of each member's checkpoint: raw, ema or swa.
    #[arg(long, default_value = "raw", value_parser = ["raw", "ema", "swa"])]
    pub weights: String,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A model's class probabilities (softmax of its logits) over a dataset, `[n, classes]` row-major,
/// in evaluation mode, in batches of 1000.
pub fn probabilities(model: &dyn Model, data: &Dataset) -> Result<(Vec<f32>, usize)> {
    let (n, mut start) = (data.len(), 0);
    let mut out = Vec::new();
    let mut classes = 0;
    let mut rng = Rng::new(0);
    while start < n {
        let len = 1000.min(n - start);
        let (x, _) = data.range(start, len)?;
        let z = model.forward(&x, Mode::Eval, &mut rng)?;
        classes = z.dim(D::Minus1)?;
        let p = candle_nn::ops::softmax_last_dim(&z.contiguous()?)?;
        out.extend(p.flatten_all()?.to_vec1::<f32>()?);
        start += len;
    }
    Ok((out, classes))
}

/// The index of the largest value (the first of equal ones).
fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// `descent ensemble DIR…`.
pub fn run(a: EnsembleArgs) -> Result<()> {
    let weights = Weights::parse(&a.weights)?;
    crate::folder::distinct("ensemble: the run", &a.dirs)?;
    let runs = a.dirs.iter().map(|d| open_run(d)).collect::<Result<Vec<_>>>()?;
    let first = &runs[0];
    for (i, r) in runs.iter().enumerate() {
        r.refuse_copy_of(&runs[..i], "another member")?;
    }
    for r in &runs {
        if r.classes().is_none() {
            bail!(
                "{}: a {} run is not a classifier; an ensemble takes lenet, mlp, resnet or plain runs",
                r.dir.display(),
                r.args.model
            );
        }
        if r.args.model != first.args.model {
            bail!(
                "{}: a {} run, {} a {} one; the members of an ensemble are runs of one model",
                r.dir.display(),
                r.args.model,
                first.dir.display(),
                first.args.model
            );
        }
        if r.classes() != first.classes() {
            bail!("{}: {:?} classes, {} {:?}", r.dir.display(), r.classes(), first.dir.display(), first.classes());
        }
    }
    let mut labels: Option<Vec<u32>> = None;
    let mut members: Vec<(String, f64, Vec<f32>)> = vec![];
    let mut classes = 0;
    for r in &runs {
        // Each member in the precision it trained in.
        let _precision = crate::evaluate::autocast_of(&r.args)?;
        let m = r.load_model(weights)?;
        let y = m.eval_set.y.to_vec1::<u32>()?;
        match &labels {
            None => labels = Some(y),
            Some(l) if *l != y => bail!(
                "{}: evaluated on other samples than {} (--validation or --data differ); the members must share their evaluation set",
                r.dir.display(),
                first.dir.display()
            ),
            Some(_) => {}
        }
        let (p, c) = probabilities(m.model.as_ref(), &m.eval_set)?;
        if classes != 0 && c != classes {
            bail!("{}: {c} classes, the other members {classes}", r.dir.display());
        }
        classes = c;
        let y = labels.as_ref().expect("set above");
        let right = p.chunks(c).zip(y).filter(|(row, &l)| argmax(row) == l as usize).count();
        members.push((r.dir.display().to_string(), right as f64 / y.len() as f64, p));
    }
    let y = labels.expect("at least two members");
    let n = y.len();
    // Mean probability; majority vote, ties going to the class of highest mean probability.
    let (mut mean_right, mut vote_right, mut nll) = (0usize, 0usize, 0.0f64);
    let mut mean = vec![0f32; classes];
    let mut votes = vec![0usize; classes];
    for (i, &label) in y.iter().enumerate() {
        mean.iter_mut().for_each(|v| *v = 0.0);
        votes.iter_mut().for_each(|v| *v = 0);
        for (_, _, p) in &members {
            let row = &p[i * classes..(i + 1) * classes];
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v / members.len() as f32;
            }
            votes[argmax(row)] += 1;
        }
        let top = *votes.iter().max().expect("classes");
        let vote = (0..classes).filter(|&c| votes[c] == top).fold(None, |best: Option<usize>, c| match best {
            Some(b) if mean[b] >= mean[c] => Some(b),
            _ => Some(c),
        });
        mean_right += (argmax(&mean) == label as usize) as usize;
        vote_right += (vote == Some(label as usize)) as usize;
        nll -= (mean[label as usize].max(1e-30) as f64).ln();
    }
    let width = members.iter().map(|m| m.0.len()).max().unwrap_or(0).max(28);
    println!("{} {} members, {} weights, on {n} evaluation samples", members.len(), first.args.model, weights.name());
    let set = EvalSet::of(&first.args);
    println!("{:<width$}  {} accuracy", "member", set.name());
    for (name, acc, _) in &members {
        println!("{name:<width$}  {:>12.2}%", 100.0 * acc);
    }
    let best = members.iter().map(|m| m.1).fold(0.0, f64::max);
    let (mean_acc, vote_acc) = (mean_right as f64 / n as f64, vote_right as f64 / n as f64);
    println!("{:<width$}  {:>12.2}%", "ensemble: majority vote", 100.0 * vote_acc);
    println!("{:<width$}  {:>12.2}%", "ensemble: mean probability", 100.0 * mean_acc);
    println!(
        "best member {:.2}%, ensemble {:+.2} points; mean-probability {} loss {:.5}",
        100.0 * best,
        100.0 * (mean_acc - best),
        set.name(),
        nll / n as f64
    );
    println!("{}", accuracy_line(set, mean_acc));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(super::argmax(&[0.1, 0.5, 0.5]), 1);
        assert_eq!(super::argmax(&[0.7, 0.1]), 0);
    }
}
