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

HERE = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
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

    # StepLR
    case("x_step_gamma_gt1", "StepLR", {"step_size": 7, "gamma": 1.5}, 60, base_lr=0.01)
    case("x_step_large_base", "StepLR", {"step_size": 3, "gamma": 0.9}, 100, base_lr=1e4)
    case("x_step_base0", "StepLR", {"step_size": 2, "gamma": 0.5}, 20, base_lr=0.0)
    case("x_step_gamma0", "StepLR", {"step_size": 5, "gamma": 0.0}, 20)
    case("x_step_size1", "StepLR", {"step_size": 1, "gamma": 0.97}, 120, base_lr=3.0)
    case("x_step_size0", "StepLR", {"step_size": 0}, 5)
    # MultiStepLR
    case("x_multistep_unsorted", "MultiStepLR", {"milestones": [50, 10, 30], "gamma": 0.5}, 70)
    case("x_multistep_dup_zero", "MultiStepLR", {"milestones": [10, 10, 20, 0], "gamma": 0.3}, 30)
    case("x_multistep_empty", "MultiStepLR", {"milestones": [], "gamma": 0.1}, 10)
    case("x_multistep_gamma2", "MultiStepLR", {"milestones": [5, 15, 15], "gamma": 2.0}, 30, base_lr=1e3)
    case("x_multistep_negative", "MultiStepLR", {"milestones": [-3, 4], "gamma": 0.5}, 10)
    # ExponentialLR
    case("x_exp_growth_large", "ExponentialLR", {"gamma": 1.05}, 150, base_lr=100.0)
    case("x_exp_big_base", "ExponentialLR", {"gamma": 0.5}, 50, base_lr=1e6)
    case("x_exp_gamma1", "ExponentialLR", {"gamma": 1.0}, 10)
    case("x_exp_gamma0", "ExponentialLR", {"gamma": 0.0}, 10)
    # CosineAnnealingLR
    case("x_cos_past_tmax_eta", "CosineAnnealingLR", {"T_max": 10, "eta_min": 0.01}, 100)
    case("x_cos_tmax1", "CosineAnnealingLR", {"T_max": 1}, 10)
    case("x_cos_eta_above_base", "CosineAnnealingLR", {"T_max": 7, "eta_min": 0.05}, 40, base_lr=0.01)
    case("x_cos_large", "CosineAnnealingLR", {"T_max": 13, "eta_min": 1.0}, 100, base_lr=1000.0)
    case("x_cos_base0", "CosineAnnealingLR", {"T_max": 5, "eta_min": 0.1}, 30, base_lr=0.0)
    # CosineAnnealingWarmRestarts
    case("x_cawr_tmult3", "CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 3, "eta_min": 0.001}, 120)
    case("x_cawr_t0_1_tmult2", "CosineAnnealingWarmRestarts", {"T_0": 1, "T_mult": 2}, 70)
    case("x_cawr_eta_above", "CosineAnnealingWarmRestarts", {"T_0": 5, "eta_min": 0.05}, 30, base_lr=0.02)
    case("x_cawr_large", "CosineAnnealingWarmRestarts", {"T_0": 6, "T_mult": 2, "eta_min": 10.0}, 100, base_lr=5e3)
    # LinearLR
    case("x_linear_to_zero", "LinearLR", {"start_factor": 1.0, "end_factor": 0.0, "total_iters": 10}, 30)
    case("x_linear_small_start", "LinearLR", {"start_factor": 0.001, "end_factor": 0.5, "total_iters": 37}, 60)
    case("x_linear_total0", "LinearLR", {"start_factor": 0.25, "total_iters": 0}, 10)
    case("x_linear_flat", "LinearLR", {"start_factor": 0.5, "end_factor": 0.5, "total_iters": 5}, 10)
    case("x_linear_total1", "LinearLR", {"start_factor": 0.2, "end_factor": 1.0, "total_iters": 1}, 5)
    case("x_linear_decreasing_large", "LinearLR", {"start_factor": 0.9, "end_factor": 0.05, "total_iters": 80}, 100, base_lr=2e3)
    # ConstantLR
    case("x_const_factor0", "ConstantLR", {"factor": 0.0, "total_iters": 5}, 10)
    case("x_const_factor1", "ConstantLR", {"factor": 1.0, "total_iters": 3}, 10)
    case("x_const_total0", "ConstantLR", {"factor": 0.5, "total_iters": 0}, 10)
    case("x_const_long", "ConstantLR", {"factor": 0.1, "total_iters": 200}, 50)
    case("x_const_total1", "ConstantLR", {"factor": 0.3, "total_iters": 1}, 5)
    # PolynomialLR
    case("x_poly_sqrt", "PolynomialLR", {"total_iters": 10, "power": 0.5}, 30)
    case("x_poly_total0", "PolynomialLR", {"total_iters": 0, "power": 2.0}, 10)
    case("x_poly_power0", "PolynomialLR", {"total_iters": 10, "power": 0.0}, 20)
    case("x_poly_big", "PolynomialLR", {"total_iters": 50, "power": 3.7}, 100, base_lr=10.0)
    case("x_poly_neg_power", "PolynomialLR", {"total_iters": 5, "power": -1.0}, 10)
    # OneCycleLR
    case("x_onecycle_linear_divs", "OneCycleLR", {"max_lr": 1.0, "total_steps": 50, "pct_start": 0.1, "anneal_strategy": "linear", "div_factor": 10.0, "final_div_factor": 100.0}, 50)
    case("x_onecycle_cos_three", "OneCycleLR", {"max_lr": 0.5, "total_steps": 60, "pct_start": 0.4, "three_phase": True}, 60)
    case("x_onecycle_pct0", "OneCycleLR", {"max_lr": 0.5, "total_steps": 20, "pct_start": 0.0}, 20)
    case("x_onecycle_pct1_linear", "OneCycleLR", {"max_lr": 0.5, "total_steps": 20, "pct_start": 1.0, "anneal_strategy": "linear"}, 20)
    case("x_onecycle_three_pct06", "OneCycleLR", {"max_lr": 0.3, "total_steps": 40, "pct_start": 0.6, "three_phase": True, "anneal_strategy": "linear"}, 40)
    case("x_onecycle_epochs", "OneCycleLR", {"max_lr": 2.0, "epochs": 4, "steps_per_epoch": 10}, 40)
    case("x_onecycle_div1", "OneCycleLR", {"max_lr": 0.2, "total_steps": 30, "div_factor": 1.0, "final_div_factor": 1.0}, 30)
    case("x_onecycle_nomom", "OneCycleLR", {"max_lr": 0.2, "total_steps": 30, "cycle_momentum": False, "base_momentum": 0.5, "max_momentum": 0.6}, 30)
    case("x_onecycle_total1", "OneCycleLR", {"max_lr": 0.2, "total_steps": 1}, 1)
    case("x_onecycle_total2_three", "OneCycleLR", {"max_lr": 0.2, "total_steps": 2, "three_phase": True}, 2)
    case("x_onecycle_total_and_epochs", "OneCycleLR", {"max_lr": 0.2, "total_steps": 25, "epochs": 3, "steps_per_epoch": 5, "anneal_strategy": "linear"}, 25)
    case("x_onecycle_div0", "OneCycleLR", {"max_lr": 0.2, "total_steps": 10, "div_factor": 0.0}, 10)
    case("x_onecycle_fdiv0", "OneCycleLR", {"max_lr": 0.2, "total_steps": 10, "final_div_factor": 0.0}, 10)
    case("x_onecycle_pct_int", "OneCycleLR", {"max_lr": 0.2, "total_steps": 10, "pct_start": 1}, 10)
    # CyclicLR
    case("x_cyclic_tri_asym", "CyclicLR", {"base_lr": 0.001, "max_lr": 0.1, "step_size_up": 3, "step_size_down": 7}, 50)
    case("x_cyclic_tri2_asym", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "step_size_down": 1, "mode": "triangular2"}, 40)
    case("x_cyclic_exp_down", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5, "step_size_down": 2, "mode": "exp_range", "gamma": 0.9}, 50)
    case("x_cyclic_exp_growth", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3, "mode": "exp_range", "gamma": 1.02}, 100)
    case("x_cyclic_inverted", "CyclicLR", {"base_lr": 0.1, "max_lr": 0.01, "step_size_up": 4}, 30)
    case("x_cyclic_down0", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "step_size_down": 0}, 20)
    case("x_cyclic_up0", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0, "step_size_down": 4}, 20)
    case("x_cyclic_ignored_args", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3, "gamma": 0.5, "scale_mode": "iterations"}, 20)
    case("x_cyclic_nomom", "CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2, "cycle_momentum": False, "base_momentum": 0.1, "max_momentum": 0.2}, 20)
    case("x_cyclic_large", "CyclicLR", {"base_lr": 100.0, "max_lr": 1e4, "step_size_up": 7, "step_size_down": 3, "mode": "triangular2"}, 60, base_lr=1.0)
    # ReduceLROnPlateau
    rng = np.random.default_rng(7)
    noisy = (1.0 / (1 + 0.1 * np.arange(80)) + 0.05 * rng.standard_normal(80)).tolist()
    acc = (np.minimum(0.9, 0.3 + 0.01 * np.arange(80)) + 0.02 * rng.standard_normal(80)).tolist()
    case("x_plateau_max_abs", "ReduceLROnPlateau", {"mode": "max", "threshold_mode": "abs", "threshold": 0.05, "patience": 2, "factor": 0.5}, 80, metrics=acc)
    case("x_plateau_min_rel_cooldown", "ReduceLROnPlateau", {"cooldown": 3, "patience": 0, "min_lr": 0.01, "factor": 0.3}, 80, metrics=noisy)
    case("x_plateau_eps", "ReduceLROnPlateau", {"eps": 0.02, "factor": 0.5, "patience": 1}, 80, metrics=noisy)
    case("x_plateau_negative_metrics", "ReduceLROnPlateau", {"threshold": 0.1, "patience": 1, "factor": 0.5}, 80, metrics=[-m for m in noisy])
    case("x_plateau_factor0", "ReduceLROnPlateau", {"factor": 0.0, "patience": 0}, 20, metrics=[1.0] * 20)
    case("x_plateau_abs_const", "ReduceLROnPlateau", {"threshold_mode": "abs", "threshold": 0.0, "patience": 2, "factor": 0.7, "cooldown": 1}, 40, metrics=[1.0] * 40)
    case("x_plateau_max_rel_cd_minlr", "ReduceLROnPlateau", {"mode": "max", "threshold": 0.01, "patience": 3, "factor": 0.2, "cooldown": 2, "min_lr": 1e-3, "eps": 0.0}, 80, metrics=acc)
    case("x_plateau_minlr_list", "ReduceLROnPlateau", {"min_lr": [0.02], "factor": 0.5, "patience": 0}, 20, metrics=[1.0] * 20)
    case("x_plateau_large", "ReduceLROnPlateau", {"factor": 0.9, "patience": 0, "min_lr": 500.0}, 60, base_lr=1e4, metrics=[1.0] * 60)
    # SequentialLR
    case("x_seq_warm_cos", "SequentialLR", {"schedulers": [["LinearLR", {"start_factor": 0.1, "total_iters": 5}], ["CosineAnnealingLR", {"T_max": 20, "eta_min": 0.001}]], "milestones": [5]}, 60)
    case("x_seq_three", "SequentialLR", {"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 2}], ["ExponentialLR", {"gamma": 0.9}], ["StepLR", {"step_size": 3, "gamma": 0.5}]], "milestones": [4, 12]}, 30)
    case("x_seq_constant_total0", "SequentialLR", {"schedulers": [["ExponentialLR", {"gamma": 0.9}], ["ConstantLR", {"factor": 0.5, "total_iters": 0}]], "milestones": [5]}, 12)
    case("x_seq_milestone0", "SequentialLR", {"schedulers": [["ConstantLR", {"factor": 0.5}], ["ExponentialLR", {"gamma": 0.9}]], "milestones": [0]}, 10)
    case("x_seq_unsorted", "SequentialLR", {"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 2}], ["ExponentialLR", {"gamma": 0.9}], ["StepLR", {"step_size": 3, "gamma": 0.5}]], "milestones": [12, 4]}, 25)
    case("x_seq_unsorted4", "SequentialLR", {"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 2}], ["ExponentialLR", {"gamma": 0.9}], ["StepLR", {"step_size": 3, "gamma": 0.5}], ["LinearLR", {"start_factor": 0.2, "total_iters": 4}]], "milestones": [5, 15, 3]}, 25)
    case("x_seq_dup", "SequentialLR", {"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 2}], ["ExponentialLR", {"gamma": 0.9}], ["StepLR", {"step_size": 3, "gamma": 0.5}]], "milestones": [6, 6]}, 20)
    case("x_seq_cyclic_first", "SequentialLR", {"schedulers": [["CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3}], ["ExponentialLR", {"gamma": 0.8}]], "milestones": [10]}, 20)
    case("x_seq_cyclic_first_cos", "SequentialLR", {"schedulers": [["CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3}], ["CosineAnnealingLR", {"T_max": 6}]], "milestones": [7]}, 20)
    case("x_seq_step_cawr", "SequentialLR", {"schedulers": [["StepLR", {"step_size": 2, "gamma": 0.5}], ["CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2, "eta_min": 0.001}]], "milestones": [5]}, 40)
    case("x_seq_poly_total0", "SequentialLR", {"schedulers": [["PolynomialLR", {"total_iters": 4}], ["PolynomialLR", {"total_iters": 0}]], "milestones": [6]}, 12)
    case("x_seq_multistep_cos", "SequentialLR", {"schedulers": [["MultiStepLR", {"milestones": [0, 3], "gamma": 0.5}], ["CosineAnnealingLR", {"T_max": 5, "eta_min": 0.02}]], "milestones": [7]}, 30)
    case("x_seq_cos_linear_cyclic", "SequentialLR", {"schedulers": [["CosineAnnealingLR", {"T_max": 3, "eta_min": 0.01}], ["LinearLR", {"start_factor": 0.5, "end_factor": 0.0, "total_iters": 4}], ["CyclicLR", {"base_lr": 0.001, "max_lr": 0.05, "step_size_up": 2}]], "milestones": [8, 14]}, 30)
    case("x_seq_cawr_first", "SequentialLR", {"schedulers": [["CosineAnnealingWarmRestarts", {"T_0": 4, "T_mult": 2}], ["ExponentialLR", {"gamma": 0.7}]], "milestones": [9]}, 20)
    # ChainedScheduler
    case("x_chain_const_exp", "ChainedScheduler", {"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 3}], ["ExponentialLR", {"gamma": 0.9}]]}, 20)
    case("x_chain_cos_multistep", "ChainedScheduler", {"schedulers": [["CosineAnnealingLR", {"T_max": 4, "eta_min": 0.01}], ["MultiStepLR", {"milestones": [3, 9], "gamma": 0.5}]]}, 40)
    case("x_chain_cyclic_cos", "ChainedScheduler", {"schedulers": [["CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4}], ["CosineAnnealingLR", {"T_max": 4, "eta_min": 0.001}]]}, 30)
    case("x_chain_step_gamma0_cos", "ChainedScheduler", {"schedulers": [["StepLR", {"step_size": 3, "gamma": 0.0}], ["CosineAnnealingLR", {"T_max": 10, "eta_min": 0.01}]]}, 20)
    case("x_chain_exp_gamma0_cos", "ChainedScheduler", {"schedulers": [["ExponentialLR", {"gamma": 0.0}], ["CosineAnnealingLR", {"T_max": 5, "eta_min": 0.01}]]}, 20)
    case("x_chain_nested_cos", "ChainedScheduler", {"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 3}], ["ChainedScheduler", {"schedulers": [["CosineAnnealingLR", {"T_max": 10, "eta_min": 0.01}]]}]]}, 20)
    case("x_chain_nested_cawr", "ChainedScheduler", {"schedulers": [["ConstantLR", {"factor": 0.5, "total_iters": 3}], ["ChainedScheduler", {"schedulers": [["CosineAnnealingWarmRestarts", {"T_0": 4}]]}]]}, 20)
    case("x_chain_linear_cawr_exp", "ChainedScheduler", {"schedulers": [["LinearLR", {"start_factor": 0.2, "total_iters": 6}], ["CosineAnnealingWarmRestarts", {"T_0": 5, "T_mult": 2, "eta_min": 0.01}], ["ExponentialLR", {"gamma": 0.95}]]}, 40)
    case("x_chain_poly_linear", "ChainedScheduler", {"schedulers": [["PolynomialLR", {"total_iters": 10, "power": 2.0}], ["LinearLR", {"start_factor": 1.0, "end_factor": 0.5, "total_iters": 15}]]}, 25)
    case("x_chain_single", "ChainedScheduler", {"schedulers": [["ExponentialLR", {"gamma": 0.8}]]}, 10)
    case("x_chain_const_factor0_cos", "ChainedScheduler", {"schedulers": [["LinearLR", {"start_factor": 1.0, "end_factor": 0.0, "total_iters": 3}], ["CosineAnnealingLR", {"T_max": 8, "eta_min": 0.02}]]}, 20)
    case("x_chain_cyclic_cawr", "ChainedScheduler", {"schedulers": [["CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3}], ["CosineAnnealingWarmRestarts", {"T_0": 4}]]}, 20)
    case("x_seq_cyclic_first_step", "SequentialLR", {"schedulers": [["CyclicLR", {"base_lr": 0.02, "max_lr": 0.2, "step_size_up": 2}], ["StepLR", {"step_size": 2, "gamma": 0.5}]], "milestones": [5]}, 15)
    case("x_chain_multistep_gamma0_cos", "ChainedScheduler", {"schedulers": [["MultiStepLR", {"milestones": [2, 6], "gamma": 0.0}], ["CosineAnnealingLR", {"T_max": 10, "eta_min": 0.01}]]}, 12)
    case("x_onecycle_maxlr_list", "OneCycleLR", {"max_lr": [0.5], "total_steps": 20}, 20)
    case("x_cyclic_lists", "CyclicLR", {"base_lr": [0.01], "max_lr": [0.1], "step_size_up": 3}, 20)
    # common-argument acceptance probes
    case("x_probe_verbose", "StepLR", {"step_size": 3, "verbose": False}, 5)
    case("x_probe_plateau_last_epoch", "ReduceLROnPlateau", {"last_epoch": -1}, 5, metrics=[1.0] * 5)
    case("x_probe_chain_last_epoch", "ChainedScheduler", {"schedulers": [["ExponentialLR", {"gamma": 0.9}]], "last_epoch": -1}, 5)
    case("x_probe_last_epoch", "ExponentialLR", {"gamma": 0.9, "last_epoch": -1}, 5)


# ----------------------------------------------------------------------------------------- optax
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

    case("x_constant0", "constant_schedule", {"value": 0.0}, 5)
    case("x_constant_big", "constant_schedule", {"value": 12345.5}, 5)
    # linear / polynomial
    case("x_linear_begin_up", "linear_schedule", {"init_value": 0.0, "end_value": 1.0, "transition_steps": 20, "transition_begin": 10}, 40)
    case("x_linear_steps0", "linear_schedule", {"init_value": 0.3, "end_value": 1.0, "transition_steps": 0}, 5)
    case("x_linear_neg_begin", "linear_schedule", {"init_value": 1.0, "end_value": 0.0, "transition_steps": 10, "transition_begin": -5}, 15)
    case("x_linear_neg_steps", "linear_schedule", {"init_value": 0.3, "end_value": 1.0, "transition_steps": -3}, 5)
    case("x_poly_sqrt_begin", "polynomial_schedule", {"init_value": 1.0, "end_value": 0.01, "power": 0.5, "transition_steps": 30, "transition_begin": 7}, 50)
    case("x_poly_up_cubic", "polynomial_schedule", {"init_value": 0.001, "end_value": 2.0, "power": 3.0, "transition_steps": 25}, 40)
    case("x_poly_power0", "polynomial_schedule", {"init_value": 1.0, "end_value": 0.5, "power": 0.0, "transition_steps": 10}, 15)
    case("x_poly_large", "polynomial_schedule", {"init_value": 1e4, "end_value": 10.0, "power": 2.5, "transition_steps": 60, "transition_begin": 3}, 80)
    case("x_poly_neg_begin", "polynomial_schedule", {"init_value": 1.0, "end_value": 0.0, "power": 2.0, "transition_steps": 10, "transition_begin": -4}, 15)
    # piecewise_constant
    case("x_pc_many", "piecewise_constant_schedule", {"init_value": 0.5, "boundaries_and_scales": {"5": 0.5, "15": 2.0, "40": 0.1, "41": 0.0}}, 50)
    case("x_pc_zero_boundary", "piecewise_constant_schedule", {"init_value": 0.5, "boundaries_and_scales": {"0": 0.1, "10": 10.0}}, 20)
    case("x_pc_empty", "piecewise_constant_schedule", {"init_value": 0.5, "boundaries_and_scales": {}}, 5)
    case("x_pc_none", "piecewise_constant_schedule", {"init_value": 0.5, "boundaries_and_scales": None}, 5)
    case("x_pc_unsorted_big", "piecewise_constant_schedule", {"init_value": 100.0, "boundaries_and_scales": {"30": 3.0, "10": 7.0, "20": 0.25}}, 40)
    case("x_pc_negative_boundary", "piecewise_constant_schedule", {"init_value": 0.5, "boundaries_and_scales": {"-3": 0.5, "4": 0.5}}, 10)
    case("x_pc_negative_scale", "piecewise_constant_schedule", {"init_value": 0.5, "boundaries_and_scales": {"3": -0.5}}, 10)
    # exponential_decay
    case("x_exp_end_lower", "exponential_decay", {"init_value": 1.0, "transition_steps": 5, "decay_rate": 0.5, "end_value": 0.05}, 40)
    case("x_exp_end_upper", "exponential_decay", {"init_value": 0.01, "transition_steps": 4, "decay_rate": 1.5, "end_value": 0.5}, 60)
    case("x_exp_staircase_begin", "exponential_decay", {"init_value": 0.2, "transition_steps": 6, "decay_rate": 0.7, "transition_begin": 9, "staircase": True}, 60)
    case("x_exp_rate1_end", "exponential_decay", {"init_value": 0.2, "transition_steps": 6, "decay_rate": 1.0, "end_value": 0.1}, 10)
    case("x_exp_neg_begin", "exponential_decay", {"init_value": 0.2, "transition_steps": 6, "decay_rate": 0.5, "transition_begin": -10}, 20)
    case("x_exp_rate0", "exponential_decay", {"init_value": 0.2, "transition_steps": 6, "decay_rate": 0.0, "end_value": 0.5}, 10)
    case("x_exp_neg_rate_stair", "exponential_decay", {"init_value": 0.2, "transition_steps": 3, "decay_rate": -0.5, "staircase": True}, 20)
    case("x_exp_steps0", "exponential_decay", {"init_value": 0.2, "transition_steps": 0, "decay_rate": 0.5}, 5)
    case("x_exp_growth_big", "exponential_decay", {"init_value": 1000.0, "transition_steps": 10, "decay_rate": 2.0}, 100)
    case("x_exp_stair_up_end", "exponential_decay", {"init_value": 1.0, "transition_steps": 7, "decay_rate": 3.0, "staircase": True, "end_value": 50.0, "transition_begin": 2}, 60)
    case("x_exp_end_above_init_decay", "exponential_decay", {"init_value": 0.1, "transition_steps": 5, "decay_rate": 0.5, "end_value": 0.3}, 10)
    # cosine_decay
    case("x_cosdecay_alpha_exp", "cosine_decay_schedule", {"init_value": 0.5, "decay_steps": 30, "alpha": 0.1, "exponent": 2.0}, 50)
    case("x_cosdecay_alpha_gt1", "cosine_decay_schedule", {"init_value": 0.5, "decay_steps": 10, "alpha": 1.5}, 15)
    case("x_cosdecay_alpha_neg", "cosine_decay_schedule", {"init_value": 0.5, "decay_steps": 10, "alpha": -0.2, "exponent": 0.5}, 15)
    case("x_cosdecay_steps1", "cosine_decay_schedule", {"init_value": 3.0, "decay_steps": 1}, 5)
    case("x_cosdecay_large", "cosine_decay_schedule", {"init_value": 5e4, "decay_steps": 77, "alpha": 0.01}, 100)
    # warmup_constant
    case("x_wc_warm0", "warmup_constant_schedule", {"init_value": 0.1, "peak_value": 0.5, "warmup_steps": 0}, 5)
    case("x_wc_down", "warmup_constant_schedule", {"init_value": 1.0, "peak_value": 0.1, "warmup_steps": 9}, 15)
    # warmup_cosine_decay
    case("x_wcd_warm0_exp", "warmup_cosine_decay_schedule", {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 0, "decay_steps": 40, "end_value": 0.1, "exponent": 0.5}, 50)
    case("x_wcd_end_above", "warmup_cosine_decay_schedule", {"init_value": 0.2, "peak_value": 0.1, "warmup_steps": 5, "decay_steps": 25, "end_value": 0.3}, 40)
    case("x_wcd_peak0", "warmup_cosine_decay_schedule", {"init_value": 0.1, "peak_value": 0.0, "warmup_steps": 5, "decay_steps": 25, "end_value": 0.3}, 30)
    case("x_wcd_eq", "warmup_cosine_decay_schedule", {"init_value": 0.1, "peak_value": 1.0, "warmup_steps": 10, "decay_steps": 10}, 20)
    case("x_wcd_decay1more", "warmup_cosine_decay_schedule", {"init_value": 0.1, "peak_value": 1.0, "warmup_steps": 10, "decay_steps": 11, "exponent": 3.0}, 20)
    # warmup_exponential_decay
    case("x_wed_begin_stair_end", "warmup_exponential_decay_schedule", {"init_value": 0.0, "peak_value": 0.2, "warmup_steps": 4, "transition_steps": 3, "decay_rate": 0.5, "transition_begin": 5, "staircase": True, "end_value": 0.01}, 40)
    case("x_wed_growth_end", "warmup_exponential_decay_schedule", {"init_value": 0.1, "peak_value": 0.01, "warmup_steps": 6, "transition_steps": 2, "decay_rate": 1.3, "end_value": 0.3}, 40)
    case("x_wed_warm0", "warmup_exponential_decay_schedule", {"init_value": 0.5, "peak_value": 0.2, "warmup_steps": 0, "transition_steps": 5, "decay_rate": 0.9}, 20)
    case("x_wed_neg_begin", "warmup_exponential_decay_schedule", {"init_value": 0.0, "peak_value": 0.2, "warmup_steps": 3, "transition_steps": 5, "decay_rate": 0.9, "transition_begin": -2}, 20)
    # one-cycle
    case("x_lin1c_pct", "linear_onecycle_schedule", {"transition_steps": 40, "peak_value": 0.5, "pct_start": 0.1, "pct_final": 0.9, "div_factor": 5.0, "final_div_factor": 50.0}, 50)
    case("x_lin1c_equal_pcts", "linear_onecycle_schedule", {"transition_steps": 20, "peak_value": 0.5, "pct_start": 0.5, "pct_final": 0.5}, 25)
    case("x_lin1c_pct_final1", "linear_onecycle_schedule", {"transition_steps": 20, "peak_value": 0.5, "pct_final": 1.0}, 25)
    case("x_lin1c_odd", "linear_onecycle_schedule", {"transition_steps": 7, "peak_value": 1.0, "div_factor": 1.0}, 10)
    case("x_lin1c_reversed", "linear_onecycle_schedule", {"transition_steps": 30, "peak_value": 1.0, "pct_start": 0.8, "pct_final": 0.5}, 35)
    case("x_lin1c_neg_pct", "linear_onecycle_schedule", {"transition_steps": 20, "peak_value": 1.0, "pct_start": -0.1}, 25)
    case("x_lin1c_pct0", "linear_onecycle_schedule", {"transition_steps": 20, "peak_value": 1.0, "pct_start": 0.0}, 25)
    case("x_cos1c_pct1", "cosine_onecycle_schedule", {"transition_steps": 20, "peak_value": 0.5, "pct_start": 1.0}, 25)
    case("x_cos1c_pct0", "cosine_onecycle_schedule", {"transition_steps": 20, "peak_value": 0.5, "pct_start": 0.0}, 25)
    case("x_cos1c_small", "cosine_onecycle_schedule", {"transition_steps": 9, "peak_value": 2.0, "pct_start": 0.05, "div_factor": 5.0, "final_div_factor": 10.0}, 15)
    case("x_cos1c_large", "cosine_onecycle_schedule", {"transition_steps": 100, "peak_value": 1e3, "pct_start": 0.25}, 110)
    # join_schedules
    case("x_join3", "join_schedules", {"schedules": [["linear_schedule", {"init_value": 0.0, "end_value": 0.1, "transition_steps": 10}], ["constant_schedule", {"value": 0.1}], ["cosine_decay_schedule", {"init_value": 0.1, "decay_steps": 20, "alpha": 0.05}]], "boundaries": [10, 25]}, 60)
    case("x_join_unsorted", "join_schedules", {"schedules": [["constant_schedule", {"value": 1.0}], ["linear_schedule", {"init_value": 0.5, "end_value": 0.0, "transition_steps": 10}], ["exponential_decay", {"init_value": 0.3, "transition_steps": 2, "decay_rate": 0.5}]], "boundaries": [30, 10]}, 40)
    case("x_join_b0", "join_schedules", {"schedules": [["constant_schedule", {"value": 1.0}], ["exponential_decay", {"init_value": 0.3, "transition_steps": 2, "decay_rate": 0.9}]], "boundaries": [0]}, 10)
    case("x_join_nested", "join_schedules", {"schedules": [["join_schedules", {"schedules": [["constant_schedule", {"value": 0.2}], ["constant_schedule", {"value": 0.4}]], "boundaries": [3]}], ["warmup_cosine_decay_schedule", {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 3, "decay_steps": 13}], ["cosine_onecycle_schedule", {"transition_steps": 10, "peak_value": 0.5}]], "boundaries": [6, 20]}, 40)
    case("x_join_extra_boundary", "join_schedules", {"schedules": [["constant_schedule", {"value": 1.0}], ["constant_schedule", {"value": 2.0}]], "boundaries": [3, 6]}, 10)
    case("x_join_neg_boundary", "join_schedules", {"schedules": [["constant_schedule", {"value": 1.0}], ["linear_schedule", {"init_value": 0.0, "end_value": 1.0, "transition_steps": 10}]], "boundaries": [-2]}, 10)


if __name__ == "__main__":
    which = sys.argv[1:2] or ["torch", "optax"]
    for w in which:
        {"torch": torch_cases, "optax": optax_cases}[w]()
