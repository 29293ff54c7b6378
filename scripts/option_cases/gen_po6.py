# PSGD Kron's `precondition_init_scale` in its one parameter group (the constructor drops it and
# `precondition_lr` through **kwargs; a group's are read). With no preconditioner update
# (`pre_conditioner_update_probability` 0) the run draws nothing random and is replayable.
#   python gen_po6.py OUT   (torch + pytorch_optimizer 4.1.0)
import sys
exec(open('gen_po.py').read().split("G = lambda")[0])
ALL = lambda shapes: [{"params": list(range(len(shapes))), "hparams": {}}]
for i, (name, group, shapes) in enumerate([
    ("group_init_scale", {"precondition_init_scale": 0.5}, [(4, 3), (5,), (2, 3, 2)]),
    ("group_init_scale_lr", {"precondition_init_scale": 3.0, "lr": 0.01, "momentum": 0.5}, [(6, 2), (3,)]),
]):
    g = ALL(shapes)
    g[0]["hparams"] = group
    case("kron", name, {"lr": 0.05, "pre_conditioner_update_probability": 0.0}, shapes, steps=8, seed=1400 + i, groups=g)
