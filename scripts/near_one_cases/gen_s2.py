"""optax exponential (and other) schedules over hundreds of steps. usage: gen_s2.py OUT (cases in OUT/cases/)."""
import os, sys
# The writer of scripts/schedule_cases/gen_sched.py, with OUT as its output folder.
sys.argv = [sys.argv[0], "optax", sys.argv[1]]
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '../schedule_cases/gen_sched.py')).read().split('def torch_cases')[0])
import jax.numpy as jnp, optax
def case(cid, name, kwargs, steps):
    c = {"id": "optax." + cid, "source": f"optax 0.2.8 optax.{name}", "schedule": name, "kwargs": kwargs, "steps": steps}
    f = getattr(optax, name)(**kwargs)
    c["expected_lr"] = [float(jnp.asarray(f(jnp.asarray(t, dtype=jnp.int32)), dtype=jnp.float32)) for t in range(steps)]
    write(c)
case("h2_exp_0999_200", "exponential_decay", {"init_value": 1.0, "transition_steps": 1, "decay_rate": 0.999}, 200)
case("h2_exp_099_300", "exponential_decay", {"init_value": 1.0, "transition_steps": 1, "decay_rate": 0.99}, 300)
case("h2_exp_0997_lr01", "exponential_decay", {"init_value": 0.1, "transition_steps": 1, "decay_rate": 0.997}, 1000)
case("h2_wexp_0999", "warmup_exponential_decay_schedule", {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 10, "transition_steps": 1, "decay_rate": 0.999}, 1000)
case("h2_exp_stair_099", "exponential_decay", {"init_value": 1.0, "transition_steps": 3, "decay_rate": 0.99, "staircase": True}, 900)
case("h2_cos_alpha", "cosine_decay_schedule", {"init_value": 3.0, "decay_steps": 997, "alpha": 0.3}, 1000)
case("h2_poly", "polynomial_schedule", {"init_value": 3.0, "end_value": 0.1, "power": 1.7, "transition_steps": 997}, 1000)
case("h2_lin", "linear_schedule", {"init_value": 3.0, "end_value": 0.1, "transition_steps": 997}, 1000)
case("h2_wcos", "warmup_cosine_decay_schedule", {"init_value": 0.1, "peak_value": 3.0, "warmup_steps": 97, "decay_steps": 1000, "end_value": 0.3, "exponent": 1.3}, 1000)
