"""Record learning-rate schedule cases from torch 2.15 / optax 0.2.8 with unusual kwargs.

Run twice (OUT defaults to this folder):
  python gen_sched.py torch [OUT]   (with torch 2.15)
  python gen_sched.py optax [OUT]   (with optax 0.2.8)
Valid cases -> OUT/cases/<id>.json ; cases the library refused (raised) -> OUT/invalid/<id>.json
(with an "error" field and no expected_lr), for checking descent's acceptance.

Convention (as shared/reference): torch: SGD(lr=base_lr) on one parameter, record
param_groups[0]['lr'] before each scheduler.step() (step(metrics[t]) for ReduceLROnPlateau),
steps calls in all; optax: schedule(count) for int32 count 0..steps-1, float32 results.
"""
import json
import math
import os
import sys
import traceback

HERE = sys.argv[2]
CASES = os.path.join(HERE, "cases")
INVALID = os.path.join(HERE, "invalid")
os.makedirs(CASES, exist_ok=True)
os.makedirs(INVALID, exist_ok=True)


def write(case, error=None):
    d = INVALID if error is not None else CASES
    if error is not None:
        case = dict(case)
        case.pop("expected_lr", None)
        case["error"] = error
    elif not all(math.isfinite(v) for v in case["expected_lr"]):
        case = dict(case)
        case["error"] = "non-finite expected values: " + repr(case["expected_lr"][:3])
        case.pop("expected_lr")
        d = INVALID
    with open(os.path.join(d, case["id"] + ".json"), "w") as f:
        json.dump(case, f, indent=1)
    print(("INVALID " if d == INVALID else "ok      ") + case["id"] + ("" if d == CASES else "  " + case["error"][:150]))


# ----------------------------------------------------------------------------------------- torch
def torch_cases():
    import torch
    from torch.optim import lr_scheduler as L
    import numpy as np

    ver = "torch " + torch.__version__

    def build(opt, name, kw):
        kw = dict(kw)
        if name in ("SequentialLR", "ChainedScheduler"):
            subs = [build(opt, n, k) for n, k in kw.pop("schedulers")]
            if name == "SequentialLR":
                return L.SequentialLR(opt, subs, **kw)
            return L.ChainedScheduler(subs, **kw)
        return getattr(L, name)(opt, **kw)

    def case(cid, name, kwargs, steps, base_lr=0.1, metrics=None):
        c = {"id": "torch." + cid, "source": f"{ver} torch.optim.lr_scheduler.{name}", "schedule": name,
             "base_lr": base_lr, "kwargs": kwargs, "steps": steps}
        if metrics is not None:
            c["metrics"] = [float(m) for m in metrics]
        try:
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=base_lr)
            s = build(opt, name, kwargs)
            lrs = []
            for t in range(steps):
                lr = opt.param_groups[0]["lr"]
                lrs.append(float(lr))
                opt.step()
                try:
                    if metrics is not None:
                        s.step(metrics[t])
                    else:
                        s.step()
                except Exception as e:
                    if t != steps - 1:
                        raise
                    # the step() after the last recorded rate raised: every recorded rate stands
                    c["note"] = f"torch raised on the step() after the last recorded rate: {type(e).__name__}: {e}"
            c["expected_lr"] = lrs
            write(c)
        except Exception as e:  # the library refused
            write(c, error=f"{type(e).__name__}: {e}")


    import random
    R = random.Random(7)
    case("h_cos_long", "CosineAnnealingLR", {"T_max": 1000, "eta_min": 1e-5}, 1200, base_lr=0.3)
    case("h_cos_tmax3", "CosineAnnealingLR", {"T_max": 3, "eta_min": 0.0}, 30, base_lr=1.0)
    case("h_exp_long", "ExponentialLR", {"gamma": 0.999}, 2000, base_lr=0.1)
    case("h_exp_9999", "ExponentialLR", {"gamma": 0.9999}, 1500, base_lr=1.0)
    case("h_step_1", "StepLR", {"step_size": 1, "gamma": 0.99}, 500)
    case("h_poly_long", "PolynomialLR", {"total_iters": 300, "power": 0.5}, 400)
    case("h_poly_1", "PolynomialLR", {"total_iters": 1, "power": 3.0}, 10)
    case("h_linear_long", "LinearLR", {"start_factor": 1e-3, "end_factor": 1.0, "total_iters": 500}, 600)
    case("h_linear_down", "LinearLR", {"start_factor": 1.0, "end_factor": 0.01, "total_iters": 7}, 20)
    case("h_const_1", "ConstantLR", {"factor": 0.5, "total_iters": 1}, 5)
    case("h_const_0", "ConstantLR", {"factor": 0.5, "total_iters": 0}, 5)
    case("h_cawr_t1", "CosineAnnealingWarmRestarts", {"T_0": 1, "T_mult": 1, "eta_min": 0.01}, 20)
    case("h_cawr_long", "CosineAnnealingWarmRestarts", {"T_0": 7, "T_mult": 3, "eta_min": 1e-4}, 800)
    case("h_cyc_tri", "CyclicLR", {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 3, "step_size_down": 7}, 100)
    case("h_cyc_tri_1", "CyclicLR", {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 1}, 20)
    case("h_cyc_exp_long", "CyclicLR", {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 50, "mode": "exp_range", "gamma": 0.9999}, 1000)
    case("h_cyc_tri2_long", "CyclicLR", {"base_lr": 0.0, "max_lr": 1.0, "step_size_up": 2, "step_size_down": 5, "mode": "triangular2"}, 200)
    case("h_cyc_nomom", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.2, "step_size_up": 4, "cycle_momentum": False}, 40)
    case("h_onecycle_small", "OneCycleLR", {"max_lr": 1.0, "total_steps": 10}, 10)
    case("h_onecycle_pct", "OneCycleLR", {"max_lr": 0.3, "total_steps": 1000, "pct_start": 0.05, "div_factor": 10.0, "final_div_factor": 1e6}, 1000)
    case("h_onecycle_epochs", "OneCycleLR", {"max_lr": 0.3, "epochs": 7, "steps_per_epoch": 13, "anneal_strategy": "linear"}, 91)
    case("h_onecycle_3p_cos", "OneCycleLR", {"max_lr": 0.3, "total_steps": 57, "three_phase": True, "pct_start": 0.4}, 57)
    case("h_multistep_long", "MultiStepLR", {"milestones": [1, 2, 3, 500], "gamma": 0.9}, 600)
    case("h_rop_max_abs", "ReduceLROnPlateau", {"mode": "max", "factor": 0.3, "patience": 2, "threshold": 0.01, "threshold_mode": "abs", "cooldown": 2, "min_lr": 0.001}, 80, metrics=[R.random() for _ in range(80)])
    case("h_rop_rel_eps", "ReduceLROnPlateau", {"factor": 0.9, "patience": 0, "threshold": 0.0, "eps": 0.01}, 100, metrics=[1.0 - 0.001 * t + 0.01 * R.random() for t in range(100)])
    case("h_rop_min_abs", "ReduceLROnPlateau", {"factor": 0.1, "patience": 5, "threshold": 0.1, "threshold_mode": "abs", "min_lr": 1e-5}, 120, metrics=[1.0 / (1 + t) for t in range(120)])
    case("h_rop_max_rel_cool", "ReduceLROnPlateau", {"mode": "max", "factor": 0.5, "patience": 1, "threshold": 0.05, "cooldown": 5}, 100, metrics=[R.random() * (1 + 0.01 * t) for t in range(100)])
    case("h_seq_warm_cos", "SequentialLR", {"schedulers": [["LinearLR", {"start_factor": 0.01, "total_iters": 5}], ["CosineAnnealingLR", {"T_max": 50}]], "milestones": [5]}, 60)
    case("h_seq_three", "SequentialLR", {"schedulers": [["ConstantLR", {"factor": 0.1, "total_iters": 3}], ["ExponentialLR", {"gamma": 0.9}], ["StepLR", {"step_size": 4, "gamma": 0.5}]], "milestones": [3, 10]}, 40)
    case("h_chain", "ChainedScheduler", {"schedulers": [["ExponentialLR", {"gamma": 0.95}], ["StepLR", {"step_size": 6, "gamma": 0.5}], ["LinearLR", {"start_factor": 0.2, "total_iters": 8}]]}, 50)


def optax_cases():
    import jax
    import jax.numpy as jnp
    import optax

    ver = "optax " + optax.__version__

    def build(name, kw):
        kw = dict(kw)
        if name == "join_schedules":
            return optax.join_schedules([build(n, k) for n, k in kw["schedules"]], kw["boundaries"])
        if "boundaries_and_scales" in kw and kw["boundaries_and_scales"] is not None:
            kw["boundaries_and_scales"] = {int(b): s for b, s in kw["boundaries_and_scales"].items()}
        return getattr(optax, name)(**kw)

    def case(cid, name, kwargs, steps):
        c = {"id": "optax." + cid, "source": f"{ver} optax.{name}", "schedule": name, "kwargs": kwargs, "steps": steps}
        try:
            f = build(name, kwargs)
            c["expected_lr"] = [float(jnp.asarray(f(jnp.asarray(t, dtype=jnp.int32)), dtype=jnp.float32)) for t in range(steps)]
            write(c)
        except Exception as e:
            write(c, error=f"{type(e).__name__}: {e}")


    case("h_wcos_w0", "warmup_cosine_decay_schedule", {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 0, "decay_steps": 50, "end_value": 0.001}, 60)
    case("h_wcos_exp", "warmup_cosine_decay_schedule", {"init_value": 0.01, "peak_value": 0.1, "warmup_steps": 5, "decay_steps": 40, "end_value": 0.0, "exponent": 2.0}, 50)
    case("h_wcos_d1", "warmup_cosine_decay_schedule", {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 1, "decay_steps": 2, "end_value": 0.01}, 6)
    case("h_wexp_w0_stair", "warmup_exponential_decay_schedule", {"init_value": 0.1, "peak_value": 0.1, "warmup_steps": 0, "transition_steps": 3, "decay_rate": 0.5, "staircase": True, "end_value": 0.01}, 40)
    case("h_wexp_begin", "warmup_exponential_decay_schedule", {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 4, "transition_steps": 2, "decay_rate": 0.9, "transition_begin": 6}, 40)
    case("h_wexp_grow", "warmup_exponential_decay_schedule", {"init_value": 0.0, "peak_value": 0.01, "warmup_steps": 4, "transition_steps": 2, "decay_rate": 1.5, "end_value": 1.0}, 40)
    case("h_cos_d1", "cosine_decay_schedule", {"init_value": 0.1, "decay_steps": 1, "alpha": 0.5}, 5)
    case("h_cos_exp_long", "cosine_decay_schedule", {"init_value": 0.1, "decay_steps": 1000, "alpha": 0.01, "exponent": 0.5}, 1100)
    case("h_exp_long", "exponential_decay", {"init_value": 1.0, "transition_steps": 1, "decay_rate": 0.999}, 3000)
    case("h_exp_stair_long", "exponential_decay", {"init_value": 0.1, "transition_steps": 7, "decay_rate": 0.93, "staircase": True, "transition_begin": 3}, 300)
    case("h_exp_grow_end", "exponential_decay", {"init_value": 0.01, "transition_steps": 2, "decay_rate": 1.2, "end_value": 0.5}, 60)
    case("h_lin_onecycle", "linear_onecycle_schedule", {"transition_steps": 37, "peak_value": 0.5, "pct_start": 0.1, "pct_final": 0.6, "div_factor": 5.0, "final_div_factor": 100.0}, 45)
    case("h_cos_onecycle", "cosine_onecycle_schedule", {"transition_steps": 53, "peak_value": 0.5, "pct_start": 0.5, "div_factor": 2.0, "final_div_factor": 1e5}, 60)
    case("h_cos_onecycle_long", "cosine_onecycle_schedule", {"transition_steps": 1000, "peak_value": 0.1}, 1000)
    case("h_poly_long", "polynomial_schedule", {"init_value": 0.1, "end_value": 0.0, "power": 0.7, "transition_steps": 999}, 1000)
    case("h_lin_long", "linear_schedule", {"init_value": 1e-4, "end_value": 0.3, "transition_steps": 777, "transition_begin": 11}, 900)
    case("h_pc_many", "piecewise_constant_schedule", {"init_value": 1.0, "boundaries_and_scales": {str(i * 7): 0.97 for i in range(1, 60)}}, 450)
    case("h_join", "join_schedules", {"schedules": [["linear_schedule", {"init_value": 0.0, "end_value": 0.1, "transition_steps": 5}], ["cosine_decay_schedule", {"init_value": 0.1, "decay_steps": 20}], ["constant_schedule", {"value": 0.003}]], "boundaries": [5, 25]}, 40)
    case("h_warm_const", "warmup_constant_schedule", {"init_value": 0.001, "peak_value": 0.1, "warmup_steps": 13}, 30)
    case("h_warm_const0", "warmup_constant_schedule", {"init_value": 0.001, "peak_value": 0.1, "warmup_steps": 0}, 5)

import sys as _s
if _s.argv[1] == "torch": torch_cases()
else: optax_cases()
