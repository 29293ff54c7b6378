# How far pytorch_optimizer's own SOAP lands from a recorded SOAP trajectory, under the pass rule of
# `descent replay --check` (per step: max|d_ours - d_ref| <= rel * max|d_ref| + abs, displacements
# from the initial values, over all parameters).
#
# SOAP's first eigenbasis is that of G·Gᵀ for the first gradient G. For a 6 × 4 parameter that
# 6 × 6 statistic has rank 4: two of its eigenvectors span a null space, and which basis of it
# torch.linalg.eigh returns is decided by the rounding inside the LAPACK it runs (MKL, whose code
# path depends on the CPU). The later steps depend on that basis, so a recorded case is reproduced
# only by the same code path. Run it under several MKL code paths to see:
#
#   for p in COMPATIBLE SSE4_2 AVX2 AVX512; do MKL_CBWR=$p python scripts/soap_reference_sensitivity.py; done
#
# Needs torch and pytorch_optimizer (the version the case names). usage:
#   python scripts/soap_reference_sensitivity.py [CASE.json]   (default ../shared/reference-po/optim/po.soap.default.json)
import json, os, sys
import torch
from pytorch_optimizer import SOAP

path = sys.argv[1] if len(sys.argv) > 1 else '../shared/reference-po/optim/po.soap.default.json'
case = json.load(open(path))
assert case['optimizer'] == 'soap', case['optimizer']
shapes = [p['shape'] for p in case['params']]
init = [torch.tensor(p['init'], dtype=torch.float32).reshape(p['shape']) for p in case['params']]
params = [torch.nn.Parameter(p.clone()) for p in init]
opt = SOAP(params, **case['hparams'])
rel, abs_ = case['tolerance']['rel'], case['tolerance']['abs']
worst, worst_step = 0.0, 0
for t, grads in enumerate(case['grads']):
    for p, g, s in zip(params, grads, shapes):
        p.grad = torch.tensor(g, dtype=torch.float32).reshape(s)
    opt.step()
    err = scale = 0.0
    for p, e, p0 in zip(params, case['expected'][t], init):
        d_ours = p.detach().flatten().double() - p0.flatten().double()
        d_ref = torch.tensor(e, dtype=torch.float64) - p0.flatten().double()
        err = max(err, (d_ours - d_ref).abs().max().item())
        scale = max(scale, d_ref.abs().max().item())
    ratio = err / (rel * scale + abs_)
    if ratio > worst:
        worst, worst_step = ratio, t
mkl = os.environ.get('MKL_CBWR', 'default')
print(f"{case['id']} by pytorch_optimizer SOAP, MKL_CBWR={mkl}: worst error {worst:.3f}x tolerance (step {worst_step})")
