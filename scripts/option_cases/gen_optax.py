import sys, json, traceback, numpy as np, jax, jax.numpy as jnp, optax
from optax import contrib
from common import S, data, write, conv, fn
out = sys.argv[1]
def mk(name, hp):
    if name == 'chain':
        return optax.chain(*[mk(n, k) for n, k in hp['links']])
    kw = {}
    for k, v in hp.items():
        if k in ('betas',) and isinstance(v, list): kw[k] = tuple(v)
        elif k == 'init_step': kw[k] = tuple(v)
        elif k in ('base_optimizer',): kw[k] = mk(*v)
        elif k == 'mu_dtype' and v == 'bfloat16': kw[k] = jnp.bfloat16
        else: kw[k] = conv(v)
    return fn(name)(**kw)
def case(opt, name, hp, shapes=S, steps=10, seed=0, scale=1.0, positive=False):
    cid = f"optax.{opt}.{name}"
    try:
        params, grads = data(shapes, steps, seed, scale)
        if positive: params = [np.abs(p) for p in params]
        tx = mk(opt, hp)
        p = [jnp.asarray(x) for x in params]; st = tx.init(p); expected = []
        for g in grads:
            u, st = tx.update([jnp.asarray(x) for x in g], st, p)
            p = optax.apply_updates(p, u)
            expected.append([np.asarray(x, np.float32).ravel().tolist() for x in p])
        write(out, cid, f"optax 0.2.8 optax.{opt}", opt, hp, shapes, steps, params, grads, expected)
    except Exception as e:
        print("GENFAIL", cid, repr(e)[:300])
cos = lambda v=0.02: {"schedule": "cosine_decay_schedule", "init_value": v, "decay_steps": 8, "alpha": 0.1}
wcos = lambda v=0.02: {"schedule": "warmup_cosine_decay_schedule", "init_value": 0.0, "peak_value": v, "warmup_steps": 3, "decay_steps": 10, "end_value": 0.001}
M = [True, False, True]
n = 0
case("adam", "nesterov_epsroot", {"learning_rate": 0.02, "nesterov": True, "eps_root": 1e-6}, seed=1)
case("adam", "b1zero_sched", {"learning_rate": cos(), "b1": 0.0, "b2": 0.9}, seed=2)
case("adamw", "nesterov_mask_sched", {"learning_rate": wcos(), "nesterov": True, "weight_decay": 0.2, "mask": M}, seed=3)
case("adamw", "wd_sched", {"learning_rate": 0.01, "weight_decay": {"schedule": "linear_schedule", "init_value": 0.5, "end_value": 0.0, "transition_steps": 10}}, seed=4)
case("nadam", "no_nesterov_epsroot", {"learning_rate": 0.02, "nesterov": False, "eps_root": 1e-5, "b1": 0.8}, seed=5)
case("nadamw", "mask_b2", {"learning_rate": 0.02, "weight_decay": 0.3, "mask": [False, True, True], "b2": 0.95}, seed=6)
case("amsgrad", "no_bias_corr", {"learning_rate": 0.02, "bias_correction_mu": False, "bias_correction_nu": False, "eps_root": 1e-6}, seed=7)
case("amsgrad", "no_bc_mu_only", {"learning_rate": 0.02, "bias_correction_mu": False}, seed=8)
case("adamax", "sched_b1", {"learning_rate": cos(0.05), "b1": 0.5, "eps": 1e-3}, seed=9)
case("adamaxw", "mask", {"learning_rate": 0.02, "weight_decay": 0.2, "mask": M}, seed=10)
case("adagrad", "init0_sched", {"learning_rate": wcos(0.1), "initial_accumulator_value": 0.0, "eps": 1e-3}, seed=11)
case("adadelta", "wd_mask", {"learning_rate": 0.5, "rho": 0.8, "weight_decay": 0.1, "weight_decay_mask": M}, seed=12)
case("adadelta", "lr_none", {"rho": 0.95}, seed=13)
case("rmsprop", "mom_nesterov", {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}, seed=14)
case("rmsprop", "eps_out_init_bc", {"learning_rate": 0.01, "eps_in_sqrt": False, "initial_scale": 1.0, "bias_correction": True, "eps": 1e-3}, seed=15)
case("rmsprop", "centered_mom_bc", {"learning_rate": 0.01, "centered": True, "momentum": 0.5, "bias_correction": True}, seed=16)
case("radam", "nesterov_thr", {"learning_rate": 0.02, "nesterov": True, "threshold": 3.0, "eps_root": 1e-6}, steps=12, seed=17)
case("rprop", "etas", {"learning_rate": 0.05, "eta_minus": 0.3, "eta_plus": 1.5, "min_step_size": 1e-3, "max_step_size": 0.2}, seed=18)
case("lion", "mask_b1zero", {"learning_rate": 0.01, "b1": 0.0, "b2": 0.9, "weight_decay": 0.5, "mask": M}, seed=19)
case("lion", "sched", {"learning_rate": cos(0.01), "weight_decay": 0.1}, seed=20)
case("lamb", "mask_wd", {"learning_rate": 0.02, "weight_decay": 0.1, "mask": M, "eps_root": 1e-6}, seed=21)
case("lars", "masks_nesterov", {"learning_rate": 0.5, "weight_decay": 0.01, "weight_decay_mask": M, "trust_ratio_mask": [False, True, True], "nesterov": True, "eps": 1e-3}, seed=22)
case("yogi", "b1_sched", {"learning_rate": cos(0.05), "b1": 0.5, "eps": 1e-4}, seed=23)
case("adabelief", "nesterov_wd_mask", {"learning_rate": 0.02, "nesterov": True, "weight_decay": 0.1, "weight_decay_mask": M}, seed=24)
case("novograd", "wd_epsroot", {"learning_rate": 0.02, "weight_decay": 0.1, "eps_root": 1e-4, "b2": 0.5}, seed=25)
case("adan", "mask_wd", {"learning_rate": 0.02, "weight_decay": 0.1, "mask": M, "eps_root": 0.0}, seed=26)
case("sm3", "mom0", {"learning_rate": 0.1, "momentum": 0.0}, seed=27)
case("fromage", "minnorm", {"learning_rate": 0.05, "min_norm": 0.5}, seed=28)
case("sign_sgd", "sched", {"learning_rate": wcos(0.02)}, seed=29)
case("signum", "beta", {"learning_rate": 0.01, "beta": 0.5}, seed=30)
case("optimistic_gradient_descent", "ab", {"learning_rate": 0.05, "alpha": 0.5, "beta": 2.0}, seed=31)
case("optimistic_adam", "optimism", {"learning_rate": 0.02, "optimism": 0.5, "nesterov": False}, seed=32)
case("optimistic_adam_v2", "ab_nonest", {"learning_rate": 0.02, "alpha": 0.5, "beta": 2.0, "nesterov": False}, seed=33)
case("adafactor", "small_factor_mom_wd", {"learning_rate": 0.02, "min_dim_size_to_factor": 2, "momentum": 0.9, "weight_decay_rate": 0.1, "weight_decay_mask": M}, seed=34)
case("adafactor", "noclip_offset_nopscale", {"learning_rate": 0.02, "min_dim_size_to_factor": 2, "clipping_threshold": None, "decay_offset": 3, "multiply_by_parameter_scale": False, "decay_rate": 0.5}, seed=35)
case("adafactor", "unfactored_lrnone", {"factored": False, "eps": 1e-3}, seed=36)
case("sgd", "nesterov_sched", {"learning_rate": wcos(0.05), "momentum": 0.8, "nesterov": True}, seed=37)
case("contrib.acprop", "mask_wd", {"learning_rate": 0.02, "weight_decay": 0.1, "mask": M}, seed=38)
case("contrib.simplified_ademamix", "alpha_wd_mask", {"learning_rate": 0.01, "alpha": 2.0, "weight_decay": 0.1, "mask": M, "b1": 0.9}, seed=39)
case("contrib.dowg", "wd_mask_init", {"learning_rate": 1.0, "init_estim_sq_dist": 0.01, "weight_decay": 0.1, "mask": M}, seed=40)
case("contrib.dog", "distance_wd_mask", {"learning_rate": 1.0, "init_step": ["distance", 0.01], "weight_decay": 0.1, "mask": M}, seed=41)
case("contrib.dog", "lrinit", {"learning_rate": 0.5, "init_step": ["learning_rate", 0.01]}, seed=42)
case("contrib.ademamix", "wd_mask", {"learning_rate": 0.01, "weight_decay": 0.1, "mask": M, "alpha": 3.0, "b3": 0.99}, seed=43)
case("contrib.ademamix", "alpha_sched", {"learning_rate": 0.01, "alpha": {"schedule": "linear_schedule", "init_value": 0.0, "end_value": 5.0, "transition_steps": 8}, "b3": 0.99}, seed=44)
case("contrib.adopt", "nesterov_noclip", {"learning_rate": 0.02, "nesterov": True, "use_clipping": False}, seed=45)
case("contrib.cocob", "wd_mask_alpha", {"learning_rate": 1.0, "alpha": 10.0, "weight_decay": 0.1, "mask": M}, seed=46)
case("contrib.dadapt_adamw", "wd_betas", {"learning_rate": 1.0, "betas": [0.8, 0.99], "weight_decay": 0.1, "estim_lr0": 1e-3}, seed=47)
case("contrib.prodigy", "beta3_wd_safeguard", {"learning_rate": 1.0, "beta3": 0.9, "weight_decay": 0.1, "safeguard_warmup": True, "estim_lr_coef": 2.0, "estim_lr0": 1e-4}, seed=48)
case("contrib.madgrad", "mom0_wd", {"learning_rate": 0.05, "momentum": 0.0, "weight_decay": 0.1}, seed=49)
case("contrib.schedule_free_adamw", "warmup_wd", {"learning_rate": 0.02, "warmup_steps": 4, "weight_decay": 0.1, "weight_lr_power": 1.0, "b1": 0.8}, seed=50)
case("contrib.schedule_free_sgd", "warmup_wd", {"learning_rate": 0.1, "warmup_steps": 4, "weight_decay": 0.1}, seed=51)
case("contrib.muon", "sched", {"learning_rate": cos(0.02)}, shapes=[(5, 3), (4,), (6, 4)], seed=52)
case("contrib.muon", "adam_lr", {"learning_rate": 0.02, "adam_learning_rate": 0.005, "adam_weight_decay": 0.1, "adam_b1": 0.5}, shapes=[(5, 3), (4,), (6, 4)], seed=53)
case("chain", "rms_bc_stddev", {"links": [["scale_by_stddev", {"decay": 0.8, "bias_correction": True, "eps_in_sqrt": False, "initial_scale": 0.5}], ["scale", {"step_size": -0.01}]]}, seed=54)
case("chain", "trace_nesterov_ema", {"links": [["ema", {"decay": 0.7, "debias": False}], ["trace", {"decay": 0.9, "nesterov": True}], ["scale", {"step_size": -0.01}]]}, seed=55)
case("chain", "trust_ratio_minnorm", {"links": [["scale_by_adam", {"b1": 0.0, "eps_root": 1e-6, "nesterov": True}], ["scale_by_trust_ratio", {"min_norm": 0.5, "trust_coefficient": 0.5, "eps": 1e-3}], ["scale", {"step_size": -0.01}]]}, seed=56)
case("chain", "yogi_belief", {"links": [["scale_by_yogi", {"b1": 0.5, "initial_accumulator_value": 0.1, "eps_root": 1e-6}], ["scale_by_belief", {"nesterov": True, "b1": 0.5}], ["scale", {"step_size": -0.01}]]}, seed=57)
case("chain", "blockrms_paramblock", {"links": [["clip_by_block_rms", {"threshold": 0.5}], ["scale_by_param_block_rms", {"min_scale": 0.1}], ["scale_by_rss", {"initial_accumulator_value": 0.0, "eps": 1e-3}], ["scale", {"step_size": -0.01}]]}, seed=58)
case("chain", "decay_mask_lr_sched", {"links": [["add_decayed_weights", {"weight_decay": 0.2, "mask": M}], ["scale_by_lion", {"b1": 0.5, "b2": 0.9}], ["scale_by_learning_rate", {"learning_rate": cos(0.01)}]]}, seed=59)
case("chain", "rprop_transform", {"links": [["scale_by_rprop", {"learning_rate": 0.05, "eta_minus": 0.2, "max_step_size": 0.3}], ["scale", {"step_size": -1.0}]]}, seed=60)
case("chain", "sbl_noflip", {"links": [["scale_by_rms", {"decay": 0.5, "bias_correction": True}], ["scale_by_learning_rate", {"learning_rate": 0.01, "flip_sign": False}]]}, seed=61)
case("chain", "normalize_scalefactor", {"links": [["normalize_by_update_norm", {"scale_factor": 0.5, "eps": 1e-3}], ["scale", {"step_size": -0.1}]]}, seed=62)
case("chain", "agc_eps", {"links": [["adaptive_grad_clip", {"clipping": 0.05, "eps": 0.5}], ["scale", {"step_size": -0.1}]]}, seed=63)
if len(sys.argv) > 2 and sys.argv[2] == 'r2':
    pass
