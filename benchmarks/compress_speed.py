""".cnz encode / decode throughput and load time against safetensors, side by side.

    .venv/bin/python benchmarks/compress_speed.py [--models vgg16,resnet50] [--keep 0.1]

The models have random weights (nothing is downloaded): every Conv/Linear weight is pruned to
the ``--keep`` fraction by magnitude and quantized to 2**8 (conv) / 2**5 (fc) evenly spaced
levels, so the file holds what Deep Compression produces (speed does not depend on how the
levels were found; k-means is not timed). Throughput is MB of float32 weights per second
(the dense model's state dict size / time). Load time: ``cnnlab.compress.load_state_dict``
of the .cnz vs ``safetensors.torch.load_file`` of the same (decoded) tensors.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

from cnnlab import create_model
from cnnlab.compress import decode_bytes, default_index_bits, encode_state_dict, load_state_dict
from cnnlab.compress.prune import layer_kind, prunable_layers


@torch.no_grad()
def prune_and_quantize(model: torch.nn.Module, keep: float) -> None:
    for module in prunable_layers(model).values():
        w = module.weight
        flat = w.abs().reshape(-1)
        k = max(1, int(keep * flat.numel()))
        threshold = flat.kthvalue(flat.numel() - k + 1).values
        levels = (1 << (8 if layer_kind(module) == "conv" else 5)) - 1
        lo, hi = float(w.min()), float(w.max())
        q = torch.round((w - lo) / (hi - lo) * levels) / levels * (hi - lo) + lo
        w.copy_(torch.where(w.abs() >= threshold, q, torch.zeros(())))


def best_of(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def bench(name: str, keep: float, repeat: int) -> None:
    """Build, prune, quantize, then time one model; prints one row."""
    model = create_model(name)
    prune_and_quantize(model, keep)
    state = model.state_dict()
    mb = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    bits = default_index_bits(model)
    t_enc, (data, _) = best_of(lambda: encode_state_dict(state, index_bits=bits), repeat)
    t_dec, (_, decoded) = best_of(lambda: decode_bytes(data), repeat)
    assert all(torch.equal(decoded[k], v) for k, v in state.items())
    with tempfile.TemporaryDirectory() as tmp:
        cnz, st = os.path.join(tmp, "m.cnz"), os.path.join(tmp, "m.safetensors")
        with open(cnz, "wb") as f:
            f.write(data)
        save_file({k: v.contiguous() for k, v in state.items()}, st)
        t_cnz, _ = best_of(lambda: load_state_dict(cnz), repeat)
        t_st, _ = best_of(lambda: load_file(st), repeat)
    print(
        f"{name:10} {mb:8.1f} {len(data) / 1e6:8.2f} {mb * 1e6 / len(data):5.1f}x "
        f"{mb / t_enc:12.1f} {mb / t_dec:12.1f} {t_cnz:12.2f} {t_st:10.3f} "
        f"{t_cnz / t_st:6.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet50")
    parser.add_argument("--keep", type=float, default=0.1, help="fraction of weights kept")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch threads: {torch.get_num_threads()}; keep {args.keep:.0%}, conv 8 / fc 5 bits")
    header = (
        f"{'model':10} {'fp32 MB':>8} {'.cnz MB':>8} {'ratio':>6} {'encode MB/s':>12} "
        f"{'decode MB/s':>12} {'load .cnz s':>12} {'load st s':>10} {'cnz/st':>7}"
    )
    print(header)
    for name in args.models.split(","):
        bench(name, args.keep, args.repeat)


if __name__ == "__main__":
    main()
