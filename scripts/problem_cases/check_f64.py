"""Float32 recording vs float64 rerun of the same library: error as a fraction of the case tolerance
(README: instances must keep float32 rounding below a quarter of the tolerance)."""
import json, os, sys
import numpy as np
here = os.path.dirname(os.path.abspath(__file__))
for fn in sorted(os.listdir(os.path.join(here, "f64"))):
    c = json.load(open(os.path.join(here, "cases", fn)))
    e64 = json.load(open(os.path.join(here, "f64", fn)))["expected"]
    init = [np.array(p["init"], dtype=np.float64) for p in c["params"]]
    rel, ab = c["tolerance"]["rel"], c["tolerance"]["abs"]
    worst = (0, 0)
    for t, (s32, s64) in enumerate(zip(c["expected"], e64)):
        d32 = np.concatenate([np.array(a) - i for a, i in zip(s32, init)])
        d64 = np.concatenate([np.array(a) - i for a, i in zip(s64, init)])
        r = np.abs(d32 - d64).max() / (rel * np.abs(d64).max() + ab)
        if r > worst[0]: worst = (r, t)
    print(f"{c['id']:60s} f32-vs-f64 {worst[0]:.3f} of tol at step {worst[1]}" + ("   <-- SENSITIVE" if worst[0] > 0.25 else ""))
