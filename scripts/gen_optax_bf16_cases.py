# optax 0.2.8 cases of the Adam family with mu_dtype=bfloat16 (case format of shared/reference).
# usage: python scripts/gen_optax_bf16_cases.py OUT_DIR   (needs optax==0.2.8 and jax)
import json, sys, numpy as np, jax, jax.numpy as jnp, optax
out = sys.argv[1]
def case(fn, name, hp, shapes, steps=10, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[(scale * rng.standard_normal(s)).astype(np.float32) for s in shapes] for _ in range(steps)]
    kw = dict(hp); kw['mu_dtype'] = jnp.bfloat16
    tx = eval(fn)(**kw)
    p = [jnp.asarray(x) for x in params]; st = tx.init(p); expected = []
    for g in grads:
        u, st = tx.update([jnp.asarray(x) for x in g], st, p)
        p = optax.apply_updates(p, u)
        expected.append([np.asarray(x, np.float32).ravel().tolist() for x in p])
    hp = dict(hp); hp['mu_dtype'] = 'bfloat16'
    d = {"id": f"optax.{name}", "source": "optax 0.2.8", "optimizer": name.rsplit('.',1)[0] if name.count('.')>1 else name.split('.')[0], "hparams": hp,
         "dtype": "float32", "steps": steps, "tolerance": {"rel": 1e-3, "abs": 4e-6},
         "params": [{"shape": list(s), "init": x.ravel().tolist()} for s, x in zip(shapes, params)],
         "grads": [[x.ravel().tolist() for x in g] for g in grads], "expected": expected}
    json.dump(d, open(f"{out}/optax.{name}.json", "w"))
S = [(6, 4), (7,)]
case("optax.adam", "adam.mu_bf16", {"learning_rate": 0.01}, S, seed=1)
case("optax.adamw", "adamw.mu_bf16", {"learning_rate": 0.01, "weight_decay": 0.1}, S, seed=2)
case("optax.adam", "adam.mu_bf16_nesterov", {"learning_rate": 0.01, "nesterov": True}, S, seed=3)
case("optax.nadamw", "nadamw.mu_bf16", {"learning_rate": 0.01, "weight_decay": 0.1}, S, seed=4)
case("optax.amsgrad", "amsgrad.mu_bf16", {"learning_rate": 0.01}, S, seed=5)
case("optax.optimistic_adam_v2", "optimistic_adam_v2.mu_bf16", {"learning_rate": 0.01}, S, seed=6)
case("optax.optimistic_adam", "optimistic_adam.mu_bf16", {"learning_rate": 0.01}, S, seed=7)
