"""binding_overhead.py — the MoE layer's forward + backward called from Python (hybridmoe.MoE, its
nn.Parameters bound into the C++ layer at each call, autograd driven by torch) against the same
layer, weights and input run entirely in C++ (_C._time_cpp_moe): the binding's overhead.

    PYTHONPATH=build/python /usr/bin/python3 bench/python/binding_overhead.py [--repeats N]

Prints JSON: per shape, the median ms of each (rounds of --repeats calls alternate between the
two, each round's C++ call on a layer built for it, its first call left out as warm-up; one
thread unless --threads), and overhead_ms / overhead_ratio = Python over C++.
"""
import argparse
import json
import statistics
import time

import torch

import hybridmoe

SHAPES = {
    # tokens, d_model, d_hidden, experts, top_k
    "tiny": (64, 64, 128, 4, 2),
    "small": (1024, 256, 1024, 8, 2),
    "default": (4096, 512, 2048, 8, 2),
}


def python_ms(moe, x, g):
    t0 = time.perf_counter()
    for p in moe.parameters():
        p.grad = None
    out, aux, _ = moe(x)
    ((out * g).sum() + aux).backward()
    return (time.perf_counter() - t0) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="calls per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", default="tiny,small,default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.shapes.split(","):
        tokens, d, h, experts, k = SHAPES[name]
        torch.manual_seed(0)
        moe = hybridmoe.MoE(d, experts, top_k=k, d_hidden=h)
        state = {n: t.detach() for n, t in list(moe.named_parameters()) + list(moe.named_buffers())}
        x, g = torch.randn(tokens, d), torch.randn(tokens, d)
        # Rounds alternate between the two (each a persistent layer called `repeats` times), so
        # that neither always finds the other's warm caches.
        py_ms, cpp_ms = [], []
        python_ms(moe, x, g)  # warm-up
        for _ in range(args.rounds):
            py_ms += [python_ms(moe, x, g) for _ in range(args.repeats)]
            cpp_ms += hybridmoe._C._time_cpp_moe(moe.options, state, x, g, args.repeats + 1)[1:]
        py, cpp = statistics.median(py_ms), statistics.median(cpp_ms)
        results[name] = dict(tokens=tokens, d_model=d, d_hidden=h, experts=experts, top_k=k,
                             python_ms=round(py, 3), cpp_ms=round(cpp, 3),
                             overhead_ms=round(py - cpp, 3), overhead_ratio=round(py / cpp, 4))
    print(json.dumps(dict(threads=args.threads, repeats=args.repeats, rounds=args.rounds,
                          shapes=results), indent=1))


if __name__ == "__main__":
    main()
