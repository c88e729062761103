"""Prepacked linear weights on a CPU: oneDNN's linear on a weight reordered once, not at every call.

torch's dense `F.linear` on a CPU hands a bf16 weight to oneDNN in its plain layout, and oneDNN reorders it
into its blocked layout at every call. For the few rows of a decoding step, a tree verify or a draft step,
the reorder costs more than the multiply. Packing the weight once (`torch.ops.mkldnn._reorder_linear_weight`)
and calling oneDNN's linear on it (`_linear_pointwise`) leaves the multiply. On the 2-core AVX-512-BF16 EPYC,
bf16, 2 threads, over 1 / 3 rows: a 576 -> 1536 linear 86 / 96 us dense, 34 / 39 us packed; the 8,192-row
reduced draft head 321 us -> 91 us; the 49,156-row output head 3.8 ms -> 0.9 ms at one row.

The target: a linear is packed only where a probe (once per machine and shape, cached like the invariance
probes) finds the packed call bit-equal to the dense one at every probed row count. The kernels then compute
the same bits, so exactness, the batch-invariant mode's probes (which call `F.linear`) and the bench's `hf`
(the same model object) are unchanged: only the time a call takes differs. Drafts (`prepack_draft`) are packed
without the probe: a draft only proposes, the verifier decides every token.

The packed copies take as much memory again as the weights they copy (270 MB for smolvlm-135m's linears and
head in bf16). Only bf16 on CPUs that multiply it natively (AVX-512 BF16, AMX), where it was measured:
elsewhere oneDNN would emulate bf16, and fp32, `auto`'s dtype on AVX2-only CPUs, was not measured there. A
packed call under autograd falls back to the dense one (oneDNN's packed linear has no backward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dream.settings import cpu_has_native_bf16

from .probe_cache import cached_probe, probe_key

PROBE_ROWS = (*range(1, 21), 24, 32, 48, 64, 128, 256)   # decoding steps, tree verifies, short prefills
PROBE_OUTPUTS = 1 << 18                                  # outputs compared per row count (as the invariance probe)


def can_prepack(weight: Tensor) -> bool:
    """Whether a linear with this weight runs packed here (see the module docstring)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and cpu_has_native_bf16()
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _packed_call(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    """x -> oneDNN's linear on `weight` packed now; no checks (the callers make them)."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_size=1)
    bias = None if bias is None else bias.detach()
    return lambda x: torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def _runs_dense(x: Tensor, weight: Tensor) -> bool:
    """Whether the packed kernel cannot serve this call: another device or dtype, or gradients wanted."""
    return (x.device != weight.device or x.dtype != weight.dtype
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def packed_linear(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    """x -> F.linear(x, weight, bias) on a copy of `weight` packed now (stale if the weight changes in place).
    A call the packed kernel cannot serve (another device or dtype, or under autograd: oneDNN's packed linear
    has no backward) runs the dense one."""
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    call = _packed_call(weight, bias)

    def linear(x: Tensor) -> Tensor:
        return F.linear(x, weight, bias) if _runs_dense(x, weight) else call(x)

    return linear


def linear_fn(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    """x -> F.linear(x, weight, bias): packed where `can_prepack` holds, the dense call elsewhere."""
    if can_prepack(weight):
        return packed_linear(weight, bias)
    return lambda x: F.linear(x, weight, bias)


def pack(module: nn.Linear) -> None:
    """Run `module` on its weight packed now: its forward, set on the instance, so hooks, parameters and the
    state dict stay. Calls run dense on the module's current weight where the packed copy no longer stands
    for it (the weight was replaced, written in place, moved or cast) and where gradients are wanted."""
    packed_weight, version = module.weight, module.weight._version
    call = _packed_call(module.weight, module.bias)      # the checks below cover the dense cases, once

    def forward(x: Tensor) -> Tensor:
        weight = module.weight
        stale = weight is not packed_weight or weight._version != version
        return F.linear(x, weight, module.bias) if stale or _runs_dense(x, weight) else call(x)

    forward.packed = True  # type: ignore[attr-defined]
    module.forward = forward


def unpack(module: nn.Module) -> None:
    if is_packed(module):
        del module.forward


def is_packed(module: nn.Module) -> bool:
    return getattr(vars(module).get("forward"), "packed", False)


def _wrapped(module: nn.Module) -> bool:
    """Whether something else set the module's forward on the instance (accelerate's offloading hooks do):
    such a module is left alone."""
    return "forward" in vars(module) and not is_packed(module)


def prepack_target(modules: Iterable[nn.Linear]) -> int:
    """Pack every linear whose shape passed the bit-equality probe here, unpack those that can no longer run
    packed (moved to another device or dtype); returns how many run packed."""
    packed = 0
    for module in modules:
        if _wrapped(module):
            continue
        if not can_prepack(module.weight):
            unpack(module)
        elif not is_packed(module) and cached_packing_matches(module):
            pack(module)
        packed += is_packed(module)
    return packed


def prepack_draft(model: nn.Module) -> int:
    """Pack every linear of a draft loaded for inference (no probe: see the module docstring)."""
    linears = [m for m in model.modules()
               if isinstance(m, nn.Linear) and can_prepack(m.weight) and not is_packed(m) and not _wrapped(m)]
    for module in linears:
        pack(module)
    return len(linears)


def cached_packing_matches(module: nn.Linear) -> bool:
    """packing_matches, once per machine and shape (kept in $DREAM_CACHE/invariance.json)."""
    weight = module.weight
    key = probe_key("packed-linear", weight.device.type, weight.dtype, *weight.shape, module.bias is not None)
    return cached_probe(key, lambda: packing_matches(module))


@torch.no_grad()
def packing_matches(module: nn.Linear, rows: tuple[int, ...] = PROBE_ROWS) -> bool:
    """Whether the packed call gives the dense call's bits at every row count in `rows`. Differences in
    accumulation order show on few outputs, so each row count compares at least PROBE_OUTPUTS outputs."""
    weight, bias = module.weight, module.bias
    linear = packed_linear(weight, bias)
    for m in rows:
        calls = max(1, -(-PROBE_OUTPUTS // (m * module.out_features)))
        x = torch.randn(calls, m, module.in_features, generator=torch.Generator().manual_seed(m)).to(weight)
        if not all(torch.equal(linear(call[None]), F.linear(call[None], weight, bias)) for call in x):
            return False
    return True
