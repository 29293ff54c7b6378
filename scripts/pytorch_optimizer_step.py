# PyTorch CPU reference for the README's optimizer-step table: parameters updated per second by one
# step of each torch.optim optimizer on N float32 parameters in one tensor, with its default
# implementation (foreach where torch has it) and fused=True where torch offers it on the CPU.
# usage: python scripts/pytorch_optimizer_step.py [N] [THREADS]
import sys, time, json
import torch

n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000_000
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
OPTS = {
    "sgd_momentum": (torch.optim.SGD, dict(lr=1e-3, momentum=0.9)),
    "adam": (torch.optim.Adam, dict(lr=1e-3)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01)),
    "nadam": (torch.optim.NAdam, dict(lr=1e-3)),
    "radam": (torch.optim.RAdam, dict(lr=1e-3)),
    "adamax": (torch.optim.Adamax, dict(lr=1e-3)),
    "adagrad": (torch.optim.Adagrad, dict(lr=1e-3)),
    "rmsprop": (torch.optim.RMSprop, dict(lr=1e-3)),
    "adadelta": (torch.optim.Adadelta, dict(lr=1.0)),
}
FUSED = {"sgd_momentum", "adam", "adamw", "adagrad"}

def rate(cls, kw, steps=5):
    p = torch.nn.Parameter(torch.randn(n) * 0.01)
    p.grad = torch.randn(n) * 1e-3
    opt = cls([p], **kw)
    opt.step()
    best = float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t)
    return n / best

for name, (cls, kw) in OPTS.items():
    row = {"optimizer": name, "default_params_per_s": rate(cls, kw)}
    if name in FUSED:
        row["fused_params_per_s"] = rate(cls, dict(kw, fused=True))
    print(json.dumps(row), flush=True)
