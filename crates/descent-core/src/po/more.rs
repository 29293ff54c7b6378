//! Further elementwise and adaptive-step optimizers of pytorch_optimizer (AdEMAMix, ADOPT, AggMo,
//! D-Adapt Adam, MADGRAD, NovoGrad, Prodigy, Ranger21, Schedule-Free RAdam, SPAM, Lookahead).

use serde_json::Value;

use crate::error::{Error, Result};
use crate::spec::{build_groups, build_optimizer, Kwargs};
use crate::transform::Transform;

mod ademamix;
mod adopt;
mod aggmo;
mod common;
mod dadapt;
mod lookahead;
mod madgrad;
mod novograd;
mod prodigy;
mod ranger21;
mod schedulefree;
mod spam;

pub use ademamix::{AdEMAMix, AdEMAMixConfig};
pub use adopt::{Adopt, AdoptConfig};
pub use aggmo::{AggMo, AggMoConfig};
pub use dadapt::{DAdaptAdam, DAdaptAdamConfig};
pub use lookahead::{Lookahead, LookaheadConfig, PullbackMomentum};
pub use madgrad::{Madgrad, MadgradConfig};
pub use novograd::{NovoGrad, NovoGradConfig};
pub use prodigy::{Prodigy, ProdigyConfig};
pub use ranger21::{Ranger21, Ranger21Config};
pub use schedulefree::{ScheduleFreeRAdam, ScheduleFreeRAdamConfig};
pub use spam::{Spam, SpamConfig};

/// The optimizers of this family.
pub const NAMES: &[&str] = &[
    "ademamix",
    "adopt",
    "aggmo",
    "dadaptadam",
    "lookahead",
    "madgrad",
    "novograd",
    "prodigy",
    "ranger21",
    "schedulefreeradam",
    "spam",
];

/// Builds `name` if it belongs to this family (`None` otherwise).
pub fn build(
    name: &str,
    hparams: &Value,
    param_groups: Option<&Value>,
    shapes: &[Vec<usize>],
) -> Option<Result<Box<dyn Transform>>> {
    if !NAMES.contains(&name) {
        return None;
    }
    Some(match (name, param_groups) {
        ("lookahead", _) => build_lookahead(hparams, param_groups, shapes),
        // One step couples every parameter (a distance estimate, a mean second moment): the
        // class's groups share it, which groups of separate optimizers would not.
        ("dadaptadam" | "prodigy" | "ranger21", Some(_)) => Err(Error::Field {
            context: format!("po.{name}: param_groups"),
            message: "this optimizer's step couples all parameters; param_groups are not supported".into(),
        }),
        (_, None) => build_one(name, hparams),
        (_, Some(groups)) => build_groups(&format!("po.{name}"), hparams, groups, |h, _| build_one(name, h)),
    })
}

fn boxed<T: Transform + 'static>(t: T) -> Box<dyn Transform> {
    Box::new(t)
}

/// One optimizer of the family for all the parameters it is given.
fn build_one(name: &str, hparams: &Value) -> Result<Box<dyn Transform>> {
    let mut k = Kwargs::new(format!("po.{name}"), hparams)?;
    let tx = match name {
        "ademamix" => boxed(AdEMAMix::new(AdEMAMixConfig::parse(&mut k)?)?),
        "adopt" => boxed(Adopt::new(AdoptConfig::parse(&mut k, hparams)?)?),
        "aggmo" => boxed(AggMo::new(AggMoConfig::parse(&mut k)?)?),
        "dadaptadam" => boxed(DAdaptAdam::new(DAdaptAdamConfig::parse(&mut k)?)?),
        "madgrad" => boxed(Madgrad::new(MadgradConfig::parse(&mut k)?)?),
        "novograd" => boxed(NovoGrad::new(NovoGradConfig::parse(&mut k)?)?),
        "prodigy" => boxed(Prodigy::new(ProdigyConfig::parse(&mut k, hparams)?)?),
        "ranger21" => boxed(Ranger21::new(Ranger21Config::parse(&mut k)?)?),
        "schedulefreeradam" => boxed(ScheduleFreeRAdam::new(ScheduleFreeRAdamConfig::parse(&mut k)?)?),
        "spam" => boxed(Spam::new(SpamConfig::parse(&mut k)?)?),
        other => unreachable!("`{other}` is not in NAMES"),
    };
    crate::po::finish(k)?;
    Ok(tx)
}

/// `Lookahead(optimizer, k, alpha, pullback_momentum)`, the optimizer given as `inner`:
/// `[name, {kwargs}]` (or a bare name) with a torch class (`torch.optim.AdamW`) or a
/// pytorch_optimizer name (`adopt`, …). Parameter groups are the inner optimizer's.
fn build_lookahead(hparams: &Value, param_groups: Option<&Value>, shapes: &[Vec<usize>]) -> Result<Box<dyn Transform>> {
    let mut k = Kwargs::new("po.lookahead", hparams)?;
    // The class's own name for it is `optimizer`; the reference cases say `inner`.
    let (key, inner) = k.either("inner", "optimizer")?;
    let field = |message: String| Error::Field { context: format!("po.lookahead: `{key}`"), message };
    let (name, kwargs) = match inner {
        Value::String(s) => (s.as_str(), Value::Null),
        Value::Array(a) if a.len() == 2 && a[0].is_string() => (a[0].as_str().unwrap_or_default(), a[1].clone()),
        other => return Err(field(format!("expected [name, {{kwargs}}], got {other}"))),
    };
    // A torch optimizer by its class (`torch.optim.SGD`) or its descent name (`torch.sgd`).
    let torch = name.strip_prefix("torch.optim.").or_else(|| name.strip_prefix("torch."));
    let inner = match torch {
        Some(class) => build_optimizer("torch", &class.to_lowercase(), &kwargs, param_groups, shapes)?,
        None => {
            let po = name.strip_prefix("po.").unwrap_or(name).to_lowercase();
            if po == "lookahead" {
                return Err(field("a Lookahead inside a Lookahead is not supported".into()));
            }
            crate::po::build(&po, &kwargs, param_groups, shapes)?
        }
    };
    let config = LookaheadConfig {
        k: k.u64("k", 5)?,
        alpha: k.f64("alpha", 0.5)?,
        pullback_momentum: PullbackMomentum::parse(k.str("pullback_momentum", "none")?)?,
    };
    crate::po::finish(k)?;
    // The parameters the groups name (the inner optimizer checked their form): the others are
    // never stepped, and the class never syncs them either.
    let named: Vec<usize> = param_groups
        .and_then(Value::as_array)
        .map(|gs| {
            gs.iter()
                .filter_map(|g| g.get("params").and_then(Value::as_array))
                .flatten()
                .filter_map(|v| v.as_u64().map(|i| i as usize))
                .collect()
        })
        .unwrap_or_else(|| (0..shapes.len()).collect());
    let left_out = (0..shapes.len()).filter(|i| !named.contains(i)).collect();
    Ok(boxed(Lookahead::new(inner, config)?.leaving_out(left_out)))
}
