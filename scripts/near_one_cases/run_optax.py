"""`compute(d)`: the `expected` trajectory of a grads-form optax case (wrappers included), from
the optimizer builder of `scripts/wrapper_cases/gen_wrappers.py` and the argument conversions of
`scripts/option_cases/common.py`."""
import sys, os, json, functools, numpy as np, jax, jax.numpy as jnp, optax
from optax import contrib
jax.config.update("jax_platform_name", "cpu")
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, os.path.join(SCRIPTS, 'option_cases'))
src = open(os.path.join(SCRIPTS, 'wrapper_cases', 'gen_wrappers.py')).read()
src = src[src.index('def plain_kwargs'):src.index('def case(')]
from common import conv, fn
exec(src)
def compute(d):
    opt, hp = d['optimizer'], d['hparams']
    params = [np.array(p['init'], np.float32).reshape(p['shape']) for p in d['params']]
    feed = [[np.array(x, np.float32).reshape(p['shape']) for x, p in zip(g, d['params'])] for g in d['grads']]
    for (t, i, e) in d.get('nan_grads', []):
        feed[t][i].reshape(-1)[e] = np.nan
    lrs = d.get('lr_per_step')
    if lrs is not None:
        n, kw = hp['inner']; kw = dict(kw); kw['learning_rate'] = lrs[0]
        tx = optax.inject_hyperparams(fn(n))(**plain_kwargs(kw))
    else:
        tx = mk(opt, hp)
    p = [jnp.asarray(x) for x in params]
    if opt == 'lookahead': p = optax.LookaheadParams.init_synced(p)
    st = tx.init(p); exp = []
    for t, g in enumerate(feed):
        if lrs is not None: st.hyperparams['learning_rate'] = jnp.asarray(lrs[t], jnp.float32)
        u, st = tx.update([jnp.asarray(x) for x in g], st, p)
        p = optax.apply_updates(p, u)
        rec = p.slow if opt == 'lookahead' else p
        exp.append([np.asarray(x, np.float32).ravel().tolist() for x in rec])
    return exp
