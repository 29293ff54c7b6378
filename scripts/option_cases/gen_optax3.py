import sys
sys.argv = [sys.argv[0], sys.argv[1], 'skip']
exec(open('gen_optax.py').read().split("n = 0")[0])
def mk2(name, hp):
    if name == 'multisteps':
        return optax.MultiSteps(mk(*hp['inner']), every_k_schedule=hp['every_k'], use_grad_mean=hp.get('use_grad_mean', True))
    if name == 'lookahead':
        return optax.lookahead(mk(*hp['inner']), sync_period=hp['sync_period'], slow_step_size=hp['slow_step_size'])
    if name == 'partition':
        return optax.partition({k: mk(*v) for k, v in hp['transforms'].items()}, hp['param_labels'])
    return mk(name, hp)
def case2(opt, name, hp, steps=10, seed=0, shapes=S):
    cid = f"optax.{opt}.{name}"
    params, grads = data(shapes, steps, seed, 1.0)
    tx = mk2(opt, hp)
    if opt == 'multisteps': tx = tx.gradient_transformation()
    p = [jnp.asarray(x) for x in params]; st = tx.init(p); expected = []
    for g in grads:
        u, st = tx.update([jnp.asarray(x) for x in g], st, p)
        p = optax.apply_updates(p, u)
        expected.append([np.asarray(x, np.float32).ravel().tolist() for x in (optax.tree_utils.tree_get(st, 'slow') if False else p)])
    write(out, cid, "optax 0.2.8", opt, hp, shapes, steps, params, grads, expected)
case2("multisteps", "sum", {"every_k": 3, "use_grad_mean": False, "inner": ["adam", {"learning_rate": 0.02}]}, seed=80)
case2("partition", "lion_sgd", {"transforms": {"a": ["lion", {"learning_rate": 0.01, "b1": 0.5}], "b": ["sgd", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}]}, "param_labels": ["a", "b", "a"]}, seed=81)
case("chain", "apply_every_ema", {"links": [["ema", {"decay": 0.5}], ["apply_every", {"k": 2}], ["scale", {"step_size": -0.1}]]}, seed=82)
case("chain", "clip_centralize", {"links": [["centralize", {}], ["clip", {"max_delta": 0.3}], ["clip_by_global_norm", {"max_norm": 1.0}], ["scale", {"step_size": -0.1}]]}, seed=83)
case("contrib.mechanize", "lion", {"base_optimizer": ["lion", {"learning_rate": 0.01}], "num_betas": 3, "weight_decay": 0.1, "s_init": 1e-4}, seed=84)
case("adafactor", "mom_lr_sched_nofactor", {"learning_rate": cos(0.05), "momentum": 0.5, "factored": False, "multiply_by_parameter_scale": False}, seed=85)
