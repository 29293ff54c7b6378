"""`compute(d)`: the `expected` trajectory of a grads-form torch.optim or pytorch_optimizer case."""
import numpy as np, torch
torch.set_num_threads(1)
CLS = {c.lower(): c for c in ['SGD','Adam','AdamW','Adagrad','RMSprop','Adadelta','Adamax','NAdam','RAdam','Rprop','ASGD','Adafactor','Muon','SparseAdam']}
def tup(v): return tuple(tup(x) for x in v) if isinstance(v, list) else v
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
