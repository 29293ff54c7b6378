"""New optax cases (grads form): variants of each recorded optax case. usage: gen_o.py OUTDIR [filter]"""
import sys, os, json, glob, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_optax import compute
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
FILT = sys.argv[2] if len(sys.argv) > 2 else None
src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gen_t.py')).read()
exec(src[src.index('def data('):src.index('def case(')])
def case(cid, base, hp, shapes, steps=12, seed=0, scale=1.0, mode=None, positive=False):
    if FILT and FILT not in cid: return
    params, grads = data(shapes, steps, seed, scale, mode)
    if positive: params = [np.abs(p) for p in params]
    d = {"id": cid, "source": "optax 0.2.8 optax." + base['optimizer'], "optimizer": base['optimizer'], "hparams": hp,
         "dtype": "float32", "steps": steps, "tolerance": base['tolerance'],
         "params": [{"shape": list(s), "init": np.asarray(x).ravel().tolist()} for s, x in zip(shapes, params)],
         "grads": [[np.asarray(x).ravel().tolist() for x in g] for g in grads]}
    try: d["expected"] = compute(d)
    except Exception as e: print("GENFAIL", cid, repr(e)[:200]); return
    if not np.all(np.isfinite(np.concatenate([np.array(x) for x in d["expected"][-1]]))): print("NONFINITE", cid); return
    json.dump(d, open(f"{out}/{cid}.json", "w"))
rec = {}
for f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../../shared/reference*/optim/optax.*.json'))):
    d = json.load(open(f))
    if 'grads' not in d or 'nan_grads' in d or 'lr_per_step' in d: continue
    rec[d['id']] = d
seed = 900
DEC = ('b1', 'b2', 'decay', 'beta', 'momentum', 'b3', 'beta1', 'beta2', 'decay_rate')
for cid, d in rec.items():
    hp = d['hparams']; nparam = len(d['params'])
    positive = all(x >= 0 for p in d['params'] for x in p['init'])
    has_list = any(isinstance(v, list) and len(v) == nparam for v in json.dumps(hp) and hp.values())
    def C(tag, hp2, shapes=None, **k):
        global seed; seed += 1
        if shapes is None: shapes = [(7, 3), (5,), (2, 1, 3)] if nparam == 3 else [tuple(p['shape']) for p in d['params']]
        case(f"{cid}.{tag}", d, hp2, shapes, seed=seed, positive=positive, **k)
    nested = any(isinstance(v, (list, dict)) for v in hp.values())
    C("seed_shapes", hp, steps=25)
    C("zeros", hp, mode='zeros')
    C("wide", hp, mode='wide')
    C("tinygrad", hp, scale=1e-6)
    C("hugegrad", hp, scale=1e4)
    if nparam == 3:
        C("big", hp, shapes=[(40, 24), (24,), (3, 1, 8)])
        if 'muon' not in cid and 'galore' not in cid:
            C("scalars", hp, shapes=[(), (1,), (1, 1)])
    for k in DEC:
        if k in hp and isinstance(hp[k], (int, float)) or (k in ('b1', 'b2', 'decay') and not nested):
            for v, t in [(0.99999, '5'), (0.999999, '6'), (0.0, '0')]:
                C(f"{k}_{t}", dict(hp, **{k: v}))
