import sys
sys.argv = [sys.argv[0], sys.argv[1], 'skip']
src = open('gen_optax.py').read().split("n = 0")[0]
src = src.replace("elif k == 'mu_dtype' and v == 'bfloat16': kw[k] = jnp.bfloat16", "elif k in ('mu_dtype','accumulator_dtype','dtype_momentum','state_dtype') and v == 'bfloat16': kw[k] = jnp.bfloat16")
exec(src)
case("sgd", "acc_bf16", {"learning_rate": 0.05, "momentum": 0.9, "accumulator_dtype": "bfloat16"}, seed=90, steps=12)
case("signum", "acc_bf16", {"learning_rate": 0.01, "beta": 0.9, "accumulator_dtype": "bfloat16"}, seed=91, steps=12)
case("adafactor", "mom_bf16", {"learning_rate": 0.05, "momentum": 0.9, "dtype_momentum": "bfloat16", "min_dim_size_to_factor": 2}, seed=92, steps=12)
case("contrib.schedule_free_adamw", "state_bf16", {"learning_rate": 0.02, "state_dtype": "bfloat16"}, seed=93, steps=12)
case("contrib.schedule_free_sgd", "state_bf16", {"learning_rate": 0.1, "state_dtype": "bfloat16"}, seed=94, steps=12)
