import sys
exec(open('gen_torch.py').read().split("G = lambda")[0])
G = lambda h0, h1: [{"params": [0, 2], "hparams": h0}, {"params": [1], "hparams": h1}]
case("adagrad", "groups_lrdecay_only", {"lr": 0.1}, groups=G({"lr_decay": 0.5}, {"eps": 1e-3}), seed=22)
case("adagrad", "groups_init_only", {"lr": 0.1, "initial_accumulator_value": 0.2}, groups=G({}, {"initial_accumulator_value": 1.0}), seed=22)
case("nadam", "groups_md", {"lr": 0.02}, groups=G({"momentum_decay": 0.1}, {"decoupled_weight_decay": True, "weight_decay": 0.1}), seed=24)
case("radam", "groups_dec", {"lr": 0.02, "weight_decay": 0.1}, groups=G({"decoupled_weight_decay": True}, {"maximize": True}), steps=12, seed=25)
case("sgd", "groups_max_nest", {"lr": 0.05, "momentum": 0.9}, groups=G({"nesterov": True}, {"maximize": True, "dampening": 0.3}), seed=26)
case("rprop", "groups", {"lr": 0.05}, groups=G({"etas": [0.3, 1.5]}, {"step_sizes": [1e-3, 0.1], "lr": 0.01}), seed=27)
case("adamax", "groups", {"lr": 0.02}, groups=G({"weight_decay": 0.1}, {"maximize": True, "betas": [0.5, 0.9]}), seed=28)
case("adadelta", "groups", {"lr": 0.5}, groups=G({"rho": 0.5}, {"weight_decay": 0.1, "maximize": True}), seed=29)
case("muon", "groups", {"lr": 0.02}, shapes=[(5, 3), (4, 6), (3, 3)], groups=G({"adjust_lr_fn": "match_rms_adamw"}, {"nesterov": False, "weight_decay": 0.0}), seed=30)
# torch checks Nesterov's conditions on the constructor's arguments only: in a group, Nesterov
# without momentum runs as plain SGD, and Nesterov with dampening runs.
case("sgd", "groups_nest_mom0", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, groups=G({}, {"momentum": 0.0, "lr": 0.2}), seed=31)
case("sgd", "groups_nest_damp", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, groups=G({"dampening": 0.3}, {"weight_decay": 0.1}), seed=32)
# AdamW steps as Adam, which reads `decoupled_weight_decay` from each group: L2 decay there.
case("adamw", "groups_l2", {"lr": 0.02, "weight_decay": 0.1}, groups=G({"decoupled_weight_decay": False}, {}), seed=33)
# Muon's third rate adjustment, sqrt(rows/cols) unclamped (wide matrices get a smaller rate).
case("muon", "spectral_unclamped", {"lr": 0.02, "adjust_lr_fn": "spectral_unclamped"}, shapes=[(5, 3), (4, 6), (3, 3)], seed=34)
