"""Train the small embedded network ``tinyalexnet`` shipped inside skfishing.

An AlexNet-shaped network (a convolutional trunk with batch normalisation
ending in a ``pool5`` tensor, then three fully connected layers fc6, fc7 and
fc8 with ReLU and Dropout between them) trained from scratch on Tiny
ImageNet-200 at 32x32 (``../shared/data/tinyimagenet32_{train,val}.npz``, see
that folder's README). CPU only, two threads, fixed seeds.

At the end the script folds the batch normalisation into the convolutions,
exports the eval-mode network to ONNX with the legacy exporter (no backward
subgraph; the head is ``Flatten -> Gemm -> Relu -> Gemm -> Relu -> Gemm``),
checks it against torch with onnxruntime, and writes
``skfishing/data/tinyalexnet.onnx`` and ``skfishing/data/tinyalexnet.json``.

Torch is a development-only dependency: the package itself never imports it.

Usage (from the repository root)::

    nice -n 5 python scripts/train_embedded.py

``--bench`` times a few training iterations and exits (to size the network).
"""

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
OUT_DIR = REPO / "skfishing" / "data"
NAME = "tinyalexnet"


def log(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------
# model


def conv_bn(cin, cout):
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class TinyAlexNet(nn.Module):
    """Five 3x3 conv+BN+ReLU blocks, three max-pools, then fc6, fc7, fc8.

    32x32 -> conv1 -> pool -> 16x16 -> conv2, conv3 -> pool -> 8x8
    -> conv4, conv5 -> pool -> 4x4 = pool5 (c5 * 16 values).
    """

    def __init__(self, widths=(32, 64, 128, 192, 128), fc=512, n_classes=200, dropout=0.3):
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.features = nn.Sequential(
            *conv_bn(3, c1),
            nn.MaxPool2d(2),
            *conv_bn(c1, c2),
            *conv_bn(c2, c3),
            nn.MaxPool2d(2),
            *conv_bn(c3, c4),
            *conv_bn(c4, c5),
            nn.MaxPool2d(2),
        )
        self.pool5_dim = c5 * 4 * 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.pool5_dim, fc),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, n_classes),  # fc8 (logits)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def fold_batchnorm(model):
    """Return an eval-mode copy with every Conv->BN pair fused into one Conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    layers = list(model.features)
    fused = []
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
            fused.append(fuse_conv_bn_eval(m, layers[i + 1]))
            i += 2
        else:
            fused.append(m)
            i += 1
    model.features = nn.Sequential(*fused)
    return model


# ----------------------------------------------------------------------------
# data


def load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def to_tensor(images):
    # (N, H, W, 3) uint8 -> (N, 3, H, W) uint8 tensor
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def augment(xb, gen, pad=4):
    """Random horizontal flips and random shifts (zero padding, random crop).

    ``xb`` is a normalised float batch (B, 3, H, W); zero padding after
    normalisation is padding with the mean colour.
    """
    b, _, h, w = xb.shape
    flip = torch.rand(b, generator=gen) < 0.5
    xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
    xp = F.pad(xb, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    iy = dy[:, None] + torch.arange(h)[None, :]  # (B, H)
    ix = dx[:, None] + torch.arange(w)[None, :]  # (B, W)
    bi = torch.arange(b)[:, None, None]
    # advanced indexing: (B, H, W, C) -> (B, C, H, W)
    out = xp.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def normalise(xb_uint8, mean, std):
    return (xb_uint8.float().div_(255.0) - mean) / std


@torch.no_grad()
def evaluate(model, x_val, y_val, mean, std, bs=500):
    model.eval()
    top1 = top5 = 0
    for i in range(0, len(x_val), bs):
        logits = model(normalise(x_val[i : i + bs], mean, std))
        t5 = logits.topk(5, dim=1).indices
        y = y_val[i : i + bs]
        top1 += (t5[:, 0] == y).sum().item()
        top5 += (t5 == y[:, None]).any(1).sum().item()
    return top1 / len(x_val), top5 / len(x_val)


# ----------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--widths", type=str, default="32,64,128,192,128")
    p.add_argument("--fc", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, default=0, help="smoke test: use only this many train/val images")
    p.add_argument("--bench", type=int, default=0, help="time this many training iterations and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    widths = tuple(int(w) for w in args.widths.split(","))
    model = TinyAlexNet(widths, args.fc, 200, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: widths={widths} pool5={model.pool5_dim} fc={args.fc} params={n_params:,}")

    train = load(args.data_dir / "tinyimagenet32_train.npz")
    val = load(args.data_dir / "tinyimagenet32_val.npz")
    assert (train["wnids"] == val["wnids"]).all()
    if args.subset:
        rs = np.random.RandomState(args.seed)
        for d in (train, val):
            keep = np.sort(rs.permutation(len(d["images"]))[: args.subset])
            d["images"], d["labels"] = d["images"][keep], d["labels"][keep]
    x_tr, y_tr = to_tensor(train["images"]), torch.from_numpy(train["labels"].astype(np.int64))
    x_val, y_val = to_tensor(val["images"]), torch.from_numpy(val["labels"].astype(np.int64))
    # per-channel mean/std of the training set, in [0, 1] units
    f = train["images"].reshape(-1, 3).astype(np.float64) / 255.0
    mean_np, std_np = f.mean(0), f.std(0)
    del f
    mean = torch.tensor(mean_np, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std_np, dtype=torch.float32).view(1, 3, 1, 1)
    log(
        f"train {tuple(x_tr.shape)} val {tuple(x_val.shape)} "
        f"mean={np.round(mean_np, 4).tolist()} std={np.round(std_np, 4).tolist()}"
    )

    n = len(x_tr)
    steps_per_epoch = n // args.batch_size  # drop the last partial batch
    total_steps = steps_per_epoch * args.epochs
    decay, no_decay = [], []
    for _, prm in model.named_parameters():
        (no_decay if prm.ndim <= 1 else decay).append(prm)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=args.momentum,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=args.lr,
        total_steps=max(total_steps, args.bench or 1),
        pct_start=0.15,
        div_factor=10.0,
        final_div_factor=100.0,
    )
    crit = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    t0 = time.time()
    history = []
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        run_loss = run_acc = 0.0
        te = time.time()
        for it in range(steps_per_epoch):
            idx = perm[it * args.batch_size : (it + 1) * args.batch_size]
            xb = augment(normalise(x_tr[idx], mean, std), gen)
            yb = y_tr[idx]
            logits = model(xb)
            loss = crit(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss += loss.item()
            run_acc += (logits.argmax(1) == yb).float().mean().item()
            if args.bench and it + 1 == args.bench:
                dt = time.time() - te
                log(
                    f"bench: {args.bench} its in {dt:.1f}s -> {dt / args.bench * steps_per_epoch:.0f} s/epoch"
                )
                return
            if (it + 1) % 100 == 0:
                log(
                    f"  epoch {epoch + 1} it {it + 1}/{steps_per_epoch} "
                    f"loss {run_loss / (it + 1):.3f} "
                    f"elapsed {time.time() - t0:.0f}s"
                )
        top1, top5 = evaluate(model, x_val, y_val, mean, std)
        history.append((epoch + 1, top1, top5))
        log(
            f"epoch {epoch + 1}/{args.epochs} loss {run_loss / steps_per_epoch:.3f} "
            f"train_acc {run_acc / steps_per_epoch:.3f} lr {sched.get_last_lr()[0]:.4f} "
            f"val top1 {top1:.4f} top5 {top5:.4f} elapsed {time.time() - t0:.0f}s"
        )
    train_seconds = time.time() - t0

    # ------------------------------------------------------------------ export
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / f"{NAME}.onnx"
    json_path = args.out_dir / f"{NAME}.json"
    model.eval()
    fused = fold_batchnorm(model)
    dummy = normalise(x_val[:2], mean, std)
    with torch.no_grad():
        d = (fused(dummy) - model(dummy)).abs().max().item()
    log(f"BN folding: max abs diff {d:.2e}")
    torch.onnx.export(
        fused,
        dummy,
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
        training=torch.onnx.TrainingMode.EVAL,
    )

    import onnx
    import onnxruntime as ort

    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m)
    ops = [nd.op_type for nd in m.graph.node]
    log("ONNX nodes: " + " ".join(ops))
    assert ops[-6:] == ["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm"], ops
    assert "BatchNormalization" not in ops and "Dropout" not in ops

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    xv = normalise(x_val[:16], mean, std)
    with torch.no_grad():
        ref = model(xv).numpy()
    out = sess.run(["logits"], {"input": xv.numpy()})[0]
    log(f"onnxruntime vs torch on 16 val images: max abs diff {np.abs(out - ref).max():.2e}")
    pred = []
    for i in range(0, len(x_val), 500):
        lo = sess.run(["logits"], {"input": normalise(x_val[i : i + 500], mean, std).numpy()})[0]
        pred.append(np.argsort(-lo, axis=1)[:, :5])
    pred = np.concatenate(pred)
    yv = y_val.numpy()
    ort_top1 = float((pred[:, 0] == yv).mean())
    ort_top5 = float((pred == yv[:, None]).any(1).mean())
    top1, top5 = history[-1][1], history[-1][2]
    log(f"onnxruntime val top1 {ort_top1:.4f} top5 {ort_top5:.4f} (torch {top1:.4f} / {top5:.4f})")

    data = onnx_path.read_bytes()
    meta = {
        "name": NAME,
        "file": onnx_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "input_name": "input",
        "output_name": "logits",
        "input_size": 32,
        "channel_order": "RGB",
        "scale": 1.0 / 255.0,
        "mean": [float(v) for v in mean_np],
        "std": [float(v) for v in std_np],
        "classes": [str(c).split(",")[0].strip() for c in train["class_names"]],
        "wnids": [str(w) for w in train["wnids"]],
        "val_top1": round(ort_top1, 4),
        "val_top5": round(ort_top5, 4),
        "epochs": args.epochs,
        "train_seconds": round(train_seconds, 1),
        "torch_version": torch.__version__,
        "n_parameters": n_params,
        "architecture": (
            f"conv3x3-BN-ReLU x5 (widths {'-'.join(map(str, widths))}), "
            f"max-pool after conv1, conv3, conv5; pool5 {widths[-1]}x4x4="
            f"{model.pool5_dim}; fc6 {args.fc}, fc7 {args.fc}, fc8 200 logits; "
            f"ReLU+Dropout({args.dropout}) between FC layers; BN folded into "
            f"the convs in the ONNX file"
        ),
        "training_command": "nice -n 5 python scripts/train_embedded.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "history": [{"epoch": e, "val_top1": round(a, 4), "val_top5": round(b, 4)} for e, a, b in history],
    }
    meta["training_command"] = meta["training_command"].strip()
    json_path.write_text(json.dumps(meta, indent=1) + "\n")
    log(f"wrote {onnx_path} ({len(data):,} bytes) and {json_path}")


if __name__ == "__main__":
    main()
