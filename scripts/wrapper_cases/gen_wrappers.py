"""Cases for optax 0.2.8 wrappers and compositions (non-default arguments, unusual nestings).

Usage: python gen_wrappers.py OUTDIR
Case format: ../shared/reference/README.md and reference-r2/README.md.
"""
import sys, os, json, functools, traceback
import numpy as np, jax, jax.numpy as jnp, optax
from optax import contrib

jax.config.update("jax_platform_name", "cpu")
out = sys.argv[1] if len(sys.argv) > 1 else "cases"
os.makedirs(out, exist_ok=True)
ONLY = sys.argv[2] if len(sys.argv) > 2 else None

# The data and the JSON-to-optax helpers of the option cases (the same draws for the same seed).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "option_cases"))
from common import S, data, conv, fn  # noqa: E402


def plain_kwargs(hp):
    kw = {}
    for k, v in hp.items():
        if k in ('betas',) and isinstance(v, list):
            kw[k] = tuple(v)
        elif k == 'init_step':
            kw[k] = tuple(v)
        elif k in ('base_optimizer',):
            kw[k] = mk(*v)
        else:
            kw[k] = conv(v)
    return kw


def skip_fn(spec):
    if spec is None:
        return None
    n, kw = spec
    if n == 'skip_not_finite':
        return optax.skip_not_finite
    if n == 'skip_large_updates':
        return functools.partial(optax.skip_large_updates, **kw)
    raise ValueError(n)


def mk(name, hp):
    name = name[len('optax.'):] if name.startswith('optax.') else name
    if name == 'chain':
        return optax.chain(*[mk(n, k) for n, k in hp['links']])
    if name in ('multisteps', 'MultiSteps'):
        inner = hp.get('inner', hp.get('opt'))
        ek = hp.get('every_k', hp.get('every_k_schedule'))
        return optax.MultiSteps(mk(*inner), every_k_schedule=ek, use_grad_mean=hp.get('use_grad_mean', True),
                                should_skip_update_fn=skip_fn(hp.get('should_skip_update_fn'))).gradient_transformation()
    if name == 'lookahead':
        inner = hp.get('inner', hp.get('fast_optimizer'))
        return optax.lookahead(mk(*inner), sync_period=hp['sync_period'], slow_step_size=hp['slow_step_size'],
                               reset_state=hp.get('reset_state', False))
    if name in ('partition', 'multi_transform'):
        return fn(name)({k: mk(*v) for k, v in hp['transforms'].items()}, hp['param_labels'])
    if name == 'masked':
        return optax.masked(mk(*hp['inner']), hp['mask'])
    if name == 'freeze':
        return optax.freeze(hp['mask'])
    if name == 'selective_transform':
        return optax.selective_transform(mk(*hp['optimizer']), freeze_mask=hp['freeze_mask'])
    if name == 'apply_if_finite':
        return optax.apply_if_finite(mk(*hp['inner']), hp['max_consecutive_errors'])
    if name == 'inject_hyperparams':
        n, kw = hp['inner']
        return optax.inject_hyperparams(fn(n))(**plain_kwargs(kw))
    return fn(name)(**plain_kwargs(hp))


def case(opt, name, hp, shapes=S, steps=12, seed=0, scale=1.0, positive=False, nan=None, lrs=None, note=None):
    cid = f"optax.{opt}.{name}"
    if ONLY and ONLY not in cid:
        return
    try:
        params, grads = data(shapes, steps, seed, scale)
        if positive:
            params = [np.abs(p) for p in params]
        feed = [[g.copy() for g in gs] for gs in grads]
        for (t, i, e) in (nan or []):
            feed[t][i].reshape(-1)[e] = np.nan
            grads[t][i].reshape(-1)[e] = 0.0
        if lrs is not None:
            lrs = [float(np.float32(x)) for x in lrs]
            n, kw = hp['inner']
            kw['learning_rate'] = lrs[0]
            tx = optax.inject_hyperparams(fn(n))(**plain_kwargs(kw))
        else:
            tx = mk(opt, hp)
        p = [jnp.asarray(x) for x in params]
        if opt == 'lookahead':
            p = optax.LookaheadParams.init_synced(p)
        st = tx.init(p)
        expected = []
        for t, g in enumerate(feed):
            if lrs is not None:
                st.hyperparams['learning_rate'] = jnp.asarray(lrs[t], jnp.float32)
            u, st = tx.update([jnp.asarray(x) for x in g], st, p)
            p = optax.apply_updates(p, u)
            rec = p.slow if opt == 'lookahead' else p
            expected.append([np.asarray(x, np.float32).ravel().tolist() for x in rec])
        if any(not np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(rec)):
            print("NONFINITE", cid)
            return
        d = {"id": cid, "source": f"optax 0.2.8 optax.{opt} (gen_wrappers.py)", "optimizer": opt, "hparams": hp,
             "dtype": "float32", "steps": steps, "tolerance": {"rel": 1e-3, "abs": 4e-6},
             "params": [{"shape": list(s), "init": x.ravel().tolist()} for s, x in zip(shapes, params)],
             "grads": [[x.ravel().tolist() for x in g] for g in grads], "expected": expected}
        if nan:
            d["nan_grads"] = [list(x) for x in nan]
        if lrs is not None:
            d["lr_per_step"] = lrs
        if note:
            d["note"] = note
        json.dump(d, open(f"{out}/{cid}.json", "w"))
    except Exception as e:
        print("GENFAIL", cid, repr(e)[:400])


cos = lambda v=0.02, n=8: {"schedule": "cosine_decay_schedule", "init_value": v, "decay_steps": n, "alpha": 0.1}
wcos = lambda v=0.02: {"schedule": "warmup_cosine_decay_schedule", "init_value": 0.0, "peak_value": v,
                       "warmup_steps": 3, "decay_steps": 10, "end_value": 0.001}
lin = lambda a, b, n=10: {"schedule": "linear_schedule", "init_value": a, "end_value": b, "transition_steps": n}
M = [True, False, True]
S4 = [(6, 4), (4,), (3, 2, 2)]
S_ODD = [(1, 5), (7,), (2, 1, 3), (3,)]
S_CONV = [(2, 2, 2, 3), (5,), (3, 4)]
S_ONE = [(4, 4)]
S_FIVE = [(3, 2), (2,), (4,), (2, 2, 2), (1,)]


def lr_seq(n, base, seed):
    r = np.random.default_rng(seed)
    return list(base * (0.5 + r.random(n)))


# ---------------- chains ----------------
case("chain", "gnorm_adam_nest_maskdecay_sched", {"links": [
    ["clip_by_global_norm", {"max_norm": 0.5}],
    ["scale_by_adam", {"b1": 0.8, "b2": 0.95, "nesterov": True, "eps": 1e-6}],
    ["add_decayed_weights", {"weight_decay": 0.05, "mask": M}],
    ["scale_by_learning_rate", {"learning_rate": cos(0.03)}]]}, seed=101)
case("chain", "clip_trace_nesterov", {"links": [
    ["clip", {"max_delta": 0.3}], ["trace", {"decay": 0.9, "nesterov": True}], ["scale", {"step_size": -0.05}]]},
    seed=102, steps=14)
case("chain", "ema_debias_gnorm_noflip", {"links": [
    ["ema", {"decay": 0.8, "debias": True}], ["clip_by_global_norm", {"max_norm": 1.0}],
    ["scale_by_learning_rate", {"learning_rate": 0.05, "flip_sign": False}]]}, seed=103)
case("chain", "centralize_rms_trace", {"links": [
    ["centralize", {}], ["scale_by_rms", {"decay": 0.7, "eps": 1e-4}], ["trace", {"decay": 0.5}],
    ["scale", {"step_size": -0.01}]]}, shapes=S_ODD, seed=104)
case("chain", "normalize_trace_nesterov", {"links": [
    ["normalize_by_update_norm", {"scale_factor": 2.0, "eps": 1e-4}], ["trace", {"decay": 0.7, "nesterov": True}],
    ["scale", {"step_size": -0.05}]]}, seed=105)
case("chain", "agc_odd_shapes_adam", {"links": [
    ["adaptive_grad_clip", {"clipping": 0.05, "eps": 0.01}], ["scale_by_adam", {}], ["scale", {"step_size": -0.01}]]},
    shapes=S_ODD, seed=106)
case("chain", "agc_conv_shapes_sgd", {"links": [
    ["adaptive_grad_clip", {"clipping": 0.02}], ["scale", {"step_size": -0.1}]]}, shapes=S_CONV, seed=107, scale=3.0)
case("chain", "agc_5d", {"links": [
    ["adaptive_grad_clip", {"clipping": 0.03}], ["scale", {"step_size": -0.1}]]},
    shapes=[(2, 2, 1, 2, 3), (3,)], seed=108, scale=3.0)
case("chain", "zero_nans_gnorm_adamw", {"links": [
    ["zero_nans", {}], ["clip_by_global_norm", {"max_norm": 2.0}],
    ["adamw", {"learning_rate": 0.01, "weight_decay": 0.2, "mask": [False, True, True], "nesterov": True}]]},
    seed=109, nan=[[2, 0, 3], [2, 2, 0], [5, 1, 2], [6, 0, 14]])
case("chain", "sgd_nonneg_big_lr", {"links": [
    ["sgd", {"learning_rate": 0.3, "momentum": 0.5}], ["keep_params_nonnegative", {}]]}, seed=110, positive=True)
case("chain", "maskdecay_sgd_nesterov_nonneg", {"links": [
    ["add_decayed_weights", {"weight_decay": 0.3, "mask": [True, True, False]}],
    ["sgd", {"learning_rate": 0.2, "momentum": 0.9, "nesterov": True}],
    ["keep_params_nonnegative", {}]]}, seed=111, positive=True)
case("chain", "nonneg_not_last", {"links": [
    ["scale", {"step_size": -0.4}], ["keep_params_nonnegative", {}], ["scale", {"step_size": 0.5}]]},
    seed=112, positive=True)
case("chain", "sign_trace_sbl_wcos", {"links": [
    ["scale_by_sign", {}], ["trace", {"decay": 0.6}], ["scale_by_learning_rate", {"learning_rate": wcos(0.01)}]]},
    seed=113, steps=14)
case("chain", "adam_gnorm_mid_ema", {"links": [
    ["scale_by_adam", {"b1": 0.5}], ["clip_by_global_norm", {"max_norm": 0.8}], ["ema", {"decay": 0.6}],
    ["scale", {"step_size": -0.02}]]}, seed=114)
case("chain", "long9", {"links": [
    ["zero_nans", {}], ["clip", {"max_delta": 2.0}], ["centralize", {}], ["clip_by_global_norm", {"max_norm": 1.5}],
    ["scale_by_adam", {"eps_root": 1e-6, "b2": 0.99}], ["add_decayed_weights", {"weight_decay": 0.1}],
    ["trace", {"decay": 0.5, "nesterov": True}], ["ema", {"decay": 0.9, "debias": True}],
    ["scale_by_learning_rate", {"learning_rate": cos(0.05, 10)}]]}, seed=115, steps=14, nan=[[4, 2, 5]])
case("chain", "masked_adam_masked_trace", {"links": [
    ["masked", {"inner": ["scale_by_adam", {"b1": 0.7}], "mask": [True, False, True]}],
    ["masked", {"inner": ["trace", {"decay": 0.9, "nesterov": True}], "mask": [False, True, True]}],
    ["scale", {"step_size": -0.02}]]}, seed=116)
case("chain", "nested_chains", {"links": [
    ["chain", {"links": [["clip", {"max_delta": 1.0}], ["scale_by_adam", {}]]}],
    ["chain", {"links": [["add_decayed_weights", {"weight_decay": 0.05}],
                         ["scale_by_learning_rate", {"learning_rate": 0.02}]]}]]}, seed=117)
case("chain", "adam_freeze_mid_decay", {"links": [
    ["scale_by_adam", {}], ["freeze", {"mask": [True, False, False]}], ["add_decayed_weights", {"weight_decay": 0.1}],
    ["scale", {"step_size": -0.05}]]}, seed=118)
case("chain", "adam_apply_every4", {"links": [
    ["adam", {"learning_rate": 0.02, "b1": 0.5}], ["apply_every", {"k": 4}]]}, seed=119, steps=13)
case("chain", "rss_apply_every3_trace", {"links": [
    ["scale_by_rss", {"initial_accumulator_value": 0.01}], ["apply_every", {"k": 3}], ["trace", {"decay": 0.9}],
    ["scale", {"step_size": -0.05}]]}, seed=120)
case("chain", "lion_mask_sched_apply_every2", {"links": [
    ["lion", {"learning_rate": cos(0.01), "weight_decay": 0.3, "mask": [True, True, False], "b1": 0.5}],
    ["apply_every", {"k": 2}]]}, seed=121)
case("chain", "decay_sched_mask_yogi", {"links": [
    ["add_decayed_weights", {"weight_decay": lin(0.5, 0.0, 8), "mask": [False, True, True]}],
    ["scale_by_yogi", {"b1": 0.6}], ["scale_by_learning_rate", {"learning_rate": 0.02}]]}, seed=122)
case("chain", "ema_nodebias_normalize_clip", {"links": [
    ["ema", {"decay": 0.5, "debias": False}], ["normalize_by_update_norm", {}], ["clip", {"max_delta": 0.2}],
    ["scale", {"step_size": -0.1}]]}, seed=123)
case("chain", "two_schedules", {"links": [
    ["scale_by_learning_rate", {"learning_rate": wcos(0.5)}],
    ["scale_by_learning_rate", {"learning_rate": cos(0.2, 6), "flip_sign": False}]]}, seed=124)
case("chain", "set_to_zero_masked_then_adam", {"links": [
    ["masked", {"inner": ["set_to_zero", {}], "mask": [False, False, True]}], ["adam", {"learning_rate": 0.02}]]},
    seed=125)
case("chain", "trust_ratio_masked", {"links": [
    ["scale_by_adam", {}], ["masked", {"inner": ["scale_by_trust_ratio", {}], "mask": [True, False, True]}],
    ["scale", {"step_size": -0.02}]]}, seed=126)
case("chain", "masked_gnorm_then_sgd", {"links": [
    ["masked", {"inner": ["clip_by_global_norm", {"max_norm": 0.3}], "mask": [True, True, False]}],
    ["sgd", {"learning_rate": 0.05, "momentum": 0.8}]]}, seed=127, scale=2.0)
case("chain", "multisteps_in_chain", {"links": [
    ["clip", {"max_delta": 1.5}], ["multisteps", {"every_k": 2, "inner": ["adam", {"learning_rate": 0.02}]}],
    ["scale", {"step_size": 0.5}]]}, seed=128)
case("chain", "apply_if_finite_in_chain", {"links": [
    ["apply_if_finite", {"inner": ["scale_by_adam", {}], "max_consecutive_errors": 2}],
    ["scale", {"step_size": -0.02}]]}, seed=129, nan=[[3, 0, 0], [7, 1, 2]])
case("chain", "contrib_normalize_trace", {"links": [
    ["contrib.normalize", {}], ["trace", {"decay": 0.5}], ["scale", {"step_size": -0.1}]]}, seed=130)
case("chain", "partition_in_chain_then_decay", {"links": [
    ["partition", {"transforms": {"a": ["scale_by_adam", {}], "b": ["scale_by_sign", {}]},
                   "param_labels": ["b", "a", "a"]}],
    ["add_decayed_weights", {"weight_decay": 0.01}], ["scale_by_learning_rate", {"learning_rate": 0.02}]]}, seed=131)
case("chain", "gnorm_only_one_param", {"links": [
    ["clip_by_global_norm", {"max_norm": 0.1}], ["trace", {"decay": 0.3, "nesterov": True}],
    ["scale_by_learning_rate", {"learning_rate": lin(0.1, 0.01, 8)}]]}, shapes=S_ONE, seed=132, steps=10)
case("chain", "identity_links", {"links": [
    ["identity", {}], ["scale_by_adam", {}], ["identity", {}], ["scale", {"step_size": -0.01}]]}, seed=133)
case("chain", "clip_block_rms_after_adam_nonneg", {"links": [
    ["scale_by_adam", {}], ["clip_by_block_rms", {"threshold": 0.5}], ["scale", {"step_size": -0.2}],
    ["keep_params_nonnegative", {}]]}, seed=134, positive=True)

# ---------------- MultiSteps ----------------
case("multisteps", "k3_sum_adamw", {"every_k": 3, "use_grad_mean": False,
                                    "inner": ["adamw", {"learning_rate": 0.01, "weight_decay": 0.3}]}, seed=201)
case("multisteps", "k2_skipnf_chain", {"every_k": 2, "inner": ["chain", {"links": [
    ["clip_by_global_norm", {"max_norm": 1.0}], ["scale_by_adam", {}], ["scale", {"step_size": -0.02}]]}],
    "should_skip_update_fn": ["skip_not_finite", {}]}, seed=202, steps=14, nan=[[1, 0, 0], [2, 1, 1], [5, 2, 7]])
case("multisteps", "k3_skiplarge_sgd_nesterov", {"every_k": 3, "inner": ["sgd", {
    "learning_rate": 0.05, "momentum": 0.9, "nesterov": True}],
    "should_skip_update_fn": ["skip_large_updates", {"max_squared_norm": 60.0}]}, seed=203, steps=15)
case("multisteps", "k1_skiplarge_nan", {"every_k": 1, "inner": ["adam", {"learning_rate": 0.02}],
                                       "should_skip_update_fn": ["skip_large_updates", {"max_squared_norm": 1e6}]},
     seed=204, nan=[[0, 0, 1], [6, 2, 3]])
case("multisteps", "k4_sum_skipnf_consecutive", {"every_k": 4, "use_grad_mean": False,
                                                "inner": ["sgd", {"learning_rate": 0.02}],
                                                "should_skip_update_fn": ["skip_not_finite", {}]},
     seed=205, steps=16, nan=[[3, 0, 0], [4, 1, 0], [5, 2, 0], [6, 0, 1]])
case("multisteps", "k2_lion_sched", {"every_k": 2, "inner": ["lion", {"learning_rate": cos(0.01, 5), "b1": 0.5}]},
     seed=206, steps=14)
case("multisteps", "nested_multisteps", {"every_k": 2, "inner": ["multisteps", {
    "every_k": 3, "use_grad_mean": False, "inner": ["adam", {"learning_rate": 0.05}]}]}, seed=207, steps=16)
case("multisteps", "k2_partition", {"every_k": 2, "inner": ["partition", {
    "transforms": {"x": ["adam", {"learning_rate": 0.02}], "y": ["sgd", {"learning_rate": 0.1, "momentum": 0.5}]},
    "param_labels": ["x", "y", "y"]}]}, seed=208)
case("multisteps", "k5_mean_schedfree", {"every_k": 5, "inner": ["contrib.schedule_free_sgd", {
    "learning_rate": 0.1}]}, seed=209, steps=15)
case("multisteps", "opt_every_k_schedule_names", {"every_k_schedule": 3, "opt": ["adam", {"learning_rate": 0.02}],
                                                   "use_grad_mean": True}, seed=210)
case("multisteps", "k2_skiplarge_tight", {"every_k": 2, "use_grad_mean": False,
                                          "inner": ["rmsprop", {"learning_rate": 0.01, "momentum": 0.5}],
                                          "should_skip_update_fn": ["skip_large_updates",
                                                                    {"max_squared_norm": 20.0}]},
     seed=211, steps=15, nan=[[9, 1, 1]])
case("multisteps", "k3_masked_inner", {"every_k": 3, "inner": ["masked", {
    "inner": ["adam", {"learning_rate": 0.02}], "mask": [True, False, True]}]}, seed=212)
case("multisteps", "k2_apply_if_finite_inner", {"every_k": 2, "inner": ["apply_if_finite", {
    "inner": ["adam", {"learning_rate": 0.02}], "max_consecutive_errors": 5}],
    "should_skip_update_fn": ["skip_not_finite", {}]}, seed=213, nan=[[4, 0, 2]])

# ---------------- apply_if_finite ----------------
case("apply_if_finite", "adamw_three_consecutive", {"inner": ["adamw", {"learning_rate": 0.02, "weight_decay": 0.2}],
                                                    "max_consecutive_errors": 3},
     seed=301, steps=14, nan=[[2, 0, 1], [3, 1, 0], [4, 2, 5]])
case("apply_if_finite", "zero_nans_inner_max1", {"inner": ["chain", {"links": [
    ["zero_nans", {}], ["adam", {"learning_rate": 0.02}]]}], "max_consecutive_errors": 1},
    seed=302, steps=14, nan=[[3, 0, 1], [4, 0, 2], [5, 1, 0], [8, 2, 2], [10, 0, 0], [11, 0, 3]])
case("apply_if_finite", "zero_nans_inner_max0", {"inner": ["chain", {"links": [
    ["zero_nans", {}], ["sgd", {"learning_rate": 0.05, "momentum": 0.9}]]}], "max_consecutive_errors": 0},
    seed=303, nan=[[1, 0, 1], [5, 2, 2], [6, 2, 3]])
case("apply_if_finite", "sgd_mom_nan_first", {"inner": ["sgd", {"learning_rate": 0.05, "momentum": 0.9}],
                                              "max_consecutive_errors": 2}, seed=304, nan=[[0, 1, 1], [7, 0, 2]])
case("apply_if_finite", "partition_inner", {"inner": ["partition", {
    "transforms": {"a": ["lion", {"learning_rate": 0.01}], "b": ["adagrad", {"learning_rate": 0.1}]},
    "param_labels": ["a", "b", "a"]}], "max_consecutive_errors": 4}, seed=305, nan=[[2, 1, 0], [3, 1, 1]])
case("apply_if_finite", "multisteps_inner", {"inner": ["multisteps", {
    "every_k": 3, "inner": ["adam", {"learning_rate": 0.03}]}], "max_consecutive_errors": 10},
    seed=306, steps=15, nan=[[1, 0, 0], [7, 2, 1]])
case("apply_if_finite", "zero_nans_count_reset", {"inner": ["chain", {"links": [
    ["zero_nans", {}], ["scale_by_adam", {}], ["scale", {"step_size": -0.02}]]}], "max_consecutive_errors": 2},
    seed=307, steps=16, nan=[[1, 0, 0], [2, 0, 0], [4, 0, 0], [5, 0, 0], [6, 0, 0], [7, 1, 0], [9, 2, 0]])

# ---------------- lookahead ----------------
case("lookahead", "sync1_adam", {"sync_period": 1, "slow_step_size": 0.5, "inner": ["adam", {"learning_rate": 0.05}]},
     seed=401)
case("lookahead", "sync3_full_sgd", {"sync_period": 3, "slow_step_size": 1.0, "inner": ["sgd", {
    "learning_rate": 0.05, "momentum": 0.9, "nesterov": True}]}, seed=402)
case("lookahead", "sync4_chain", {"sync_period": 4, "slow_step_size": 0.2, "inner": ["chain", {"links": [
    ["clip_by_global_norm", {"max_norm": 1.0}], ["adamw", {"learning_rate": 0.05, "weight_decay": 0.1}]]}]},
    seed=403, steps=16)
case("lookahead", "sync2_slow0", {"sync_period": 2, "slow_step_size": 0.0, "inner": ["adam", {"learning_rate": 0.05}]},
     seed=404)
case("lookahead", "reset_state_adam", {"sync_period": 3, "slow_step_size": 0.5, "reset_state": True,
                                       "inner": ["adam", {"learning_rate": 0.05}]}, seed=405)
case("lookahead", "sync5_lion", {"sync_period": 5, "slow_step_size": 0.7, "fast_optimizer": ["lion", {
    "learning_rate": 0.01, "weight_decay": 0.1}]}, seed=406, steps=16)
case("lookahead", "multisteps_fast", {"sync_period": 2, "slow_step_size": 0.5, "inner": ["multisteps", {
    "every_k": 2, "inner": ["adam", {"learning_rate": 0.05}]}]}, seed=407, steps=16)
case("lookahead", "reset_state_sgd_mom", {"sync_period": 2, "slow_step_size": 0.8, "reset_state": True,
                                          "inner": ["sgd", {"learning_rate": 0.05, "momentum": 0.9}]}, seed=408)
case("lookahead", "sync3_sched_inner", {"sync_period": 3, "slow_step_size": 0.5, "inner": ["adam", {
    "learning_rate": wcos(0.05)}]}, seed=409, steps=14)

# ---------------- masked / freeze / partition / selective_transform ----------------
case("masked", "adam_top", {"inner": ["adam", {"learning_rate": 0.02}], "mask": [False, True, False]}, seed=501,
     scale=0.01)
case("masked", "chain_all_true_scalar", {"inner": ["chain", {"links": [
    ["scale_by_adam", {}], ["scale", {"step_size": -0.02}]]}], "mask": True}, seed=502)
case("masked", "nested_masked", {"inner": ["masked", {"inner": ["sgd", {"learning_rate": 0.1, "momentum": 0.9}],
                                                      "mask": [True, False, False]}], "mask": [True, False, True]},
     seed=503, scale=0.05)
case("masked", "gnorm_inner", {"inner": ["chain", {"links": [
    ["clip_by_global_norm", {"max_norm": 0.5}], ["scale", {"step_size": -0.1}]]}], "mask": [True, True, False]},
    seed=504, scale=0.02)
case("masked", "all_false", {"inner": ["adam", {"learning_rate": 0.02}], "mask": False}, seed=505, scale=0.01)
case("partition", "three_labels", {"transforms": {
    "a": ["adamw", {"learning_rate": 0.02, "weight_decay": 0.1}], "b": ["lion", {"learning_rate": 0.005}],
    "c": ["chain", {"links": [["clip", {"max_delta": 0.5}], ["sgd", {"learning_rate": 0.05, "momentum": 0.9}]]}]},
    "param_labels": ["c", "a", "b", "a", "c"]}, shapes=S_FIVE, seed=506)
case("partition", "single_string_label", {"transforms": {"all": ["adam", {"learning_rate": 0.02}]},
                                          "param_labels": "all"}, seed=507)
case("partition", "unused_label", {"transforms": {"a": ["adam", {"learning_rate": 0.02}],
                                                  "b": ["sgd", {"learning_rate": 0.1}],
                                                  "unused": ["lion", {"learning_rate": 0.01}]},
                                   "param_labels": ["a", "b", "a"]}, seed=508)
case("partition", "multisteps_label", {"transforms": {
    "a": ["multisteps", {"every_k": 3, "inner": ["adam", {"learning_rate": 0.05}]}],
    "b": ["adam", {"learning_rate": 0.02}]}, "param_labels": ["a", "b", "a"]}, seed=509)
case("partition", "nested_partition", {"transforms": {
    "outer": ["partition", {"transforms": {"p": ["adam", {"learning_rate": 0.02}],
                                           "q": ["sgd", {"learning_rate": 0.1}]}, "param_labels": ["q", "p", "p"]}],
    "rest": ["rmsprop", {"learning_rate": 0.01}]}, "param_labels": ["outer", "rest", "outer"]}, seed=510)
case("partition", "set_to_zero_label_gnorm", {"transforms": {
    "frozen": ["set_to_zero", {}],
    "train": ["chain", {"links": [["clip_by_global_norm", {"max_norm": 0.5}], ["adam", {"learning_rate": 0.03}]]}]},
    "param_labels": ["train", "frozen", "train"]}, seed=511)
case("multi_transform", "adam_lion_sched", {"transforms": {
    "m": ["adam", {"learning_rate": cos(0.03)}], "v": ["lion", {"learning_rate": wcos(0.01)}]},
    "param_labels": ["m", "v", "m"]}, seed=512, steps=14)
case("selective_transform", "chain_freeze_first", {"optimizer": ["chain", {"links": [
    ["clip_by_global_norm", {"max_norm": 1.0}], ["adamw", {"learning_rate": 0.02, "weight_decay": 0.1}]]}],
    "freeze_mask": [True, False, False]}, seed=513)
case("selective_transform", "adamw_mask_freeze_false", {"optimizer": ["adamw", {
    "learning_rate": 0.02, "weight_decay": 0.2, "mask": [True, False, True]}], "freeze_mask": False}, seed=514)
case("selective_transform", "freeze_all", {"optimizer": ["adam", {"learning_rate": 0.02}], "freeze_mask": True},
     seed=515)
case("selective_transform", "normalize_global", {"optimizer": ["chain", {"links": [
    ["normalize_by_update_norm", {}], ["sgd", {"learning_rate": 0.1}]]}], "freeze_mask": [False, True, False]},
    seed=516)
case("chain", "freeze_scalar_true_then_adamw", {"links": [
    ["freeze", {"mask": True}], ["adamw", {"learning_rate": 0.02, "weight_decay": 0.3}]]}, seed=517)
case("adamw", "mask_all_false_nesterov", {"learning_rate": 0.02, "weight_decay": 0.5, "mask": False, "nesterov": True},
     seed=518)
case("chain", "masked_nonneg", {"links": [
    ["sgd", {"learning_rate": 0.3}], ["masked", {"inner": ["keep_params_nonnegative", {}], "mask": [True, False, True]}]]},
    seed=519, positive=True)
case("chain", "masked_agc", {"links": [
    ["masked", {"inner": ["adaptive_grad_clip", {"clipping": 0.02}], "mask": [False, True, True]}],
    ["scale", {"step_size": -0.1}]]}, seed=520, scale=2.0)

# ---------------- inject_hyperparams ----------------
def inj(name, inner_name, kw, seed, shapes=S, steps=12, base=0.01, **k):
    case("inject_hyperparams", name, {"inner": [inner_name, kw]}, lrs=lr_seq(steps, base, seed), seed=seed,
         shapes=shapes, steps=steps, **k)


inj("adamw_nesterov_mask", "adamw", {"weight_decay": 0.3, "nesterov": True, "mask": M, "b1": 0.8}, 601)
inj("lion_wd", "lion", {"weight_decay": 0.5, "b1": 0.6, "b2": 0.95}, 602, base=0.005)
inj("sgd_mom_nesterov", "sgd", {"momentum": 0.9, "nesterov": True}, 603, base=0.05)
inj("rmsprop_centered_mom", "rmsprop", {"centered": True, "momentum": 0.5, "decay": 0.8}, 604)
inj("adagrad", "adagrad", {"initial_accumulator_value": 0.01}, 605, base=0.05)
inj("radam", "radam", {"threshold": 4.5}, 606, steps=14)
inj("rprop", "rprop", {"eta_minus": 0.3}, 607, base=0.05)
inj("novograd", "novograd", {"weight_decay": 0.1}, 608)
inj("prodigy", "contrib.prodigy", {"estim_lr0": 1e-2}, 609, base=1.0)
inj("schedule_free_adamw", "contrib.schedule_free_adamw", {"warmup_steps": 3, "weight_decay": 0.05}, 610)
inj("muon", "contrib.muon", {}, 611, shapes=[(5, 3), (4,), (6, 4)], base=0.02)
inj("lamb", "lamb", {"weight_decay": 0.1}, 612)
inj("lars", "lars", {"weight_decay": 0.01, "momentum": 0.8}, 613, base=0.1)
inj("adafactor", "adafactor", {"min_dim_size_to_factor": 2}, 614)
inj("nadamw_mask", "nadamw", {"weight_decay": 0.2, "mask": [False, True, True]}, 615)
inj("yogi", "yogi", {"b1": 0.5}, 616, base=0.05)
inj("adabelief_nesterov", "adabelief", {"nesterov": True}, 617)
inj("dadapt_adamw", "contrib.dadapt_adamw", {"weight_decay": 0.1, "estim_lr0": 1e-2}, 618, base=1.0)
inj("fromage", "fromage", {}, 619, base=0.05)
inj("sm3", "sm3", {"momentum": 0.5}, 620, base=0.1)
inj("schedule_free_sgd", "contrib.schedule_free_sgd", {"warmup_steps": 2}, 621, base=0.1)
inj("ademamix", "contrib.ademamix", {"alpha": 2.0, "b3": 0.99, "weight_decay": 0.1}, 622)
inj("adan", "adan", {"weight_decay": 0.1}, 623)
inj("optimistic_gd", "optimistic_gradient_descent", {"alpha": 0.5, "beta": 2.0}, 624, base=0.05)
inj("amsgrad", "amsgrad", {}, 625)
inj("sign_sgd", "sign_sgd", {}, 626)
inj("adadelta", "adadelta", {"rho": 0.8}, 627, base=0.5)
inj("cocob", "contrib.cocob", {}, 628, base=1.0)
inj("dog", "contrib.dog", {"init_step": ["distance", 0.1]}, 629, base=1.0)
inj("madgrad", "contrib.madgrad", {"momentum": 0.5}, 630, base=0.05)
# inject_hyperparams nested (no lr_per_step): constant rate inside a chain
case("chain", "inject_nested_const", {"links": [
    ["clip", {"max_delta": 1.0}], ["inject_hyperparams", {"inner": ["adam", {"learning_rate": 0.02}]}]]}, seed=631)

# ---------------- second batch ----------------
inj("adamw_wd_schedule", "adamw", {"weight_decay": lin(0.5, 0.0, 8)}, 632)
case("inject_hyperparams", "sgd_negative_and_zero_lr", {"inner": ["sgd", {"momentum": 0.8}]},
     lrs=[0.05, 0.0, -0.02, 0.1, 0.0, 0.03, -0.05, 0.08, 0.02, 0.0, 0.04, 0.06], seed=633)
case("partition", "adamw_mask_inside_fulllen", {"transforms": {
    "a": ["adamw", {"learning_rate": 0.02, "weight_decay": 0.5, "mask": [True, True, False]}],
    "b": ["sgd", {"learning_rate": 0.1}]}, "param_labels": ["a", "b", "a"]}, seed=701)
case("selective_transform", "adamw_mask_partial_freeze_fulllen", {"optimizer": ["adamw", {
    "learning_rate": 0.02, "weight_decay": 0.5, "mask": [False, True, True]}], "freeze_mask": [True, False, False]},
    seed=702)
case("masked", "adamw_mask_inside_fulllen", {"inner": ["adamw", {"learning_rate": 0.02, "weight_decay": 0.5,
                                                                "mask": [True, True, False]}],
                                            "mask": [True, False, True]}, seed=703, scale=0.02)
case("masked", "mask_true_inner_adamw_mask", {"inner": ["adamw", {"learning_rate": 0.02, "weight_decay": 0.5,
                                                                 "mask": [True, False, False]}], "mask": True},
     seed=704)
case("novograd", "lr_schedule", {"learning_rate": cos(0.05), "b1": 0.8}, seed=705)
case("fromage", "lr_schedule", {"learning_rate": cos(0.05)}, seed=706)
case("contrib.schedule_free_adamw", "lr_schedule", {"learning_rate": wcos(0.02), "b1": 0.8}, seed=707)
case("contrib.schedule_free_sgd", "lr_schedule", {"learning_rate": cos(0.1)}, seed=708)
case("lookahead", "slow_1p5", {"sync_period": 2, "slow_step_size": 1.5, "inner": ["adam", {"learning_rate": 0.05}]},
     seed=709)
case("lookahead", "slow_neg", {"sync_period": 3, "slow_step_size": -0.3, "inner": ["sgd", {"learning_rate": 0.05}]},
     seed=710)
case("multisteps", "k7_sum_inner_sched", {"every_k": 7, "use_grad_mean": False, "inner": ["sgd", {
    "learning_rate": lin(0.05, 0.01, 1), "momentum": 0.5}]}, seed=711, steps=14)
case("chain", "partition_mixed_prepare_then_affine", {"links": [
    ["partition", {"transforms": {"g": ["chain", {"links": [["clip_by_global_norm", {"max_norm": 0.2}],
                                                             ["scale_by_adam", {}]]}],
                                  "t": ["trace", {"decay": 0.9, "nesterov": True}]},
                   "param_labels": ["g", "t", "g"]}],
    ["add_decayed_weights", {"weight_decay": 0.05, "mask": [False, True, True]}],
    ["scale_by_learning_rate", {"learning_rate": cos(0.03)}]]}, seed=712)
case("chain", "adam_masked_normalize_mid", {"links": [
    ["scale_by_adam", {}], ["masked", {"inner": ["normalize_by_update_norm", {"scale_factor": 0.5}],
                                       "mask": [True, False, True]}],
    ["trace", {"decay": 0.5}], ["scale", {"step_size": -0.05}]]}, seed=713)
case("chain", "stateful_prologue", {"links": [
    ["trace", {"decay": 0.5}], ["scale_by_adam", {"b1": 0.3}], ["ema", {"decay": 0.7}],
    ["scale", {"step_size": -0.02}]]}, seed=714)
case("chain", "ema_rms_trace_maskdecay_sched", {"links": [
    ["ema", {"decay": 0.6, "debias": True}], ["scale_by_rms", {"decay": 0.9, "eps_in_sqrt": False}],
    ["trace", {"decay": 0.8, "nesterov": True}], ["add_decayed_weights", {"weight_decay": 0.1, "mask": M}],
    ["scale_by_learning_rate", {"learning_rate": wcos(0.01)}]]}, seed=715, steps=14)
BIG = [(50, 90), (2100,), (3, 7)]
case("chain", "big_long_chain", {"links": [
    ["clip", {"max_delta": 1.5}], ["clip_by_global_norm", {"max_norm": 20.0}],
    ["scale_by_adam", {"b1": 0.8, "nesterov": True}], ["add_decayed_weights", {"weight_decay": 0.1, "mask": [True, False, True]}],
    ["trace", {"decay": 0.5}], ["scale_by_learning_rate", {"learning_rate": cos(0.01)}]]}, shapes=BIG, seed=716, steps=10)
case("partition", "big_masked_mix", {"transforms": {
    "a": ["chain", {"links": [["masked", {"inner": ["scale_by_adam", {}], "mask": [True, True, False]}],
                              ["scale", {"step_size": -0.01}]]}],
    "b": ["lion", {"learning_rate": 0.003, "weight_decay": 0.1}]}, "param_labels": ["a", "b", "a"]},
    shapes=BIG, seed=717, steps=10, scale=0.3)
case("multisteps", "big_k2_skipnf", {"every_k": 2, "inner": ["chain", {"links": [
    ["zero_nans", {}], ["scale_by_adam", {}], ["scale_by_learning_rate", {"learning_rate": 0.01}]]}],
    "should_skip_update_fn": ["skip_not_finite", {}]}, shapes=BIG, seed=718, steps=10, nan=[[3, 0, 4000], [6, 1, 2050]])
case("chain", "agc_6d", {"links": [["adaptive_grad_clip", {"clipping": 0.03}], ["scale", {"step_size": -0.1}]]},
     shapes=[(2, 1, 2, 1, 2, 3), (3,)], seed=719, scale=3.0)

# ---------------- third batch: rates read otherwise than the step's, lookahead's reset ----------------
case("inject_hyperparams", "schedule_free_adamw_sched", {"inner": ["contrib.schedule_free_adamw", {
    "learning_rate": wcos(0.02), "b1": 0.8}]}, seed=801)
case("inject_hyperparams", "schedule_free_sgd_sched_warmup", {"inner": ["contrib.schedule_free_sgd", {
    "learning_rate": cos(0.1), "warmup_steps": 3}]}, seed=802)
case("inject_hyperparams", "rprop_sched", {"inner": ["rprop", {"learning_rate": cos(0.05), "eta_plus": 1.5}]},
     seed=803)
case("inject_hyperparams", "sm3_sched", {"inner": ["sm3", {"learning_rate": wcos(0.1)}]}, seed=804)
inj("schedule_free_adamw_warmup", "contrib.schedule_free_adamw", {"warmup_steps": 5, "b1": 0.7}, 805)
case("lookahead", "reset_state_schedule_free", {"sync_period": 3, "slow_step_size": 0.5, "reset_state": True,
                                                "inner": ["contrib.schedule_free_sgd", {"learning_rate": 0.1}]},
     seed=806)
case("lookahead", "reset_state_sched_adam_sync1", {"sync_period": 1, "slow_step_size": 0.6, "reset_state": True,
                                                   "inner": ["adam", {"learning_rate": wcos(0.05)}]}, seed=807)
case("lookahead", "reset_state_chain_clip_adamw", {"sync_period": 4, "slow_step_size": 0.3, "reset_state": True,
                                                   "inner": ["chain", {"links": [
                                                       ["clip_by_global_norm", {"max_norm": 0.5}],
                                                       ["adamw", {"learning_rate": 0.03, "weight_decay": 0.1}]]}]},
     seed=808, steps=16)

# ---------------- fourth batch (a round of hostile use): lookahead resets around wrappers, Schedule-Free and
# inject_hyperparams in chains and MultiSteps ----------------
LA = lambda inner, sync=3, a=0.5: {"sync_period": sync, "slow_step_size": a, "reset_state": True, "inner": inner}
case("lookahead", "p_reset_multisteps", LA(["multisteps", {"every_k": 2, "inner": ["adam", {"learning_rate": 0.05}]}]), seed=901, steps=14)
case("lookahead", "p_reset_multisteps_k3_sync2", LA(["multisteps", {"every_k": 3, "inner": ["sgd", {"learning_rate": 0.05, "momentum": 0.9}]}], sync=2), seed=902, steps=14)
case("lookahead", "p_reset_inject_adam_sched", LA(["inject_hyperparams", {"inner": ["adam", {"learning_rate": wcos(0.05)}]}]), seed=903, steps=14)
case("lookahead", "p_reset_inject_adam_const", LA(["inject_hyperparams", {"inner": ["adam", {"learning_rate": 0.05}]}]), seed=904)
case("lookahead", "p_reset_partition", LA(["partition", {"transforms": {"a": ["adam", {"learning_rate": 0.03}], "b": ["sgd", {"learning_rate": 0.1, "momentum": 0.9}]}, "param_labels": ["a", "b", "a"]}]), seed=905)
case("lookahead", "p_reset_inject_sfadamw_sched", LA(["inject_hyperparams", {"inner": ["contrib.schedule_free_adamw", {"learning_rate": wcos(0.02), "warmup_steps": 2}]}]), seed=906, steps=14)
case("lookahead", "p_reset_inject_sfsgd", LA(["inject_hyperparams", {"inner": ["contrib.schedule_free_sgd", {"learning_rate": cos(0.1)}]}], sync=4), seed=907, steps=14)
case("lookahead", "p_noreset_inject_sfsgd", {"sync_period": 4, "slow_step_size": 0.5, "inner": ["inject_hyperparams", {"inner": ["contrib.schedule_free_sgd", {"learning_rate": cos(0.1), "warmup_steps": 3}]}]}, seed=908, steps=14)
case("chain", "p_inject_sfadamw_in_chain", {"links": [["clip_by_global_norm", {"max_norm": 1.0}], ["inject_hyperparams", {"inner": ["contrib.schedule_free_adamw", {"learning_rate": wcos(0.02), "warmup_steps": 3}]}]]}, seed=909)
case("chain", "p_inject_sfsgd_in_chain", {"links": [["clip", {"max_delta": 1.0}], ["inject_hyperparams", {"inner": ["contrib.schedule_free_sgd", {"learning_rate": cos(0.1)}]}]]}, seed=910)
case("chain", "p_inject_rprop_in_chain", {"links": [["clip", {"max_delta": 1.0}], ["inject_hyperparams", {"inner": ["rprop", {"learning_rate": cos(0.05)}]}]]}, seed=911)
case("chain", "p_inject_sm3_in_chain", {"links": [["clip", {"max_delta": 1.0}], ["inject_hyperparams", {"inner": ["sm3", {"learning_rate": cos(0.1)}]}]]}, seed=912)
case("lookahead", "p_reset_rprop_inject", LA(["inject_hyperparams", {"inner": ["rprop", {"learning_rate": cos(0.05)}]}]), seed=913)
case("lookahead", "p_reset_sm3_inject", LA(["inject_hyperparams", {"inner": ["sm3", {"learning_rate": cos(0.1)}]}]), seed=914)
case("lookahead", "p_reset_apply_if_finite_nan", LA(["apply_if_finite", {"inner": ["adam", {"learning_rate": 0.05}], "max_consecutive_errors": 3}]), seed=915, nan=[[1, 0, 0], [4, 1, 1], [5, 2, 0]])
case("lookahead", "p_reset_multisteps_skipnf_nan", LA(["multisteps", {"every_k": 2, "inner": ["adam", {"learning_rate": 0.05}], "should_skip_update_fn": ["skip_not_finite", {}]}]), seed=916, steps=14, nan=[[2, 0, 0], [5, 1, 1]])
case("lookahead", "p_reset_chain_zero_nans", LA(["chain", {"links": [["zero_nans", {}], ["adam", {"learning_rate": 0.05}]]}]), seed=917, nan=[[1, 0, 0], [3, 1, 1]])
case("lookahead", "p_reset_lookahead_nested", LA(["lookahead", {"sync_period": 2, "slow_step_size": 0.5, "reset_state": True, "inner": ["adam", {"learning_rate": 0.05}]}]), seed=918)
case("lookahead", "p_reset_sfadamw_sched", LA(["contrib.schedule_free_adamw", {"learning_rate": cos(0.02)}]), seed=919)
case("contrib.schedule_free_adamw", "p_sched_wd", {"learning_rate": cos(0.02), "weight_decay": 0.1, "b1": 0.8}, seed=920)
case("contrib.schedule_free_sgd", "p_sched_wd_sched", {"learning_rate": lin(0.1, 0.01, 6), "weight_decay": 0.05}, seed=921)
case("inject_hyperparams", "p_sfsgd_lin_warm", {"inner": ["contrib.schedule_free_sgd", {"learning_rate": lin(0.0, 0.2, 5), "warmup_steps": 4, "weight_decay": 0.05}]}, seed=922)
case("chain", "p_multisteps_inject_sfadamw", {"links": [["multisteps", {"every_k": 2, "inner": ["inject_hyperparams", {"inner": ["contrib.schedule_free_adamw", {"learning_rate": cos(0.02)}]}]}]]}, seed=923, steps=12)
case("inject_hyperparams", "p_sfadamw_neg_lr", {"inner": ["contrib.schedule_free_adamw", {"warmup_steps": 2}]}, lrs=[0.01, 0.02, -0.01, 0.03, 0.0, 0.02, 0.01, 0.05, 0.01, 0.02, 0.02, 0.01], seed=924)
case("inject_hyperparams", "p_sm3_zero", {"inner": ["sm3", {"momentum": 0.0}]}, lrs=[0.1, 0.0, 0.2, 0.05, 0.1, 0.1, 0.3, 0.1, 0.1, 0.2, 0.1, 0.1], seed=925)
