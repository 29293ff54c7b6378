# PyTorch CPU reference for `descent bench train --model gpt|resnet`: the same recipe, timed the
# same way (warm-up steps untimed, then timed steps of batch assembly, forward, backward, step), on
# 2 threads.
#   gpt:    nanoGPT's character model (4 layers, 4 heads, 128 wide, block 64, no dropout, biases,
#           tied embeddings, exact GELU) on random windows of data/tinyshakespeare/input.txt, batch
#           12, AdamW lr 1e-3 betas (0.9, 0.99) weight decay 0.1 on the >=2-D tensors only, clipping
#           at global norm 1.0; prints tokens/s.
#   resnet: descent_train::resnet at depth 6 width 16 (conv3x3-BN-ReLU, one BasicBlock per stage,
#           16 then 32 channels with a 1x1 conv + BN downsample, global average pooling, Linear),
#           MNIST in [0, 1], shuffled batches of 128, Adam 1e-3; prints samples/s.
#   PRECISION f32 (default) or bf16: the forward under torch.autocast("cpu", dtype=torch.bfloat16),
#   as `descent bench train --precision bf16` computes its products in bfloat16.
# usage: python scripts/pytorch_bench_train.py gpt|resnet [BATCHES [WARMUP [PRECISION]]]
import contextlib, gzip, math, struct, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
torch.manual_seed(0)
what = sys.argv[1]
batches = int(sys.argv[2]) if len(sys.argv) > 2 else 50
warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 5
precision = sys.argv[4] if len(sys.argv) > 4 else 'f32'
assert precision in ('f32', 'bf16'), precision
def autocast():
    return torch.autocast('cpu', dtype=torch.bfloat16) if precision == 'bf16' else contextlib.nullcontext()

class Attn(nn.Module):
    def __init__(s, c, nh):
        super().__init__(); s.nh = nh; s.c_attn = nn.Linear(c, 3 * c); s.c_proj = nn.Linear(c, c)
    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, s.nh, C // s.nh).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return s.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
class Block(nn.Module):
    def __init__(s, c, nh):
        super().__init__()
        s.ln_1 = nn.LayerNorm(c); s.attn = Attn(c, nh); s.ln_2 = nn.LayerNorm(c)
        s.c_fc = nn.Linear(c, 4 * c); s.c_proj = nn.Linear(4 * c, c)
    def forward(s, x):
        x = x + s.attn(s.ln_1(x))
        return x + s.c_proj(F.gelu(s.c_fc(s.ln_2(x))))
class Gpt(nn.Module):
    def __init__(s, vocab, block, nl, nh, c):
        super().__init__()
        s.wte = nn.Embedding(vocab, c); s.wpe = nn.Embedding(block, c)
        s.h = nn.ModuleList(Block(c, nh) for _ in range(nl)); s.ln_f = nn.LayerNorm(c)
        for n, p in s.named_parameters():
            if p.dim() >= 2: nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * nl) if n.endswith('c_proj.weight') else 0.02)
            elif n.endswith('.bias') and not n.startswith('ln') and '.ln_' not in n: nn.init.zeros_(p)
    def forward(s, idx):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1]))
        for b in s.h: x = b(x)
        return F.linear(s.ln_f(x), s.wte.weight)

class BasicBlock(nn.Module):
    def __init__(s, i, o, stride):
        super().__init__()
        s.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False); s.bn1 = nn.BatchNorm2d(o)
        s.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False); s.bn2 = nn.BatchNorm2d(o)
        s.downsample = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o)) if stride != 1 or i != o else None
    def forward(s, x):
        y = s.bn2(s.conv2(F.relu(s.bn1(s.conv1(x)))))
        return F.relu(y + (x if s.downsample is None else s.downsample(x)))
class ResNet(nn.Module):
    def __init__(s, width=16, blocks=1):
        super().__init__()
        s.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False); s.bn1 = nn.BatchNorm2d(width)
        layers, c = [], width
        for st in range(2):
            o = width << st
            for i in range(blocks):
                layers.append(BasicBlock(c, o, 2 if st > 0 and i == 0 else 1)); c = o
        s.layers = nn.Sequential(*layers); s.fc = nn.Linear(c, 10)
    def forward(s, x):
        x = s.layers(F.relu(s.bn1(s.conv1(x))))
        return s.fc(x.mean((2, 3)))

def idx(path):
    b = gzip.open(path).read()
    nd = b[3]; dims = struct.unpack('>' + 'I' * nd, b[4:4 + 4 * nd])
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)

if what == 'gpt':
    text = open('data/tinyshakespeare/input.txt', encoding='utf-8').read()
    chars = sorted(set(text)); stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    train = data[:int(len(data) * 0.9)]
    block, bs = 64, 12
    m = Gpt(len(chars), block, 4, 4, 128)
    decay = [p for p in m.parameters() if p.dim() >= 2]; no_decay = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    def batch(k):
        ix = torch.randint(len(train) - block, (bs,))
        return torch.stack([train[i:i + block] for i in ix]), torch.stack([train[i + 1:i + 1 + block] for i in ix])
    def loss_of(out, y): return F.cross_entropy(out.view(-1, out.size(-1)), y.view(-1))
    clip, unit, per = 1.0, 'tokens/s', bs * block
else:
    X = torch.tensor(idx('data/mnist/train-images-idx3-ubyte.gz'), dtype=torch.float32).div_(255).unsqueeze(1)
    Y = torch.tensor(idx('data/mnist/train-labels-idx1-ubyte.gz'), dtype=torch.long)
    bs = 128
    m = ResNet()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    perm = torch.randperm(len(X))
    def batch(k):
        j = perm[(k * bs) % (len(X) - bs):][:bs]
        return X[j], Y[j]
    loss_of, clip, unit, per = F.cross_entropy, None, 'samples/s', bs
m.train()
timed = 0.0
for k in range(warmup + batches):
    t0 = time.perf_counter()
    x, y = batch(k)
    with autocast():
        loss = loss_of(m(x), y)
    loss.item()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip: torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
    opt.step()
    if k >= warmup: timed += time.perf_counter() - t0
print(f"pytorch {what} batch {bs}, {precision}, 2 threads, {batches} batches after {warmup} warm-up: {batches * per / timed:.0f} {unit}")
