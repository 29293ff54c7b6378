# pytorch_optimizer's shared options (`adanorm`/`adanorm_r`, `cautious`, `use_gc`/`gc_conv_only`,
# `stable_adamw`, `adam_debias`) on each optimizer descent implements that takes them: each
# alone, and together; a 4-D tensor among the shapes so that centralization meets every rank.
import sys
sys.argv = [sys.argv[0], sys.argv[1]]
src = open('gen_po.py').read()
exec(src[:src.index('G = lambda')])
S4 = [(5, 3), (4,), (2, 3, 2), (3, 2, 2, 2)]
def opts(opt, lr, options, extra=None, seed=300, steps=12, shapes=S4):
    extra = extra or {}
    for k, (name, hp) in enumerate(options):
        case(opt, f"opt_{name}", {"lr": lr, **extra, **hp}, shapes=shapes, steps=steps, seed=seed + k)
AN = ("adanorm", {"adanorm": True})
ANR = ("adanorm_r", {"adanorm": True, "adanorm_r": 0.7})
CA = ("cautious", {"cautious": True})
GC = ("gc", {"use_gc": True})
opts("lion", 0.01, [AN, ANR, CA, GC, ("all_l2_max", {"adanorm": True, "cautious": True, "use_gc": True, "weight_decay": 0.1, "weight_decouple": False, "maximize": True})], seed=300)
opts("adabelief", 0.02, [AN, ANR, ("adanorm_rectify_l2", {"adanorm": True, "rectify": True, "weight_decay": 0.1, "weight_decouple": False})], seed=310)
opts("diffgrad", 0.02, [AN, ("adanorm_ams_l2", {"adanorm": True, "ams_bound": True, "weight_decay": 0.1, "weight_decouple": False})], seed=320)
opts("lamb", 0.02, [AN, ("adanorm_l2_max", {"adanorm": True, "weight_decay": 0.1, "weight_decouple": False, "maximize": True})], seed=330)
opts("ranger", 0.02, [AN, ("adanorm_nogc", {"adanorm": True, "use_gc": False})], seed=340, steps=14)
opts("adan", 0.02, [AN, GC, ("adanorm_gc_l2", {"adanorm": True, "use_gc": True, "weight_decay": 0.1})], seed=350)
opts("adamp", 0.02, [AN, CA, GC, ("cautious_nesterov", {"cautious": True, "nesterov": True}), ("all_l2", {"adanorm": True, "cautious": True, "use_gc": True, "weight_decay": 0.1, "weight_decouple": False})], seed=360)
opts("laprop", 0.02, [CA, ("cautious_centered_l2", {"cautious": True, "centered": True, "steps_before_using_centered": 3, "weight_decay": 0.1, "weight_decouple": False})], seed=370)
opts("adafactor", 0.02, [CA], extra={"relative_step": False}, seed=380)
opts("ademamix", 0.02, [CA, ("stable", {"stable_adamw": True}), ("cautious_stable_l2", {"cautious": True, "stable_adamw": True, "weight_decay": 0.1, "weight_decouple": False})], seed=390)
opts("adopt", 0.02, [CA, ("stable", {"stable_adamw": True}), ("cautious_stable_l2", {"cautious": True, "stable_adamw": True, "weight_decay": 0.1, "weight_decouple": False})], seed=400)
# AdaBound takes `adam_debias` through **kwargs and never reads it (descent refuses it), and
# AdaFactor's `cautious` masks the momentum (refused without one): no cases for them.
# Adan centralizes after its clipping factor (max_grad_norm), before AdaNorm's norm.
opts("adan", 0.02, [("gc_clip_adanorm_max", {"use_gc": True, "max_grad_norm": 0.5, "adanorm": True, "maximize": True})], seed=355)
