# Gradients near 2e19, whose float32 square overflows: a moment's update order decides whether it
# is inf (optax's `(1 - decay) * g**2`) or finite (torch's `addcmul_(g, g, value=1 - beta2)`, which
# multiplies (value·g)·g). One case per optimizer whose second moment squares the gradient.
#   python gen_overflow.py optax OUT   (jax + optax 0.2.8)
#   python gen_overflow.py po OUT      (torch + pytorch_optimizer 4.1.0)
import sys
lib, out = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], out, 'skip']
SH = [(4, 3), (5,)]
if lib == 'optax':
    exec(open('gen_optax.py').read().split("n = 0")[0])
    for i, (o, h) in enumerate([
        ("adam", {"learning_rate": 0.01}), ("adamw", {"learning_rate": 0.01}), ("nadam", {"learning_rate": 0.01}),
        ("nadamw", {"learning_rate": 0.01}), ("amsgrad", {"learning_rate": 0.01}), ("adabelief", {"learning_rate": 0.01}),
        ("adan", {"learning_rate": 0.01}), ("rmsprop", {"learning_rate": 0.01}),
        ("rmsprop", {"learning_rate": 0.01, "centered": True}), ("adadelta", {"learning_rate": 1.0}),
        ("radam", {"learning_rate": 0.01}), ("sm3", {"learning_rate": 0.1}), ("optimistic_adam", {"learning_rate": 0.01}),
        ("contrib.ademamix", {"learning_rate": 0.01}), ("contrib.adopt", {"learning_rate": 0.01}),
        ("contrib.madgrad", {"learning_rate": 0.01}), ("contrib.schedule_free_adamw", {"learning_rate": 0.01}),
    ]):
        tag = "overflow_centered" if h.get("centered") else "overflow"
        case(o, tag, h, SH, steps=6, seed=1200 + i, scale=2e19)
    # scale_by_sm3 with b2 < 1 (optax.sm3 fixes b2 = 1, where the order cannot show): a matrix, a
    # vector and a 3-D tensor, each branch of its accumulator.
    sm3 = {"links": [["scale_by_sm3", {"b1": 0.9, "b2": 0.95}], ["scale", {"step_size": -0.1}]]}
    case("chain", "sm3_b2_overflow", sm3, [(4, 3), (5,), (2, 3, 2)], steps=6, seed=1250, scale=2e19)
else:
    exec(open('gen_po.py').read().split("G = lambda")[0])
    case("madgrad", "overflow", {"lr": 0.01}, SH, steps=6, seed=1300, scale=2e19)
    case("madgrad", "overflow_momentum0", {"lr": 0.01, "momentum": 0.0}, SH, steps=6, seed=1301, scale=2e19)
