"""Time a linear layer over 1 to 13 rows at the target's weight shapes: what a verify of N tokens pays per
weight against a one-token decoding step (fp32 and bf16, this machine's BLAS).

    python scripts/bench_rows.py [--threads 2] [--repeats 30]

Shapes are smolvlm-135m's (SmolLM2-135M): the MLP's up (1536 x 576) and down (576 x 1536) projections and
the 49,152 x 576 output head. Run it on a quiet machine; it prints the median milliseconds per call.
"""

from __future__ import annotations

import argparse
from statistics import median
from time import perf_counter

import torch

SHAPES = {"mlp up 1536x576": (1536, 576), "mlp down 576x1536": (576, 1536), "head 49152x576": (49152, 576)}
ROWS = (1, 2, 3, 6, 13)


def time_linear(weight: torch.Tensor, rows: int, repeats: int) -> float:
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, weight)
    times = []
    for _ in range(repeats):
        start = perf_counter()
        torch.nn.functional.linear(x, weight)
        times.append(perf_counter() - start)
    return median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'weight':<20} {'dtype':<9}" + "".join(f"{f'{n} rows':>10}" for n in ROWS) + "   (ms per call)")
    with torch.no_grad():
        for name, shape in SHAPES.items():
            for dtype in (torch.float32, torch.bfloat16):
                weight = torch.randn(*shape, dtype=dtype)
                cells = "".join(f"{time_linear(weight, n, args.repeats):10.2f}" for n in ROWS)
                print(f"{name:<20} {str(dtype).removeprefix('torch.'):<9}{cells}")


if __name__ == "__main__":
    main()
