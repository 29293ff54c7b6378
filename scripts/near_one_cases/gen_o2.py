import os
import sys
sys.argv = [sys.argv[0], sys.argv[1], 'NOTHING_MATCHES_THIS']
src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gen_o.py')).read()
exec(src[:src.index('rec = {}')])
FILT = None
B = {"optimizer": None, "tolerance": {"rel": 1e-3, "abs": 4e-6}}
S3 = [(7, 3), (5,), (2, 1, 3)]
s = 1500
for opt, base, keys in [("adam", {"learning_rate": 0.01}, ["b1", "b2"]), ("adamw", {"learning_rate": 0.01}, ["b1", "b2"]),
                        ("amsgrad", {"learning_rate": 0.01}, ["b1", "b2"]), ("nadam", {"learning_rate": 0.01}, ["b1", "b2"]),
                        ("radam", {"learning_rate": 0.01}, ["b1", "b2"]), ("adamax", {"learning_rate": 0.01}, ["b1"]),
                        ("rmsprop", {"learning_rate": 0.01}, ["decay"]), ("rmsprop", {"learning_rate": 0.01, "centered": True, "bias_correction": True}, ["decay"]),
                        ("sgd", {"learning_rate": 0.1, "momentum": 0.5}, ["momentum"]), ("adafactor", {"learning_rate": 0.01, "momentum": 0.9}, ["momentum"]),
                        ("sm3", {"learning_rate": 0.1}, ["b1", "b2"]), ("adadelta", {"learning_rate": 1.0}, ["rho"]),
                        ("signum", {"learning_rate": 0.01}, ["beta"]), ("nadamw", {"learning_rate": 0.01}, ["b1", "b2"]),
                        ("adamaxw", {"learning_rate": 0.01}, ["b1"]), ("contrib.madgrad", {"learning_rate": 0.01}, ["momentum"]),
                        ("contrib.prodigy", {"learning_rate": 1.0}, ["betas"]), ("contrib.dadapt_adamw", {"learning_rate": 1.0}, ["betas"])]:
    for k in keys:
        for v, t in [(0.999999, '6'), (0.99999, '5')]:
            s += 1
            val = [0.9, v] if k == 'betas' else v
            b = dict(B, optimizer=opt)
            case(f"optax.{opt}.x{'c' if base.get('centered') else ''}_{k}_{t}", b, dict(base, **{k: val}), S3, seed=s)
            if k == 'betas':
                case(f"optax.{opt}.x_b1_{t}", b, dict(base, **{k: [v, 0.999]}), S3, seed=s + 100)
