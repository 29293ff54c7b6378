# Records torch.nn.functional.embedding cases with the arguments that change its gradient, beyond
# the shared reference's plain lookups: padding_idx (a row, one counted from the end), and
# scale_grad_by_freq (each row's gradient divided by its count in the batch), alone and together.
# Same form as shared/reference-nn-r2/layers/embedding.*.json, with the arguments in `args`.
# usage: python scripts/layer_cases/gen_embedding.py OUT_DIR   (then copy the files into
#        crates/descent-train/tests/cases/layers/)
import json, os, sys
import numpy as np, torch, torch.nn.functional as F

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def t(x):
    a = x.detach().numpy()
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
        return {"shape": list(a.shape), "data": [float(str(v)) for v in a.reshape(-1)]}
    return {"shape": list(a.shape), "data": [int(v) for v in a.reshape(-1)]}

# (table rows, channels, indices shape, args); index 0 and the padding rows are picked repeatedly.
CASES = [
    (10, 4, [3, 5], dict(padding_idx=0)),
    (10, 4, [3, 5], dict(scale_grad_by_freq=True)),
    (8, 3, [2, 2, 4], dict(padding_idx=-3)),
    (12, 5, [4, 6], dict(padding_idx=2, scale_grad_by_freq=True)),
]

for i, (v, c, shape, args) in enumerate(CASES):
    g = torch.Generator().manual_seed(200 + i)
    w = torch.randn(v, c, generator=g).requires_grad_(True)
    idx = torch.randint(0, v - 2, shape, generator=g)
    flat = idx.view(-1)
    flat[:3] = 0
    if "padding_idx" in args:
        flat[3:5] = args["padding_idx"] % v
    y = F.embedding(idx, w, **args)
    go = torch.randn(y.shape, generator=g)
    (gw,) = torch.autograd.grad(y, w, go)
    name = f"embedding.{i}"
    rec = {"id": name, "source": f"torch {torch.__version__}", "op": "embedding", "args": args,
           "weight": t(w), "indices": t(idx), "output": t(y), "grad_output": t(go), "grad_weight": t(gw)}
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(rec, f)
    print(name, v, c, shape, args)
