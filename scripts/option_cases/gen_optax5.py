# Weight-decay schedules (optax's `ScalarOrSchedule` weight_decay of the aliases and of
# add_decayed_weights) and AdEMAMix's b3/alpha schedules: every optax 0.2.8 function that takes
# them and runs with one. (novograd, contrib.dadapt_adamw, prodigy, momo, momo_adam and mechanize
# take a number only: optax fails on a schedule there, and descent refuses one.)
import sys
sys.argv = [sys.argv[0], sys.argv[1], 'skip']
exec(open('gen_optax.py').read().split("n = 0")[0])
lin = lambda a=0.5, b=0.0, n=10: {"schedule": "linear_schedule", "init_value": a, "end_value": b, "transition_steps": n}
exp = {"schedule": "exponential_decay", "init_value": 0.3, "transition_steps": 2, "decay_rate": 0.5}
case("adamw", "wd_sched_mask", {"learning_rate": 0.02, "weight_decay": cos(0.5), "mask": M}, seed=201)
case("nadamw", "wd_sched", {"learning_rate": 0.02, "weight_decay": lin()}, seed=202)
case("adamaxw", "wd_sched", {"learning_rate": 0.02, "weight_decay": exp}, seed=203)
case("adan", "wd_sched", {"learning_rate": 0.02, "weight_decay": lin(0.2, 1.0, 6)}, seed=204)
case("lamb", "wd_sched", {"learning_rate": 0.02, "weight_decay": lin()}, seed=205)
case("lars", "wd_sched_mask", {"learning_rate": 0.5, "weight_decay": exp, "weight_decay_mask": M}, seed=206)
case("lion", "wd_sched", {"learning_rate": 0.01, "weight_decay": lin(1.0, 0.0, 8)}, seed=207)
case("adadelta", "wd_sched", {"learning_rate": 0.5, "weight_decay": lin()}, seed=208)
case("adafactor", "wd_rate_sched", {"learning_rate": 0.02, "weight_decay_rate": lin(), "min_dim_size_to_factor": 2}, seed=209)
case("chain", "add_decayed_weights_sched", {"links": [["add_decayed_weights", {"weight_decay": exp, "mask": M}], ["scale", {"step_size": -0.05}]]}, seed=210)
case("contrib.acprop", "wd_sched", {"learning_rate": 0.02, "weight_decay": lin()}, seed=211)
case("contrib.ademamix", "b3_alpha_wd_sched", {"learning_rate": 0.02, "b3": lin(0.9, 0.999, 8), "alpha": cos(8.0), "weight_decay": lin()}, seed=212)
case("contrib.simplified_ademamix", "wd_sched", {"learning_rate": 0.02, "alpha": lin(0.0, 2.0, 5), "weight_decay": exp}, seed=213)
case("contrib.cocob", "wd_sched", {"weight_decay": lin()}, seed=214)
case("contrib.dog", "wd_sched", {"learning_rate": 1.0, "weight_decay": lin(0.2, 0.0, 10)}, seed=215)
case("contrib.dowg", "wd_sched", {"learning_rate": 1.0, "weight_decay": lin(0.2, 0.0, 10)}, seed=216)
case("contrib.madgrad", "wd_sched", {"learning_rate": 0.02, "weight_decay": lin()}, seed=217)
case("contrib.schedule_free_adamw", "wd_sched", {"learning_rate": 0.02, "warmup_steps": 3, "weight_decay": lin()}, seed=218)
case("contrib.schedule_free_sgd", "wd_sched", {"learning_rate": 0.1, "weight_decay": lin()}, seed=219)
case("contrib.muon", "wd_sched", {"learning_rate": 0.02, "weight_decay": lin(), "adam_weight_decay": exp}, shapes=[(5, 3), (4,), (6, 4)], seed=220)
case("contrib.muon", "wd_sched_mask", {"learning_rate": 0.02, "weight_decay": cos(0.3), "weight_decay_mask": [True, True, False]}, shapes=[(5, 3), (4,), (6, 4)], seed=221)
case("contrib.galore", "wd_sched", {"learning_rate": 0.02, "weight_decay": lin()}, shapes=[(5, 3), (4,), (6, 4)], seed=222)
# jnp.cbrt is odd: a negative rate (or eps) makes the sum negative and its root negative.
case("contrib.madgrad", "negative_lr", {"learning_rate": -0.1}, seed=223)
case("contrib.madgrad", "negative_eps", {"learning_rate": 0.02, "eps": -0.1}, seed=224)
# scale_by_lion's sign variants: tanh(smooth_beta·x), and x itself inside (-1, 1).
case("chain", "lion_smooth", {"links": [["scale_by_lion", {"mode": "smooth", "smooth_beta": 3.0}], ["scale", {"step_size": -0.01}]]}, seed=225)
case("chain", "lion_refined", {"links": [["scale_by_lion", {"b1": 0.5, "mode": "refined"}], ["scale", {"step_size": -0.01}]]}, seed=226)
