import json, numpy as np
S = [(5, 3), (4,), (2, 3, 2)]
def data(shapes, steps, seed, scale):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    # gradients of a few different scales: per-parameter and per-step factors
    pf = [1.0, 0.1, 3.0, 0.5, 2.0]
    grads = []
    for t in range(steps):
        sf = [1.0, 0.3, 2.0, 0.05, 1.0][t % 5]
        grads.append([(scale * pf[i % 5] * sf * rng.standard_normal(s)).astype(np.float32) for i, s in enumerate(shapes)])
    return params, grads
def write(out, cid, source, opt, hp, shapes, steps, params, grads, expected, extra=None, tol=(1e-3, 4e-6)):
    d = {"id": cid, "source": source, "optimizer": opt, "hparams": hp, "dtype": "float32", "steps": steps,
         "tolerance": {"rel": tol[0], "abs": tol[1]},
         "params": [{"shape": list(s), "init": x.ravel().tolist()} for s, x in zip(shapes, params)],
         "grads": [[x.ravel().tolist() for x in g] for g in grads], "expected": expected}
    if extra: d.update(extra)
    json.dump(d, open(f"{out}/{cid}.json", "w"))
def conv(v):
    """A JSON argument as optax takes it: {"schedule": NAME, ...} becomes that optax schedule."""
    import optax
    if isinstance(v, dict) and 'schedule' in v:
        kw = {k: conv(x) for k, x in v.items() if k != 'schedule'}
        return getattr(optax, v['schedule'])(**kw)
    if isinstance(v, dict):
        return {k: conv(x) for k, x in v.items()}
    return v
def fn(path):
    """The optax function at a dotted path (`contrib.muon`)."""
    import optax
    obj = optax
    for p in path.split('.'): obj = getattr(obj, p)
    return obj
