import sys, numpy as np, torch, pytorch_optimizer
from common import S, data, write
out = sys.argv[1]
def la_case(name, hp, shapes=S, steps=12, seed=0):
    cid = f"po.lookahead.{name}"
    try:
        params, grads = data(shapes, steps, seed, 1.0)
        ps = [torch.nn.Parameter(torch.tensor(x)) for x in params]
        iname, ikw = hp['inner']
        if iname.startswith('torch.optim.'):
            inner = getattr(torch.optim, iname.split('.')[-1])(ps, **{k: tuple(v) if isinstance(v, list) else v for k, v in ikw.items()})
        else:
            inner = pytorch_optimizer.load_optimizer(iname)(ps, **ikw)
        o = pytorch_optimizer.Lookahead(inner, k=hp['k'], alpha=hp['alpha'], pullback_momentum=hp['pullback_momentum'])
        expected = []
        for g in grads:
            for p, x in zip(ps, g): p.grad = torch.tensor(x)
            o.step(); expected.append([p.detach().numpy().astype(np.float32).ravel().tolist() for p in ps])
        write(out, cid, "pytorch_optimizer 4.1.0 Lookahead", "lookahead", hp, shapes, steps, params, grads, expected)
    except Exception as e:
        print("GENFAIL", cid, repr(e)[:300])
la_case("sgd_pullback", {"k": 3, "alpha": 0.3, "pullback_momentum": "pullback", "inner": ["torch.optim.SGD", {"lr": 0.05, "momentum": 0.9}]}, seed=1)
la_case("sgd_reset", {"k": 4, "alpha": 0.7, "pullback_momentum": "reset", "inner": ["torch.optim.SGD", {"lr": 0.05, "momentum": 0.9}]}, seed=2)
la_case("adam_pullback", {"k": 3, "alpha": 0.5, "pullback_momentum": "pullback", "inner": ["torch.optim.Adam", {"lr": 0.02}]}, seed=3)
la_case("po_lion", {"k": 3, "alpha": 0.5, "pullback_momentum": "none", "inner": ["lion", {"lr": 0.01, "weight_decay": 0.1}]}, seed=4)
