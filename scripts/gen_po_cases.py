# pytorch_optimizer 4.1.0 cases for arguments beyond the shared sets (case format of shared/reference).
# usage: python scripts/gen_po_cases.py OUT_DIR   (needs torch and pytorch_optimizer==4.1.0)
import json, sys, numpy as np, torch, pytorch_optimizer
out = sys.argv[1]
def case(name, opt, hp, shapes, steps=12, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[(scale * rng.standard_normal(s)).astype(np.float32) for s in shapes] for _ in range(steps)]
    ps = [torch.nn.Parameter(torch.tensor(x)) for x in params]
    o = pytorch_optimizer.load_optimizer(opt)(ps, **hp)
    expected = []
    for g in grads:
        for p, x in zip(ps, g):
            p.grad = torch.tensor(x)
        o.step()
        expected.append([p.detach().numpy().astype(np.float32).ravel().tolist() for p in ps])
    d = {"id": f"po.{opt}.{name}", "source": f"pytorch_optimizer 4.1.0 (torch {torch.__version__})",
         "optimizer": opt, "hparams": hp, "dtype": "float32", "steps": steps, "tolerance": {"rel": 1e-3, "abs": 4e-6},
         "params": [{"shape": list(s), "init": x.ravel().tolist()} for s, x in zip(shapes, params)],
         "grads": [[x.ravel().tolist() for x in g] for g in grads], "expected": expected}
    json.dump(d, open(f"{out}/po.{opt}.{name}.json", "w"))
S = [(6, 4), (4,), (3, 2, 2)]
case("lr_none", "adafactor", {"lr": None}, S, seed=1)
case("lr_none_warmup", "adafactor", {"lr": None, "warmup_init": True, "scale_parameter": False}, S, seed=2)
