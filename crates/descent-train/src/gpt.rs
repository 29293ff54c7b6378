//! A GPT as nanoGPT writes it (Karpathy's `model.py`), for character-level language modelling:
//! learned token and position embeddings, pre-norm blocks `h + attn(ln_1(h))`, `h + mlp(ln_2(h))`
//! with causal multi-head self-attention and an MLP `c_proj(GELU(c_fc(·)))` (C → 4C → C), a final
//! LayerNorm and an output projection tied to the token embedding (`logits = ln_f(h)·wteᵀ`, no
//! bias), so the embedding's gradient is the sum of both uses.
//!
//! Parameters carry nanoGPT's names (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight`,
//! …), so descent's optimizers, parameter groups and checkpoints address them as in PyTorch.

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::linear::Activation;
use crate::model::{cross_entropy, Linear, Mode, Model};
use crate::nn::{softmax, CausalSelfAttention, Dropout, Embedding, Gelu, LayerNorm};
use crate::optim::OptimizerConfig;
use crate::rng::Rng;

/// The shape of a [`Gpt`] (nanoGPT's `GPTConfig`; every Linear has a bias).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptConfig {
    /// Number of tokens (characters for the character-level model).
    pub vocab_size: usize,
    /// The longest context: the rows of the position embedding.
    pub block_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Channels C of the residual stream.
    pub n_embd: usize,
    /// Dropout probability after the embeddings, on the attention weights, and after each block's
    /// attention and MLP projections (nanoGPT's `embd`, `attn`, `resid` dropout); in training only.
    pub dropout: f32,
    /// The MLP's GELU: exact (erf) as nanoGPT's `nn.GELU()`, or the tanh approximation of GPT-2.
    pub gelu: Gelu,
    /// Layer norms' ε.
    pub layer_norm_eps: f64,
}

impl GptConfig {
    /// A configuration without dropout, exact GELU and LayerNorm eps 1e-5 (nanoGPT's defaults).
    pub fn new(vocab_size: usize, block_size: usize, n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        GptConfig {
            vocab_size,
            block_size,
            n_layer,
            n_head,
            n_embd,
            dropout: 0.0,
            gelu: Gelu::Erf,
            layer_norm_eps: 1e-5,
        }
    }

    /// The configuration as JSON (what a checkpoint keeps to rebuild the model): every field by
    /// nanoGPT's name, the GELU as `"erf"` or `"tanh"`.
    pub fn to_json(&self) -> Value {
        json!({
            "model": "gpt",
            "vocab_size": self.vocab_size,
            "block_size": self.block_size,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "dropout": self.dropout,
            "gelu": match self.gelu { Gelu::Erf => "erf", Gelu::Tanh => "tanh" },
            "layer_norm_eps": self.layer_norm_eps,
        })
    }

    /// The configuration of [`GptConfig::to_json`]'s form, checked as [`Gpt::new`] checks it; a
    /// missing or malformed field is an error naming it.
    pub fn from_json(v: &Value) -> Result<GptConfig> {
        let bad = |k: &str, want: &str| Error::Param(format!("gpt config: `{k}` is missing or not {want}: {v}"));
        if v["model"] != json!("gpt") {
            return Err(bad("model", "\"gpt\""));
        }
        let n = |k: &str| -> Result<usize> {
            v[k].as_u64().and_then(|x| usize::try_from(x).ok()).ok_or_else(|| bad(k, "a non-negative integer"))
        };
        let f = |k: &str| v[k].as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad(k, "a finite number"));
        let gelu = match v["gelu"].as_str() {
            Some("erf") => Gelu::Erf,
            Some("tanh") => Gelu::Tanh,
            _ => return Err(bad("gelu", "\"erf\" or \"tanh\"")),
        };
        let c = GptConfig {
            dropout: f("dropout")? as f32,
            gelu,
            layer_norm_eps: f("layer_norm_eps")?,
            ..GptConfig::new(n("vocab_size")?, n("block_size")?, n("n_layer")?, n("n_head")?, n("n_embd")?)
        };
        c.check()?;
        Ok(c)
    }

    /// The parameters' names and shapes in [`Model::named_vars`]'s order, without building the
    /// model.
    pub fn param_shapes(&self) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
        let c = self.n_embd;
        let block = move |i: usize| {
            let p = format!("transformer.h.{i}");
            [
                ("ln_1.weight", vec![c]),
                ("ln_1.bias", vec![c]),
                ("attn.c_attn.weight", vec![3 * c, c]),
                ("attn.c_attn.bias", vec![3 * c]),
                ("attn.c_proj.weight", vec![c, c]),
                ("attn.c_proj.bias", vec![c]),
                ("ln_2.weight", vec![c]),
                ("ln_2.bias", vec![c]),
                ("mlp.c_fc.weight", vec![4 * c, c]),
                ("mlp.c_fc.bias", vec![4 * c]),
                ("mlp.c_proj.weight", vec![c, 4 * c]),
                ("mlp.c_proj.bias", vec![c]),
            ]
            .map(|(n, s)| (format!("{p}.{n}"), s))
        };
        [
            ("transformer.wte.weight".to_string(), vec![self.vocab_size, c]),
            ("transformer.wpe.weight".to_string(), vec![self.block_size, c]),
        ]
        .into_iter()
        .chain((0..self.n_layer).flat_map(block))
        .chain([("transformer.ln_f.weight".to_string(), vec![c]), ("transformer.ln_f.bias".to_string(), vec![c])])
    }

    fn check(&self) -> Result<()> {
        let c = self;
        if c.vocab_size == 0 || c.block_size == 0 || c.n_layer == 0 || c.n_embd == 0 {
            return Err(Error::Param(format!(
                "gpt: vocabulary, block size, layers and width must be positive; got vocabulary {}, block size {}, {} layers, width {}",
                c.vocab_size, c.block_size, c.n_layer, c.n_embd
            )));
        }
        if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps >= 0.0) {
            return Err(Error::Param(format!(
                "gpt: the layer norms' eps must be a finite number at least 0, got {}",
                c.layer_norm_eps
            )));
        }
        if c.n_head == 0 || !c.n_embd.is_multiple_of(c.n_head) {
            return Err(Error::Param(format!("gpt: {} channels do not split into {} heads", c.n_embd, c.n_head)));
        }
        Dropout::new(c.dropout)?;
        Ok(())
    }
}

/// One transformer block: `h + attn(ln_1(h))`, then `h + mlp(ln_2(h))`.
#[derive(Clone)]
pub struct Block {
    /// The layer norm before the attention.
    pub ln_1: LayerNorm,
    /// The causal self-attention.
    pub attn: CausalSelfAttention,
    /// The layer norm before the MLP.
    pub ln_2: LayerNorm,
    /// `mlp.c_fc`, C → 4C.
    pub c_fc: Linear,
    /// `mlp.c_proj`, 4C → C.
    pub c_proj: Linear,
}

/// nanoGPT's GPT (see the module documentation).
#[derive(Clone)]
pub struct Gpt {
    /// The shape.
    pub config: GptConfig,
    /// `transformer.wte`, `[vocab_size, n_embd]`, also the output projection.
    pub wte: Embedding,
    /// `transformer.wpe`, `[block_size, n_embd]`.
    pub wpe: Embedding,
    /// `transformer.h`.
    pub h: Vec<Block>,
    /// `transformer.ln_f`, the layer norm before the output projection.
    pub ln_f: LayerNorm,
}

fn normal_var(shape: (usize, usize), std: f32, rng: &mut Rng, dev: &Device) -> Result<Var> {
    let w: Vec<f32> = (0..shape.0 * shape.1).map(|_| std * rng.normal()).collect();
    Ok(Var::from_tensor(&Tensor::from_vec(w, shape, dev)?)?)
}

/// A Linear `inp → out` with weights `N(0, std²)` and a zero bias.
fn linear(inp: usize, out: usize, std: f32, rng: &mut Rng, dev: &Device) -> Result<Linear> {
    Ok(Linear {
        weight: normal_var((out, inp), std, rng, dev)?,
        bias: Var::from_tensor(&Tensor::zeros(out, DType::F32, dev)?)?,
    })
}

impl Gpt {
    /// nanoGPT's initialization from `rng`: `N(0, 0.02²)` for the embeddings and Linear weights,
    /// `N(0, (0.02/√(2·n_layer))²)` for the residual projections (`attn.c_proj`, `mlp.c_proj`),
    /// zero biases, LayerNorm weight 1 and bias 0. Drawn in parameter order.
    pub fn new(config: GptConfig, rng: &mut Rng, dev: &Device) -> Result<Gpt> {
        config.check()?;
        let c = config.n_embd;
        let (std, proj_std) = (0.02, 0.02 / (2.0 * config.n_layer as f32).sqrt());
        let wte = Embedding::normal(config.vocab_size, c, std, rng, dev)?;
        let wpe = Embedding::normal(config.block_size, c, std, rng, dev)?;
        let mut h = Vec::with_capacity(config.n_layer);
        for _ in 0..config.n_layer {
            let ln_1 = LayerNorm::new(c, dev)?;
            let c_attn = linear(c, 3 * c, std, rng, dev)?;
            let attn_proj = linear(c, c, proj_std, rng, dev)?;
            let ln_2 = LayerNorm::new(c, dev)?;
            let c_fc = linear(c, 4 * c, std, rng, dev)?;
            let c_proj = linear(4 * c, c, proj_std, rng, dev)?;
            let attn = CausalSelfAttention { c_attn, c_proj: attn_proj, n_head: config.n_head };
            h.push(Block { ln_1, attn, ln_2, c_fc, c_proj });
        }
        let mut gpt = Gpt { config, wte, wpe, h, ln_f: LayerNorm::new(c, dev)? };
        gpt.set_eps(config.layer_norm_eps);
        Ok(gpt)
    }

    /// A model of this configuration holding the given tensors (PyTorch's names and shapes, as
    /// [`Model::named_vars`] lists them, e.g. a state dict read from a file). A missing tensor or
    /// a wrong shape is an error naming it.
    ///
    /// The tensors are checked against the configuration before the model is built, so that a
    /// configuration that does not describe them (a block size of 2⁴⁰) allocates nothing.
    pub fn from_tensors(config: GptConfig, get: impl Fn(&str) -> Option<Tensor>) -> Result<Gpt> {
        config.check()?;
        let mut tensors = vec![];
        for (name, shape) in config.param_shapes() {
            let t = get(&name).ok_or_else(|| Error::Param(format!("gpt: no tensor `{name}`")))?;
            if t.dims() != shape {
                return Err(Error::Param(format!("gpt: `{name}` has shape {:?}, expected {shape:?}", t.dims())));
            }
            tensors.push(t);
        }
        let mut gpt = Gpt::new(config, &mut Rng::new(0), &Device::Cpu)?;
        for ((_, var), t) in gpt.named_vars().into_iter().zip(tensors) {
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        gpt.set_eps(config.layer_norm_eps);
        Ok(gpt)
    }

    fn set_eps(&mut self, eps: f64) {
        for b in &mut self.h {
            b.ln_1.eps = eps;
            b.ln_2.eps = eps;
        }
        self.ln_f.eps = eps;
    }

    /// The number of parameters (the tied embedding counted once).
    pub fn num_params(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The mean cross-entropy of `logits` `[b, t, vocab]` against the next tokens `y` `[b, t]`,
    /// over all `b·t` positions.
    pub fn loss(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        cross_entropy(&logits.reshape((b * t, v))?, &y.reshape(b * t)?)
    }

    /// nanoGPT's `configure_optimizers`: AdamW (torch's) with `weight_decay` on the tensors of two
    /// or more dimensions (embeddings and Linear weights) and none on biases and LayerNorm
    /// weights, as two parameter groups by name. Clipping and a schedule can be added to the
    /// config; [`crate::VarOptimizer::for_vars`] with [`Model::named_vars`] builds the optimizer.
    pub fn optimizer_config(lr: f64, betas: (f64, f64), weight_decay: f64) -> OptimizerConfig {
        OptimizerConfig {
            optimizer: "torch.adamw".into(),
            lr: Some(lr),
            hparams: json!({"betas": [betas.0, betas.1], "weight_decay": weight_decay}),
            groups: Self::no_decay_groups(),
            ..Default::default()
        }
    }

    /// The parameter groups (by name) without weight decay: biases and LayerNorms, i.e. exactly
    /// the one-dimensional tensors of a [`Gpt`]. For [`OptimizerConfig::groups`] or the training
    /// loop's `groups`.
    pub fn no_decay_groups() -> Vec<(String, Value)> {
        vec![(".bias".into(), json!({"weight_decay": 0.0})), ("ln_".into(), json!({"weight_decay": 0.0}))]
    }

    /// Dropout with the config's probability in training, the input otherwise.
    fn drop(&self, x: Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        if mode == Mode::Train && self.config.dropout > 0.0 {
            Dropout::new(self.config.dropout)?.forward(&x, mode, rng)
        } else {
            Ok(x)
        }
    }

    /// Causal self-attention of `x` `[b, t, c]`: descent's fused op, or, with attention dropout in
    /// training, the same computation from candle ops with dropout on the attention weights.
    fn attention(&self, a: &CausalSelfAttention, x: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        if mode != Mode::Train || self.config.dropout <= 0.0 {
            return a.forward(x);
        }
        let (b, t, c) = x.dims3()?;
        let (nh, hs) = (a.n_head, c / a.n_head);
        let qkv = a.c_attn.forward(&x.reshape((b * t, c))?)?.reshape((b, t, 3 * c))?;
        let head = |i: usize| -> Result<Tensor> {
            Ok(qkv.narrow(2, i * c, c)?.reshape((b, t, nh, hs))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (head(0)?, head(1)?, head(2)?);
        let s = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hs as f64).sqrt()))?;
        let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
        let s = s.broadcast_add(&Tensor::from_vec(mask, (t, t), x.device())?)?;
        let att = self.drop(softmax(&s)?, mode, rng)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, c))?;
        Ok(a.c_proj.forward(&y)?.reshape((b, t, c))?)
    }
}

impl Model for Gpt {
    /// Token ids `x` `[b, t]` (u32, `t ≤ block_size`) to logits `[b, t, vocab_size]`.
    fn forward(&self, x: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        let (_, t) = x.dims2()?;
        let cfg = &self.config;
        if t == 0 || t > cfg.block_size {
            return Err(Error::Param(format!("gpt: a sequence of {t} tokens; the block size is {}", cfg.block_size)));
        }
        let pos = self.wpe.weight.as_tensor().narrow(0, 0, t)?;
        let h = self.wte.forward(x)?.broadcast_add(&pos)?;
        let mut h = self.drop(h, mode, rng)?;
        for blk in &self.h {
            let a = self.attention(&blk.attn, &blk.ln_1.forward(&h)?, mode, rng)?;
            h = (h + self.drop(a, mode, rng)?)?;
            // The linear ops take [b, t, c] as b·t rows: no reshapes, whose backward in candle
            // would zero-fill and add a gradient of the activations' size each.
            let z = blk.ln_2.forward(&h)?;
            // c_fc and the GELU as one op (see `Activation::Gelu`).
            let z = blk.c_proj.forward(&blk.c_fc.forward_with(&z, Activation::Gelu(cfg.gelu))?)?;
            h = (h + self.drop(z, mode, rng)?)?;
        }
        let h = self.ln_f.forward(&h)?;
        // The tied output projection: the embedding table as a bias-free Linear, [b, t, vocab].
        let zero = Tensor::zeros(cfg.vocab_size, DType::F32, h.device())?;
        crate::linear::linear(&h, self.wte.weight.as_tensor(), &zero)
    }

    /// nanoGPT's state-dict order and names; the output projection is `transformer.wte.weight`.
    fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![
            ("transformer.wte.weight".to_string(), self.wte.weight.clone()),
            ("transformer.wpe.weight".to_string(), self.wpe.weight.clone()),
        ];
        for (i, blk) in self.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            v.extend([
                (format!("{p}.ln_1.weight"), blk.ln_1.weight.clone()),
                (format!("{p}.ln_1.bias"), blk.ln_1.bias.clone()),
                (format!("{p}.attn.c_attn.weight"), blk.attn.c_attn.weight.clone()),
                (format!("{p}.attn.c_attn.bias"), blk.attn.c_attn.bias.clone()),
                (format!("{p}.attn.c_proj.weight"), blk.attn.c_proj.weight.clone()),
                (format!("{p}.attn.c_proj.bias"), blk.attn.c_proj.bias.clone()),
                (format!("{p}.ln_2.weight"), blk.ln_2.weight.clone()),
                (format!("{p}.ln_2.bias"), blk.ln_2.bias.clone()),
                (format!("{p}.mlp.c_fc.weight"), blk.c_fc.weight.clone()),
                (format!("{p}.mlp.c_fc.bias"), blk.c_fc.bias.clone()),
                (format!("{p}.mlp.c_proj.weight"), blk.c_proj.weight.clone()),
                (format!("{p}.mlp.c_proj.bias"), blk.c_proj.bias.clone()),
            ]);
        }
        v.push(("transformer.ln_f.weight".to_string(), self.ln_f.weight.clone()));
        v.push(("transformer.ln_f.bias".to_string(), self.ln_f.bias.clone()));
        v
    }
}

/// How [`generate_with`] draws each token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// The logits are divided by it before the softmax (> 0; below 1 sharpens).
    pub temperature: f64,
    /// Draw only among the `k` most likely tokens (nanoGPT's `top_k`; ties with the `k`-th
    /// kept); all tokens when `None`.
    pub top_k: Option<usize>,
    /// The context the model sees: the last this many tokens (at most the block size; the
    /// block size when `None`).
    pub context: Option<usize>,
}

impl Sampling {
    /// Sampling at this temperature from all tokens, with the model's whole block as context.
    pub fn temperature(temperature: f64) -> Self {
        Sampling { temperature, top_k: None, context: None }
    }
}

/// Continues `prompt` (token ids, at least one) by `tokens` tokens, as nanoGPT's `generate`: the
/// context cropped to the last `block_size` tokens, the last position's logits divided by
/// `temperature` (> 0), softmax, and one draw from that distribution with `rng`. Returns the
/// prompt followed by the new tokens; the same seed gives the same text.
pub fn generate(model: &Gpt, prompt: &[u32], tokens: usize, temperature: f64, rng: &mut Rng) -> Result<Vec<u32>> {
    generate_with(model, prompt, tokens, &Sampling::temperature(temperature), rng)
}

/// [`generate`] with top-k sampling and a shorter context if asked. A context longer than the
/// model's position table, a top-k of 0 or a temperature that is not a positive number is an
/// error.
pub fn generate_with(model: &Gpt, prompt: &[u32], tokens: usize, s: &Sampling, rng: &mut Rng) -> Result<Vec<u32>> {
    generate_each(model, prompt, tokens, s, rng, |_| Ok(true))
}

/// [`generate_with`], handing each new token to `on_token` as soon as it is drawn (to print a
/// long text as it comes); generation stops early when `on_token` returns `false`. The settings
/// are checked before the first token.
pub fn generate_each(
    model: &Gpt,
    prompt: &[u32],
    tokens: usize,
    s: &Sampling,
    rng: &mut Rng,
    mut on_token: impl FnMut(u32) -> Result<bool>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Param("generate: the prompt needs at least one token".into()));
    }
    let temperature = s.temperature;
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Param(format!("generate: temperature must be positive, got {temperature}")));
    }
    if s.top_k == Some(0) {
        return Err(Error::Param("generate: top-k must be at least 1".into()));
    }
    let block = model.config.block_size;
    let context = s.context.unwrap_or(block);
    if context == 0 || context > block {
        return Err(Error::Param(format!(
            "generate: a context of {context} tokens; the model's position table has {block} (its block size)"
        )));
    }
    let dev = model.wte.weight.device().clone();
    let mut ids = prompt.to_vec();
    // Dropout is off in evaluation; the generator only serves the draws.
    let mut unused = Rng::new(0);
    for _ in 0..tokens {
        let ctx = &ids[ids.len().saturating_sub(context)..];
        let x = Tensor::from_slice(ctx, (1, ctx.len()), &dev)?;
        let logits = model.forward(&x, Mode::Eval, &mut unused)?;
        let last = logits.narrow(1, ctx.len() - 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = last.iter().find(|l| !l.is_finite()) {
            return Err(Error::Param(format!(
                "generate: the model's output for token {} is {bad}: its weights overflow (a run that diverged)",
                ids.len() + 1
            )));
        }
        // Shifted by the largest logit before the division, so that a tiny temperature gives
        // −∞ (probability 0) for the others and 0 for the largest, never ∞ − ∞.
        let top = last.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
        let mut z: Vec<f64> = last.iter().map(|&l| (l as f64 - top) / temperature).collect();
        if let Some(k) = s.top_k.filter(|&k| k < z.len()) {
            // nanoGPT: logits below the k-th largest become −∞.
            let mut sorted = z.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            for v in z.iter_mut().filter(|v| **v < kth) {
                *v = f64::NEG_INFINITY;
            }
        }
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = z.iter().map(|&v| (v - m).exp()).collect();
        let total: f64 = p.iter().sum();
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        // Past the sum by rounding: the last token with some probability.
        let mut pick = p.iter().rposition(|&pi| pi > 0.0).unwrap_or(0);
        let mut acc = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            acc += pi;
            if u < acc {
                pick = i;
                break;
            }
        }
        ids.push(pick as u32);
        if !on_token(pick as u32)? {
            break;
        }
    }
    Ok(ids)
}
