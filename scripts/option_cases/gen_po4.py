import sys
exec(open('gen_po.py').read().split("G = lambda")[0])
G = lambda h0, h1: [{"params": [0, 2], "hparams": h0}, {"params": [1], "hparams": h1}]
M2 = [(5, 3), (4, 6), (3, 3)]
case("galore", "right_left", {"lr": 0.02}, shapes=[(5, 3), (4, 6), (4,)], seed=60, groups=[{"params": [0], "hparams": {"rank": 2, "update_proj_gap": 50, "projection_type": "right"}}, {"params": [1], "hparams": {"rank": 2, "update_proj_gap": 50, "projection_type": "left"}}, {"params": [2], "hparams": {}}])
case("galore", "reverse_std", {"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-3}, shapes=[(5, 3), (4, 6), (4,)], seed=61, groups=[{"params": [0, 1], "hparams": {"rank": 2, "update_proj_gap": 50, "projection_type": "reverse_std", "scale": 2.0}}, {"params": [2], "hparams": {"weight_decay": 0.1}}])
case("madgrad", "l2_groups", {"lr": 0.02, "weight_decay": 0.1}, groups=G({"momentum": 0.5}, {"weight_decouple": True, "lr": 0.05}), seed=62)
case("adabound", "groups", {"lr": 0.02}, groups=G({"final_lr": 0.05}, {"gamma": 0.1, "weight_decay": 0.1}), seed=63)
case("adan", "groups", {"lr": 0.02}, groups=G({"weight_decay": 0.1}, {"betas": [0.9, 0.9, 0.9]}), seed=64)
case("lamb", "groups", {"lr": 0.02}, groups=G({"weight_decay": 0.1}, {"betas": [0.5, 0.9]}), seed=65)
case("novograd", "groups", {"lr": 0.02}, groups=G({"grad_averaging": True}, {"weight_decay": 0.1}), seed=66)
case("schedulefreeradam", "groups", {"lr": 0.02}, groups=G({"r": 1.0}, {"weight_decay": 0.1, "lr": 0.05}), steps=12, seed=67)
case("ademamix", "groups", {"lr": 0.02}, groups=G({"alpha": 2.0, "t_alpha_beta3": 5}, {"weight_decay": 0.1}), seed=68)
case("tiger", "groups", {"lr": 0.01}, groups=G({"beta": 0.5}, {"weight_decay": 0.0}), seed=69)
case("stableadamw", "groups", {"lr": 0.02}, groups=G({"kahan_sum": False}, {"betas": [0.5, 0.9]}), seed=70)
case("sgdp", "groups", {"lr": 0.05, "momentum": 0.9}, groups=G({"nesterov": True}, {"dampening": 0.5, "weight_decay": 0.1}), seed=71)
case("qhadam", "groups", {"lr": 0.02}, groups=G({"nus": [0.5, 0.5]}, {"weight_decay": 0.1}), seed=72)
case("mars", "groups", {"lr": 0.01, "optimize_1d": True}, groups=G({"gamma": 0.1}, {"lr": 0.02}), seed=73)
case("adafactor", "groups", {"lr": 0.02, "relative_step": False}, groups=G({"betas": [0.9, 0.99]}, {"weight_decay": 0.1, "scale_parameter": False}), seed=74)
case("spam", "groups", {"lr": 0.02, "warmup_epoch": 2}, groups=G({"weight_decay": 0.1}, {"lr": 0.05}), seed=75)
case("shampoo", "groups", {"lr": 0.02}, shapes=M2, groups=G({"momentum": 0.5}, {"weight_decay": 0.1}), seed=76)
case("yogi", "groups", {"lr": 0.02}, groups=G({"initial_accumulator": 0.1}, {"weight_decay": 0.1, "eps": 1e-4}), seed=77)
case("laprop", "groups", {"lr": 0.02}, groups=G({"centered": True}, {"steps_before_using_centered": 2, "centered": True}), seed=78)
# SPAM keeps density, grad_accu_steps, threshold, update_proj_gap and warmup_epoch on the
# optimizer (the constructor's); a group's value is never read.
case("spam", "groups_density", {"lr": 0.02, "warmup_epoch": 2}, groups=G({"density": 0.0}, {}), seed=76)
case("spam", "groups_grad_accu_steps", {"lr": 0.02, "warmup_epoch": 2, "threshold": 2.0}, groups=G({"grad_accu_steps": 0, "threshold": 1e-3}, {}), seed=77)
