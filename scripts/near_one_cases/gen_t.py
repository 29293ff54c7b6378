"""New torch.optim / pytorch_optimizer cases in the format of shared/reference (grads form).
usage: gen_t.py OUTDIR [filter]"""
import sys, os, json, numpy as np, torch, warnings, pytorch_optimizer
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_torch import compute
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
FILT = sys.argv[2] if len(sys.argv) > 2 else None
S = [(6, 4), (4,), (3, 2, 2)]
def data(shapes, steps, seed, scale=1.0, mode=None):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    pf = [1.0, 0.1, 3.0, 0.5, 2.0]
    grads = []
    for t in range(steps):
        sf = [1.0, 0.3, 2.0, 0.05, 1.0][t % 5]
        gs = []
        for i, s in enumerate(shapes):
            g = scale * pf[i % 5] * sf * rng.standard_normal(s)
            if mode == 'zeros':           # sprinkled exact zeros, and an all-zero step
                g = np.where(rng.random(s) < 0.3, 0.0, g)
                if t == 3: g = np.zeros(s)
            elif mode == 'wide':          # entries spanning many orders of magnitude
                g = g * 10.0 ** rng.uniform(-6, 3, s)
            elif mode == 'signflip':      # sign alternates each step
                g = np.abs(g) * (-1) ** t
            gs.append(np.asarray(g, np.float32))
        grads.append(gs)
    return params, grads
def case(lib, opt, name, hp, shapes=S, steps=12, seed=0, scale=1.0, mode=None, groups=None, tol=(1e-3, 4e-6), positive=False):
    cid = f"{lib}.{opt}.{name}"
    if FILT and FILT not in cid: return
    params, grads = data(shapes, steps, seed, scale, mode)
    if positive: params = [np.abs(p) for p in params]
    src = f"torch {torch.__version__} torch.optim" if lib == 'torch' else f"pytorch_optimizer 4.1.0 (torch {torch.__version__})"
    d = {"id": cid, "source": src, "optimizer": opt, "hparams": hp, "dtype": "float32", "steps": steps,
         "tolerance": {"rel": tol[0], "abs": tol[1]},
         "params": [{"shape": list(s), "init": np.asarray(x).ravel().tolist()} for s, x in zip(shapes, params)],
         "grads": [[np.asarray(x).ravel().tolist() for x in g] for g in grads]}
    if groups: d["param_groups"] = groups
    try:
        d["expected"] = compute(d)
    except Exception as e:
        print("GENFAIL", cid, repr(e)[:200]); return
    if not np.all(np.isfinite(np.concatenate([np.array(x) for x in d["expected"][-1]]))):
        print("NONFINITE", cid); return
    json.dump(d, open(f"{out}/{cid}.json", "w"))
T = lambda *a, **k: case('torch', *a, **k)
P = lambda *a, **k: case('po', *a, **k)
SC = [(), (1,), (1, 7), (7, 1)]            # scalar, 1-element, row, column
BIG = [(64, 48), (48,), (1, 33)]
M2 = [(5, 3), (4, 6), (3, 3)]
MB = [(40, 24), (24, 40), (1, 16), (16, 1)]
# ---- torch.optim
T("adam", "b2_9999", {"lr": 0.01, "betas": [0.9, 0.9999]}, seed=101, steps=20)
T("adam", "b2_99999", {"lr": 0.01, "betas": [0.9, 0.99999]}, seed=102, steps=20)
T("adam", "b1_0", {"lr": 0.01, "betas": [0.0, 0.999]}, seed=103)
T("adam", "eps_tiny", {"lr": 0.01, "eps": 1e-16}, seed=104, mode='zeros')
T("adam", "eps_huge", {"lr": 0.5, "eps": 10.0}, seed=105)
T("adam", "wd_big_ams_max", {"lr": 0.01, "weight_decay": 1.0, "amsgrad": True, "maximize": True, "foreach": True}, seed=106)
T("adam", "wd0_sc", {"lr": 0.01, "weight_decay": 0.0}, shapes=SC, seed=107)
T("adam", "wide", {"lr": 0.01}, seed=108, mode='wide')
T("adam", "tiny_grads", {"lr": 0.01}, seed=109, scale=1e-7)
T("adam", "huge_grads", {"lr": 0.01}, seed=110, scale=1e5)
T("adam", "big", {"lr": 0.003, "betas": [0.8, 0.99], "amsgrad": True}, shapes=BIG, seed=111)
T("adam", "fused", {"lr": 0.01, "fused": True, "weight_decay": 0.1}, seed=112)
T("adam", "decoupled_b2", {"lr": 0.01, "weight_decay": 0.5, "decoupled_weight_decay": True, "betas": [0.5, 0.99999]}, seed=113)
T("adam", "long", {"lr": 0.01}, seed=114, steps=60)
T("adamw", "wd0", {"lr": 0.01, "weight_decay": 0.0}, seed=121)
T("adamw", "wd_big", {"lr": 0.01, "weight_decay": 5.0}, seed=122)
T("adamw", "b2_99999_ams", {"lr": 0.01, "betas": [0.9, 0.99999], "amsgrad": True}, seed=123, steps=20)
T("adamw", "max_b1_0_sc", {"lr": 0.01, "betas": [0.0, 0.9], "maximize": True}, shapes=SC, seed=124)
T("adamw", "zeros", {"lr": 0.01}, seed=125, mode='zeros')
T("nadam", "md0", {"lr": 0.01, "momentum_decay": 0.0}, seed=131)
T("nadam", "md_big", {"lr": 0.01, "momentum_decay": 1.0}, seed=132)
T("nadam", "b2_99999_long", {"lr": 0.01, "betas": [0.9, 0.99999]}, seed=133, steps=40)
T("nadam", "b1_0", {"lr": 0.01, "betas": [0.0, 0.999], "weight_decay": 0.5}, seed=134)
T("nadam", "decoupled_max_sc", {"lr": 0.01, "weight_decay": 0.5, "decoupled_weight_decay": True, "maximize": True}, shapes=SC, seed=135)
T("radam", "b2_9999_long", {"lr": 0.01, "betas": [0.9, 0.9999]}, seed=141, steps=30)
T("radam", "b2_half", {"lr": 0.01, "betas": [0.9, 0.5]}, seed=142)
T("radam", "b2_9", {"lr": 0.01, "betas": [0.9, 0.9]}, seed=143, steps=20)
T("radam", "eps_huge_wd", {"lr": 0.01, "eps": 1.0, "weight_decay": 1.0}, seed=144, steps=15)
T("radam", "b1_0", {"lr": 0.01, "betas": [0.0, 0.99]}, seed=145, steps=15)
T("adamax", "b1_0", {"lr": 0.01, "betas": [0.0, 0.999]}, seed=151)
T("adamax", "eps_tiny_zeros", {"lr": 0.01, "eps": 1e-20}, seed=152, mode='zeros')
T("adamax", "b2_99999_max", {"lr": 0.01, "betas": [0.9, 0.99999], "maximize": True, "weight_decay": 0.5}, seed=153)
T("adamax", "wide", {"lr": 0.01}, seed=154, mode='wide')
T("adagrad", "lrdecay_big", {"lr": 0.1, "lr_decay": 1.0}, seed=161)
T("adagrad", "init_acc_big_eps0", {"lr": 0.1, "initial_accumulator_value": 10.0, "eps": 0.0}, seed=162)
T("adagrad", "zeros", {"lr": 0.1}, seed=163, mode='zeros')
T("adagrad", "wd_big_sc", {"lr": 0.1, "weight_decay": 2.0}, shapes=SC, seed=164)
T("adagrad", "fused", {"lr": 0.1, "fused": True}, seed=165)
T("adadelta", "rho_99999", {"lr": 1.0, "rho": 0.99999}, seed=171)
T("adadelta", "rho_0", {"lr": 1.0, "rho": 0.0}, seed=172)
T("adadelta", "eps_big", {"lr": 0.1, "eps": 1.0}, seed=173)
T("adadelta", "lr_big_wd", {"lr": 10.0, "weight_decay": 0.5, "maximize": True}, seed=174)
T("adadelta", "foreach", {"lr": 1.0, "foreach": True}, seed=175, mode='zeros')
T("rmsprop", "alpha_99999", {"lr": 0.001, "alpha": 0.99999}, seed=181)
T("rmsprop", "alpha_0", {"lr": 0.001, "alpha": 0.0, "eps": 1e-3}, seed=182)
T("rmsprop", "centered_mom_wd_max", {"lr": 0.001, "centered": True, "momentum": 0.99, "weight_decay": 1.0, "maximize": True}, seed=183)
T("rmsprop", "eps_huge", {"lr": 0.5, "eps": 10.0}, seed=184)
T("rmsprop", "centered_zeros", {"lr": 0.001, "centered": True}, seed=185, mode='zeros')
T("rmsprop", "mom_sc", {"lr": 0.001, "momentum": 0.5}, shapes=SC, seed=186)
T("rprop", "zeros", {"lr": 0.01}, seed=191, mode='zeros')
T("rprop", "signflip", {"lr": 0.01}, seed=192, mode='signflip')
T("rprop", "etas_extreme", {"lr": 0.01, "etas": [0.01, 10.0], "step_sizes": [1e-8, 100.0]}, seed=193, steps=20)
T("rprop", "max_sc", {"lr": 0.1, "maximize": True}, shapes=SC, seed=194)
T("rprop", "foreach", {"lr": 0.01, "foreach": True}, seed=195, mode='signflip')
T("sgd", "mom0_damp", {"lr": 0.1, "momentum": 0.0, "dampening": 0.5}, seed=201)
T("sgd", "damp1", {"lr": 0.1, "momentum": 0.9, "dampening": 1.0}, seed=202)
T("sgd", "nesterov_wd_big", {"lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 5.0}, seed=203)
T("sgd", "mom_max_sc", {"lr": 0.1, "momentum": 0.9, "maximize": True, "foreach": False}, shapes=SC, seed=204)
T("sgd", "zeros_mom", {"lr": 0.1, "momentum": 0.9}, seed=205, mode='zeros')
T("sgd", "fused", {"lr": 0.1, "momentum": 0.9, "fused": True}, seed=206)
T("sgd", "lr_tiny_huge_grads", {"lr": 1e-6, "momentum": 0.5}, seed=207, scale=1e4)
T("asgd", "t0_5_long", {"lr": 0.05, "t0": 5.0}, seed=211, steps=25)
T("asgd", "lambd_big", {"lr": 0.05, "lambd": 1.0, "alpha": 0.75, "t0": 2.0}, seed=212, steps=15)
T("asgd", "alpha_0", {"lr": 0.05, "alpha": 0.0, "t0": 0.0, "weight_decay": 0.5}, seed=213, steps=15)
T("asgd", "max_sc", {"lr": 0.05, "maximize": True, "t0": 1.0}, shapes=SC, seed=214, steps=15)
T("adafactor", "sc", {"lr": 0.01}, shapes=SC, seed=221)
T("adafactor", "big", {"lr": 0.01}, shapes=BIG, seed=222)
T("adafactor", "beta2_decay_m1", {"lr": 0.01, "beta2_decay": -1.0}, seed=223)
T("adafactor", "beta2_decay_m01", {"lr": 0.01, "beta2_decay": -0.1}, seed=224)
T("adafactor", "eps1_none", {"lr": 0.01, "eps": [None, 1e-3]}, seed=225)
T("adafactor", "d_small_wd", {"lr": 0.01, "d": 0.1, "weight_decay": 1.0}, seed=226)
T("adafactor", "zeros", {"lr": 0.01}, seed=227, mode='zeros')
T("adafactor", "3d_4d", {"lr": 0.01}, shapes=[(2, 3, 4), (2, 1, 3, 2), (5, 1)], seed=228)
T("muon", "big", {"lr": 0.02}, shapes=[(64, 32), (32, 64), (1, 16), (16, 1)], seed=231, tol=(3e-2, 4e-6))
T("muon", "orig_nesterov_wd", {"lr": 0.02, "adjust_lr_fn": "original", "weight_decay": 0.5, "momentum": 0.5}, shapes=M2, seed=232, tol=(3e-2, 4e-6))
T("muon", "match_rms_mom0", {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw", "momentum": 0.0}, shapes=M2, seed=233, tol=(3e-2, 4e-6))
T("muon", "nsteps1", {"lr": 0.02, "ns_steps": 1}, shapes=M2, seed=234, tol=(3e-2, 4e-6))
T("muon", "zeros", {"lr": 0.02}, shapes=M2, seed=235, mode='zeros', tol=(3e-2, 4e-6))
T("sparseadam", "b2_9999", {"lr": 0.01, "betas": [0.5, 0.9999]}, shapes=[(8, 3), (5,)], seed=241, mode='zeros')
