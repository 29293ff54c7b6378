import sys, json, numpy as np, torch, pytorch_optimizer
from common import S, data, write
out = sys.argv[1]
ENUM = {}
def case(opt, name, hp, shapes=S, steps=10, seed=0, scale=1.0, groups=None, enums=None, pyhp=None, tol=(1e-3, 4e-6)):
    cid = f"po.{opt}.{name}"
    try:
        params, grads = data(shapes, steps, seed, scale)
        ps = [torch.nn.Parameter(torch.tensor(x)) for x in params]
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hp.items()}
        if pyhp: kw.update(pyhp)
        pg = [dict(params=[ps[i] for i in g['params']], **{k: (tuple(v) if isinstance(v, list) else v) for k, v in g['hparams'].items()}) for g in groups] if groups else ps
        o = pytorch_optimizer.load_optimizer(opt)(pg, **kw)
        expected = []
        for g in grads:
            for p, x in zip(ps, g): p.grad = torch.tensor(x)
            o.step()
            expected.append([p.detach().numpy().astype(np.float32).ravel().tolist() for p in ps])
        if any(not np.all(np.isfinite(np.array(sum(e, [])))) for e in expected):
            print("NONFINITE", cid); return
        extra = {}
        if groups: extra["param_groups"] = groups
        if enums: extra["enums"] = enums
        write(out, cid, f"pytorch_optimizer 4.1.0 (torch {torch.__version__})", opt, hp, shapes, steps, params, grads, expected, extra=extra, tol=tol)
    except Exception as e:
        print("GENFAIL", cid, repr(e)[:300])
G = lambda h0, h1: [{"params": [0, 2], "hparams": h0}, {"params": [1], "hparams": h1}]
M2 = [(5, 3), (4, 6), (3, 3)]
case("adabelief", "l2_fixed_rectify_nosgd", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": False, "rectify": True, "degenerated_to_sgd": False, "n_sma_threshold": 4}, steps=12, seed=1)
case("adabelief", "ams_max_fixed", {"lr": 0.02, "weight_decay": 0.1, "fixed_decay": True, "ams_bound": True, "maximize": True}, seed=2)
case("adabelief", "adanorm_debias", {"lr": 0.02, "adanorm": True, "adanorm_r": 0.9, "adam_debias": True}, seed=3)
case("adabound", "l2_ams_max", {"lr": 0.02, "final_lr": 0.05, "gamma": 0.1, "weight_decay": 0.1, "weight_decouple": False, "ams_bound": True, "maximize": True}, seed=4)
case("adabound", "debias_fixed", {"lr": 0.02, "adam_debias": True, "weight_decay": 0.1, "fixed_decay": True}, seed=5)
case("adafactor", "betas1_wd_l2_ams", {"lr": 0.02, "betas": [0.9, 0.999], "weight_decay": 0.1, "weight_decouple": False, "ams_bound": True, "relative_step": False, "scale_parameter": False}, seed=6)
case("adafactor", "no_b1_clip_max", {"lr": 0.02, "betas": [None, 0.999], "clip_threshold": 0.5, "maximize": True, "relative_step": False, "decay_rate": -0.5, "eps1": 1e-3}, seed=7)
case("adafactor", "cautious_fixed", {"lr": 0.02, "cautious": True, "weight_decay": 0.1, "fixed_decay": True, "relative_step": False}, seed=8)
case("adamp", "nesterov_l2_max", {"lr": 0.02, "nesterov": True, "weight_decay": 0.1, "weight_decouple": False, "maximize": True, "delta": 0.5, "wd_ratio": 0.5}, seed=9)
case("adamp", "cautious_gc_adanorm", {"lr": 0.02, "cautious": True, "use_gc": True, "adanorm": True, "adam_debias": True}, seed=10)
case("adan", "decouple_clip_max", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True, "max_grad_norm": 1.0, "maximize": True}, seed=11)
case("adan", "l2_adanorm_gc", {"lr": 0.02, "weight_decay": 0.1, "adanorm": True, "use_gc": True}, seed=12)
case("ademamix", "decouple_fixed_max", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True, "maximize": True, "alpha": 2.0}, seed=13)
case("ademamix", "cautious_stable", {"lr": 0.02, "cautious": True, "stable_adamw": True, "t_alpha_beta3": 6}, seed=14)
case("adopt", "decouple_max_cautious", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True, "maximize": True, "cautious": True}, seed=15)
case("adopt", "stable_l2", {"lr": 0.02, "weight_decay": 0.1, "stable_adamw": True}, seed=16)
case("aggmo", "l2_max_betas", {"lr": 0.02, "betas": [0.0, 0.5, 0.9, 0.99], "weight_decay": 0.1, "maximize": True}, seed=17)
case("aggmo", "decouple_fixed", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True}, seed=18)
case("came", "l2_ams_max", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": False, "ams_bound": True, "maximize": True, "clip_threshold": 0.5}, seed=19)
case("dadaptadam", "bc_decouple_max", {"lr": 1.0, "bias_correction": True, "weight_decay": 0.1, "weight_decouple": True, "maximize": True, "d0": 1e-3, "growth_rate": 2.0}, seed=20)
case("diffgrad", "rectify_ams_l2", {"lr": 0.02, "rectify": True, "ams_bound": True, "weight_decay": 0.1, "weight_decouple": False, "degenerated_to_sgd": False}, steps=12, seed=21)
case("diffgrad", "adanorm_debias_max", {"lr": 0.02, "adanorm": True, "adam_debias": True, "maximize": True}, seed=22)
case("lamb", "adam_prenorm_rectify", {"lr": 0.02, "adam": True, "pre_norm": True, "rectify": True, "max_grad_norm": 0.5, "grad_averaging": False}, steps=12, seed=23)
case("lamb", "l2_max_adanorm", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": False, "maximize": True, "adanorm": True, "adam_debias": True}, seed=24)
case("laprop", "centered_ams_l2", {"lr": 0.02, "centered": True, "steps_before_using_centered": 3, "ams_bound": True, "weight_decay": 0.1, "weight_decouple": False}, seed=25)
case("laprop", "cautious_max", {"lr": 0.02, "cautious": True, "maximize": True}, seed=26)
case("lion", "l2_max", {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": False, "maximize": True}, seed=27)
case("lion", "cautious_gc_adanorm", {"lr": 0.01, "cautious": True, "use_gc": True, "adanorm": True}, seed=28)
case("madgrad", "decouple_max_mom0", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True, "maximize": True, "momentum": 0.0}, seed=29)
case("mars", "lion_type", {"lr": 0.01, "mars_type": "lion", "optimize_1d": True}, seed=30)
case("mars", "shampoo_type", {"lr": 0.01, "mars_type": "shampoo"}, seed=31)
case("mars", "ams_cautious_max", {"lr": 0.01, "ams_bound": True, "cautious": True, "maximize": True, "weight_decay": 0.1, "optimize_1d": True, "weight_decay_1d": 0.2}, seed=32)
case("novograd", "grad_avg_l2_debias", {"lr": 0.02, "grad_averaging": True, "weight_decay": 0.1, "adam_debias": True}, seed=33)
case("novograd", "decouple_fixed_max", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True, "maximize": True}, seed=34)
case("prodigy", "beta3_bc_safeguard", {"lr": 1.0, "beta3": 0.9, "bias_correction": True, "safeguard_warmup": True, "d_coef": 2.0, "growth_rate": 2.0, "weight_decay": 0.1}, seed=35)
case("prodigy", "l2_max_fixed", {"lr": 1.0, "weight_decay": 0.1, "weight_decouple": False, "maximize": True}, seed=36)
case("qhadam", "nus_decouple_max", {"lr": 0.02, "nus": [0.7, 0.5], "weight_decay": 0.1, "weight_decouple": True, "maximize": True}, seed=37)
case("ranger", "nogc_degsgd_l2", {"lr": 0.02, "use_gc": False, "degenerated_to_sgd": True, "weight_decay": 0.1, "weight_decouple": False, "k": 3, "alpha": 0.3}, steps=12, seed=38)
case("ranger", "adanorm_debias_max", {"lr": 0.02, "adanorm": True, "adam_debias": True, "maximize": True, "n_sma_threshold": 4}, steps=12, seed=39)
case("ranger21", "no_sched_opts", {"num_iterations": 12, "lr": 0.01, "use_softplus": False, "disable_lr_scheduler": True, "centralize_gradients": False, "normalize_gradients": False, "lookahead_merge_time": 3, "weight_decay": 0.01, "norm_loss_factor": 0.01, "maximize": True}, steps=12, seed=40)
case("ranger21", "warm_fixed", {"num_iterations": 12, "lr": 0.01, "num_warm_up_iterations": 3, "num_warm_down_iterations": 4, "warm_down_min_lr": 1e-3, "fixed_decay": True, "adam_debias": True, "beta_softplus": 10.0}, steps=12, seed=41)
case("schedulefreeradam", "r_wd_nosilent", {"lr": 0.02, "r": 0.5, "weight_lr_power": 1.0, "silent_sgd_phase": False, "weight_decay": 0.1, "maximize": True}, steps=12, seed=42)
case("sgdp", "nesterov_l2_max", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "weight_decouple": False, "maximize": True, "delta": 0.5, "wd_ratio": 0.5}, seed=43)
case("sgdp", "damp_fixed", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1, "fixed_decay": True}, seed=44)
case("spam", "density_wd_max", {"lr": 0.02, "density": 0.5, "weight_decay": 0.1, "maximize": True, "warmup_epoch": 2, "threshold": 2.0, "update_proj_gap": 4}, seed=45)
case("stableadamw", "nokahan_l2_max", {"lr": 0.02, "kahan_sum": False, "weight_decay": 0.1, "weight_decouple": False, "maximize": True}, seed=46)
case("tiger", "l2_fixed_max", {"lr": 0.01, "weight_decay": 0.1, "weight_decouple": False, "maximize": True, "beta": 0.5}, seed=47)
case("tiger", "fixed", {"lr": 0.01, "weight_decay": 0.1, "fixed_decay": True}, seed=47)
case("yogi", "l2_max_debias", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": False, "maximize": True, "adam_debias": True, "initial_accumulator": 0.1}, seed=48)
case("yogi", "fixed", {"lr": 0.02, "weight_decay": 0.1, "fixed_decay": True}, seed=49)
case("shampoo", "mom_l2_max", {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.1, "weight_decouple": False, "maximize": True, "preconditioning_compute_steps": 3}, shapes=M2, seed=50)
case("shampoo", "decouple_fixed", {"lr": 0.02, "weight_decay": 0.1, "weight_decouple": True, "fixed_decay": True}, shapes=M2, seed=51)
case("soap", "opts", {"lr": 0.01, "shampoo_beta": 0.8, "precondition_frequency": 3, "precondition_1d": True, "correct_bias": False, "normalize_gradient": True, "maximize": True}, shapes=M2, seed=52)
case("soap", "merge_maxdim", {"lr": 0.01, "merge_dims": True, "max_precondition_dim": 4, "precondition_frequency": 2}, shapes=[(5, 3), (4,), (2, 3, 2)], seed=53)
case("scion", "constraint_scale_wd", {"lr": 0.01, "constraint": True, "scale": 2.0, "weight_decay": 0.1, "momentum": 0.5, "maximize": True}, shapes=M2, seed=54)
case("adamuon", "opts", {"lr": 0.02, "use_adjusted_lr": False, "weight_decay": 0.1, "weight_decouple": False, "ns_steps": 3, "maximize": True}, shapes=M2, seed=55, groups=[{"params": [0, 1], "hparams": {"use_muon": True}}, {"params": [2], "hparams": {"use_muon": False, "lr": 0.01}}])
case("galore", "groups_proj", {"lr": 0.02, "weight_decay": 0.1, "maximize": True}, shapes=M2, seed=56, groups=[{"params": [0, 1], "hparams": {"rank": 2, "update_proj_gap": 50, "scale": 0.5, "projection_type": "std"}}, {"params": [2], "hparams": {}}])
case("scalableshampoo", "opts", {"lr": 0.02, "shape_interpretation": False, "start_preconditioning_step": 3, "preconditioning_compute_steps": 2, "moving_average_for_momentum": True, "nesterov": False, "decoupled_weight_decay": True, "weight_decay": 0.1, "block_size": 4}, shapes=M2, steps=10, seed=57)
case("lion", "groups_wd", {"lr": 0.01, "weight_decay": 0.1}, groups=G({"betas": [0.5, 0.9]}, {"weight_decouple": False, "lr": 0.02}), seed=58)
case("adabelief", "groups_rectify", {"lr": 0.02}, groups=G({"rectify": True}, {"weight_decay": 0.2, "fixed_decay": True}), steps=12, seed=59)
case("came", "groups", {"lr": 0.02}, groups=G({"betas": [0.8, 0.99, 0.999]}, {"weight_decay": 0.1, "ams_bound": True}), seed=60)
case("kron", "opts", {"lr": 0.01, "pre_conditioner_update_probability": 1.0, "weight_decay": 0.1, "momentum_into_precondition_update": False}, shapes=M2, seed=61)
# A parameter that no group names is never stepped, as in torch.
case("adan", "groups_partial", {"lr": 0.02, "weight_decay": 0.05}, groups=[{"params": [1, 2], "hparams": {}}], seed=90)
# AdaBound's step reads adam_debias from a parameter group (its constructor drops it).
case("adabound", "groups_debias", {"lr": 0.02, "final_lr": 0.1}, groups=G({"adam_debias": True}, {"gamma": 1e-2}), seed=91)
# A group's `maximize` is never read (the library steps with self.maximize, the constructor's).
case("novograd", "groups_maximize", {"lr": 0.02}, groups=G({"maximize": True}, {}), seed=92)
case("ademamix", "groups_maximize", {"lr": 0.02, "maximize": True}, groups=G({"maximize": False}, {}), seed=93)
case("soap", "groups_maximize", {"lr": 0.02, "precondition_frequency": 3}, shapes=[(3, 3), (2, 2), (4,)], groups=[{"params": [0, 1], "hparams": {"maximize": True}}, {"params": [2], "hparams": {}}], seed=94)
