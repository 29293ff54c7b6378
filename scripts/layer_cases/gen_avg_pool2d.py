# Records torch.nn.functional.avg_pool2d cases beyond the shared reference's kernel 2 / stride 2:
# rectangular windows and steps, padding, ceil mode, count_include_pad=False, divisor_override,
# an unbatched [c, h, w] input. Same form as shared/reference-nn-r2/layers/avg_pool2d.*.json.
# usage: python scripts/layer_cases/gen_avg_pool2d.py OUT_DIR   (then copy the files into
#        crates/descent-train/tests/cases/layers/)
import json, os, sys
import numpy as np, torch, torch.nn.functional as F

out = sys.argv[1]
os.makedirs(out, exist_ok=True)

def t(x):
    a = x.detach().numpy().astype(np.float32)
    return {"shape": list(a.shape), "data": [float(str(v)) for v in a.reshape(-1)]}

CASES = [
    ([2, 3, 9, 8], dict(kernel_size=3, stride=2, padding=1, ceil_mode=False, count_include_pad=True)),
    ([1, 2, 7, 5], dict(kernel_size=[3, 2], stride=[1, 2], padding=[1, 0], ceil_mode=True, count_include_pad=False)),
    ([2, 1, 5, 7], dict(kernel_size=2, stride=None, padding=0, ceil_mode=True, count_include_pad=True)),
    ([1, 2, 8, 10], dict(kernel_size=3, stride=3, padding=1, ceil_mode=True, count_include_pad=True, divisor_override=5)),
    ([3, 6, 9], dict(kernel_size=[2, 4], stride=[3, 1], padding=[1, 2], ceil_mode=False, count_include_pad=False)),
    ([2, 2, 6, 6], dict(kernel_size=5, stride=2, padding=2, ceil_mode=True, count_include_pad=True)),
    ([1, 1, 3, 4], dict(kernel_size=1, stride=1, padding=0, ceil_mode=False, count_include_pad=True)),
    ([1, 2, 11, 6], dict(kernel_size=[4, 3], stride=[2, 3], padding=[2, 1], ceil_mode=True, count_include_pad=False, divisor_override=7)),
    # Ceil mode's window that would start in the right padding is dropped: 3 × 3, not 4 × 4.
    ([1, 1, 5, 5], dict(kernel_size=2, stride=2, padding=1, ceil_mode=True, count_include_pad=True)),
]

for i, (shape, args) in enumerate(CASES):
    g = torch.Generator().manual_seed(100 + i)
    x = (torch.randn(shape, generator=g) * 2 + 0.5).requires_grad_(True)
    y = F.avg_pool2d(x, **args)
    go = torch.randn(y.shape, generator=g)
    (gi,) = torch.autograd.grad(y, x, go)
    name = f"avg_pool2d.{i}"
    rec = {"id": name, "source": f"torch {torch.__version__}", "op": "avg_pool2d", "args": args,
           "input": t(x), "output": t(y), "grad_output": t(go), "grad_input": t(gi)}
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(rec, f)
    print(name, shape, args, "->", list(y.shape))
