# optax 0.2.8 contrib.muon cases with the options beyond the shared sets (case format of shared/reference).
# usage: python scripts/gen_optax_muon_cases.py OUT_DIR   (needs optax==0.2.8 and jax)
import json, sys, numpy as np, jax, jax.numpy as jnp, optax
from optax.contrib import muon, MuonDimensionNumbers as DN
out = sys.argv[1]
def dims(d):
    if d is None: return None
    return DN(reduction_axis=tuple(d['reduction_axis']) if isinstance(d['reduction_axis'], list) else d['reduction_axis'],
              output_axis=tuple(d['output_axis']) if isinstance(d['output_axis'], list) else d['output_axis'])
def case(name, hp, shapes, steps=8, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[(scale * rng.standard_normal(s)).astype(np.float32) for s in shapes] for _ in range(steps)]
    kw = dict(hp)
    if 'muon_weight_dimension_numbers' in kw:
        kw['muon_weight_dimension_numbers'] = [dims(d) for d in kw['muon_weight_dimension_numbers']]
    if 'ns_coeffs' in kw and isinstance(kw['ns_coeffs'], list):
        kw['ns_coeffs'] = tuple(tuple(r) for r in kw['ns_coeffs']) if isinstance(kw['ns_coeffs'][0], list) else tuple(kw['ns_coeffs'])
    if kw.get('mu_dtype') == 'bfloat16': kw['mu_dtype'] = jnp.bfloat16
    tx = muon(**kw)
    p = [jnp.asarray(x) for x in params]
    st = tx.init(p)
    expected = []
    for g in grads:
        u, st = tx.update([jnp.asarray(x) for x in g], st, p)
        p = optax.apply_updates(p, u)
        expected.append([np.asarray(x, np.float32).ravel().tolist() for x in p])
    d = {"id": f"optax.contrib.muon.{name}", "source": "optax 0.2.8", "optimizer": "contrib.muon", "hparams": hp,
         "dtype": "float32", "steps": steps, "tolerance": {"rel": 1e-3, "abs": 4e-6},
         "params": [{"shape": list(s), "init": x.ravel().tolist()} for s, x in zip(shapes, params)],
         "grads": [[x.ravel().tolist() for x in g] for g in grads], "expected": expected}
    json.dump(d, open(f"{out}/optax.contrib.muon.{name}.json", "w"))
S = [(6, 4), (4,), (3, 2, 2), (5, 7)]
case("adaptive", {"learning_rate": 0.02, "adaptive": True}, S, seed=1)
case("spectral", {"learning_rate": 0.02, "preconditioning": "spectral"}, S, seed=2)
case("aol", {"learning_rate": 0.02, "preconditioning": "aol"}, S, seed=3)
case("schatten", {"learning_rate": 0.02, "preconditioning": "schatten", "ns_steps": 4}, S, seed=4)
case("dion", {"learning_rate": 0.02, "ns_coeffs": "dion"}, S, seed=5)
case("standard_preset", {"learning_rate": 0.02, "ns_coeffs": "standard", "ns_steps": 3}, S, seed=6)
case("coeff_rows", {"learning_rate": 0.02, "ns_coeffs": [[3.4445, -4.775, 2.0315], [3.0, -3.2, 1.2], [2.8, -3.0, 1.2]], "ns_steps": 5}, S, seed=7)
case("consistent_rms", {"learning_rate": 0.02, "consistent_rms": 0.2, "weight_decay": 0.1}, S, seed=8)
case("mu_bf16", {"learning_rate": 0.02, "mu_dtype": "bfloat16", "nesterov": False}, S, seed=9)
case("wd_mask", {"learning_rate": 0.02, "weight_decay": 0.1, "weight_decay_mask": [True, True, False, False]}, S, seed=10)
case("dims", {"learning_rate": 0.02, "muon_weight_dimension_numbers": [None, None, {"reduction_axis": [0, 1], "output_axis": 2}, {"reduction_axis": 0, "output_axis": 1}]}, S, seed=11)
case("dims_batch", {"learning_rate": 0.02, "consistent_rms": 0.2, "muon_weight_dimension_numbers": [{"reduction_axis": 1, "output_axis": 0}, None, {"reduction_axis": 1, "output_axis": 2}, None]}, S, seed=12)
case("everything", {"learning_rate": 0.01, "adaptive": True, "preconditioning": "aol", "ns_coeffs": "dion", "ns_steps": 5, "mu_dtype": "bfloat16", "weight_decay": 0.05, "weight_decay_mask": [False, True, True, True], "adam_weight_decay": 0.01}, S, seed=13)
case("tall_wide", {"learning_rate": 0.02, "preconditioning": "schatten", "adaptive": True}, [(12, 3), (3, 12), (7,)], seed=14)
