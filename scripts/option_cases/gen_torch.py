import sys, json, numpy as np, torch
from common import S, data, write
out = sys.argv[1]
CLS = {c.lower(): c for c in ['SGD','Adam','AdamW','Adagrad','RMSprop','Adadelta','Adamax','NAdam','RAdam','Rprop','ASGD','Adafactor','Muon']}
def case(opt, name, hp, shapes=S, steps=10, seed=0, scale=1.0, groups=None):
    cid = f"torch.{opt}.{name}"
    try:
        params, grads = data(shapes, steps, seed, scale)
        ps = [torch.nn.Parameter(torch.tensor(x)) for x in params]
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hp.items()}
        if groups:
            pg = [dict(params=[ps[i] for i in g['params']], **{k: (tuple(v) if isinstance(v, list) else v) for k, v in g['hparams'].items()}) for g in groups]
        else:
            pg = ps
        o = getattr(torch.optim, CLS[opt])(pg, **kw)
        expected = []
        for g in grads:
            for p, x in zip(ps, g): p.grad = torch.tensor(x)
            o.step()
            expected.append([p.detach().numpy().astype(np.float32).ravel().tolist() for p in ps])
        write(out, cid, f"torch {torch.__version__} torch.optim.{CLS[opt]}", opt, hp, shapes, steps, params, grads, expected,
              extra={"param_groups": groups} if groups else None)
    except Exception as e:
        print("GENFAIL", cid, repr(e)[:300])
G = lambda h0, h1: [{"params": [0, 2], "hparams": h0}, {"params": [1], "hparams": h1}]
case("sgd", "max_nesterov_wd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "maximize": True, "foreach": True}, seed=1)
case("sgd", "groups_momentum", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5}, groups=G({}, {"momentum": 0.0, "lr": 0.2, "weight_decay": 0.3}), seed=2)
case("adam", "max_ams_wd_b1zero", {"lr": 0.02, "betas": [0.0, 0.99], "weight_decay": 0.1, "amsgrad": True, "maximize": True, "foreach": False}, seed=3)
case("adam", "decoupled", {"lr": 0.02, "weight_decay": 0.2, "decoupled_weight_decay": True, "amsgrad": True}, seed=4)
case("adamw", "max_groups", {"lr": 0.02, "weight_decay": 0.2, "maximize": True}, groups=G({"amsgrad": True}, {"betas": [0.5, 0.9], "eps": 1e-3}), seed=5)
case("adamw", "decoupled_false", {"lr": 0.02, "weight_decay": 0.2, "decoupled_weight_decay": False}, seed=5)
case("adagrad", "lrdecay_init_max", {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.5, "weight_decay": 0.1, "maximize": True, "eps": 1e-3}, seed=6)
case("rmsprop", "mom_wd_max", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1, "maximize": True, "alpha": 0.9}, seed=7)
case("rmsprop", "centered_wd_groups", {"lr": 0.01, "centered": True, "weight_decay": 0.1}, groups=G({"momentum": 0.5}, {"alpha": 0.5, "centered": False}), seed=8)
case("adadelta", "wd_max_rho", {"lr": 0.5, "rho": 0.5, "weight_decay": 0.1, "maximize": True, "eps": 1e-4}, seed=9)
case("adamax", "wd_max", {"lr": 0.02, "weight_decay": 0.1, "maximize": True, "betas": [0.5, 0.9]}, seed=10)
case("nadam", "md_l2_max", {"lr": 0.02, "momentum_decay": 0.1, "weight_decay": 0.1, "maximize": True}, seed=11)
case("nadam", "md_decoupled", {"lr": 0.02, "momentum_decay": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "betas": [0.8, 0.95]}, seed=12)
case("radam", "l2_max", {"lr": 0.02, "weight_decay": 0.1, "maximize": True, "betas": [0.5, 0.9]}, steps=12, seed=13)
case("radam", "decoupled_max", {"lr": 0.02, "weight_decay": 0.1, "maximize": True, "decoupled_weight_decay": True}, steps=12, seed=14)
case("rprop", "etas_sizes_max", {"lr": 0.05, "etas": [0.3, 1.5], "step_sizes": [1e-3, 0.2], "maximize": True}, seed=15)
case("asgd", "t0_small", {"lr": 0.05, "lambd": 0.01, "alpha": 0.5, "t0": 3.0, "weight_decay": 0.1, "maximize": True}, steps=12, seed=16)
case("adafactor", "eps1_d_wd_max", {"lr": 0.02, "eps": [1e-3, 1e-2], "d": 0.5, "weight_decay": 0.1, "maximize": True, "beta2_decay": -0.5}, seed=17)
case("adafactor", "groups", {"lr": 0.02}, groups=G({"weight_decay": 0.2}, {"lr": 0.05, "d": 2.0}), seed=18)
M2 = [(5, 3), (4, 6), (3, 3)]
case("muon", "match_rms", {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.05, "nesterov": False, "momentum": 0.8}, shapes=M2, seed=19)
case("muon", "coeffs_steps_eps", {"lr": 0.02, "ns_coefficients": [2.0, -1.5, 0.5], "ns_steps": 3, "eps": 1e-3}, shapes=M2, seed=20)
case("sgd", "nesterov_damp", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "dampening": 0.1}, seed=21)
case("adagrad", "groups_lrdecay", {"lr": 0.1}, groups=G({"lr_decay": 0.5}, {"initial_accumulator_value": 1.0}), seed=22)
case("asgd", "t0_zero_groups", {"lr": 0.05, "t0": 0.0}, groups=G({"lambd": 0.1}, {"alpha": 1.0}), steps=12, seed=23)
# Parameters that no group names are never stepped (torch leaves them as they are).
case("sgd", "groups_partial", {"lr": 0.05, "momentum": 0.9}, groups=[{"params": [0, 2], "hparams": {}}], seed=24)
case("adam", "groups_partial", {"lr": 0.02, "weight_decay": 0.1}, groups=[{"params": [2], "hparams": {"lr": 0.05}}, {"params": [0], "hparams": {"amsgrad": True}}], seed=25)
