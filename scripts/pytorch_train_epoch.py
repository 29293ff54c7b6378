# PyTorch CPU reference for the README's training table: one epoch of the same recipe as
# `descent train` (MNIST in [0, 1], PyTorch's default init, shuffled batches), 2 threads.
# usage: python scripts/pytorch_train_epoch.py lenet|mlp BATCH adam|sgd LR [MNIST_DIR]
import gzip, struct, sys, time
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
def idx(path):
    b = gzip.open(path).read()
    nd = b[3]; dims = struct.unpack('>' + 'I' * nd, b[4:4 + 4 * nd])
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims)
d = sys.argv[5] if len(sys.argv) > 5 else 'data/mnist/'
X = torch.tensor(idx(d + 'train-images-idx3-ubyte.gz'), dtype=torch.float32).div_(255).unsqueeze(1)
Y = torch.tensor(idx(d + 'train-labels-idx1-ubyte.gz'), dtype=torch.long)
Xt = torch.tensor(idx(d + 't10k-images-idx3-ubyte.gz'), dtype=torch.float32).div_(255).unsqueeze(1)
Yt = torch.tensor(idx(d + 't10k-labels-idx1-ubyte.gz'), dtype=torch.long)
def lenet():
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
model_name, bs, opt_name, lr = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
torch.manual_seed(0)
m = lenet() if model_name == 'lenet' else mlp()
opt = torch.optim.Adam(m.parameters(), lr) if opt_name == 'adam' else torch.optim.SGD(m.parameters(), lr, momentum=0.9)
m.train()
t0 = time.perf_counter()
perm = torch.randperm(len(X))
for i in range(0, len(X), bs):
    j = perm[i:i + bs]
    x, y = X[j], Y[j]
    loss = F.cross_entropy(m(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item()
dt = time.perf_counter() - t0
m.eval()
with torch.no_grad():
    acc = (m(Xt).argmax(1) == Yt).float().mean().item() * 100
print(f"pytorch {model_name} b{bs} {opt_name}: {len(X)/dt:.0f} samples/s, accuracy {acc:.2f}%")
