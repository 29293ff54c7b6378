"""Recompute `expected` for grads-form torch./po. cases. usage: run_torch.py IN.json... -> prints; lib function compute(d)."""
import sys, json, numpy as np, torch, os
torch.set_num_threads(1)
CLS = {c.lower(): c for c in ['SGD','Adam','AdamW','Adagrad','RMSprop','Adadelta','Adamax','NAdam','RAdam','Rprop','ASGD','Adafactor','Muon','SparseAdam']}
def tup(v): return tuple(tup(x) for x in v) if isinstance(v, list) else v
def conv_po(hp, enums):
    import pytorch_optimizer
    kw = {}
    for k, v in hp.items():
        if enums and k in enums:
            # find enum class by trying the optimizer module
            kw[k] = v  # patched below
        else:
            kw[k] = tup(v) if k != 'norm_kwargs' else v
    return kw
def compute(d):
    lib = d['id'].split('.')[0]
    ps = [torch.nn.Parameter(torch.tensor(np.array(p['init'], np.float32).reshape(p['shape']))) for p in d['params']]
    hp = d['hparams']
    kw = {k: tup(v) for k, v in hp.items()}
    groups = d.get('param_groups')
    pg = [dict(params=[ps[i] for i in g['params']], **{k: tup(v) for k, v in g['hparams'].items()}) for g in groups] if groups else ps
    if lib == 'torch':
        o = getattr(torch.optim, CLS[d['optimizer']])(pg, **kw)
    else:
        import pytorch_optimizer
        o = pytorch_optimizer.load_optimizer(d['optimizer'])(pg, **kw)
    exp = []
    sparse = d.get('sparse_grads') == 'rows'
    for g in d['grads']:
        for p, x, spec in zip(ps, g, d['params']):
            t = torch.tensor(np.array(x, np.float32).reshape(spec['shape']))
            if sparse:
                rows = (t.reshape(t.shape[0], -1) != 0).any(1).nonzero().flatten()
                t = torch.sparse_coo_tensor(rows[None], t[rows], t.shape)
            p.grad = t
        o.step()
        exp.append([p.detach().numpy().astype(np.float32).ravel().tolist() for p in ps])
    return exp
def cmp(d, exp):
    init = np.concatenate([np.array(p['init'], np.float64) for p in d['params']])
    worst = 0
    for t, (a, b) in enumerate(zip(exp, d['expected'])):
        a = np.concatenate([np.array(x, np.float64) for x in a]) - init
        b = np.concatenate([np.array(x, np.float64) for x in b]) - init
        err = np.max(np.abs(a - b)); lim = d['tolerance']['rel'] * np.max(np.abs(b)) + d['tolerance']['abs']
        worst = max(worst, err / lim)
    return worst
if __name__ == '__main__':
    for f in sys.argv[1:]:
        d = json.load(open(f))
        if 'grads' not in d: continue
        try:
            r = cmp(d, compute(d)); print(f"{r:.3g}", os.path.basename(f))
        except Exception as e:
            print("ERR", os.path.basename(f), repr(e)[:200])
