"""Prepacked linears (dream.target.packing): the packed call computes the linear, keeps the module's hooks,
parameters and state dict, falls back to the dense call where it cannot serve, and a target packs only the
shapes whose bit-equality probe passed. The packed mechanism is tested in fp32 on every CPU; whether bf16
packing is on and whether its bits equal F.linear's are properties of the machine: reported, not asserted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dream.target.packing as packing
from dream.settings import cpu_has_native_bf16, cpu_kind
from dream.target.invariance import RowPlan, apply_row_plan
from dream.target.packing import is_packed, pack, packed_linear, packing_matches, prepack_draft, prepack_target


def linear(out_features: int = 24, in_features: int = 16, bias: bool = True, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias).to(dtype)


def test_a_packed_linear_computes_the_linear():
    module = linear()
    x = torch.randn(3, 5, 16)
    expected = module(x)
    pack(module)
    assert is_packed(module)
    with torch.no_grad():                         # with gradients wanted the dense call runs (below)
        torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-6)  # fp32: equal up to rounding
    torch.testing.assert_close(packed_linear(module.weight, None)(x), nn.functional.linear(x, module.weight),
                               rtol=1e-5, atol=1e-6)


def test_packing_keeps_parameters_state_dict_and_hooks():
    module = linear()
    names = set(module.state_dict())
    pack(module)
    assert set(module.state_dict()) == names and isinstance(module, nn.Linear)
    handles = apply_row_plan(module, RowPlan(4))  # the batch-invariant mode's padding hooks still wrap the call
    calls = []
    module.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
    out = module(torch.randn(1, 16))
    assert out.shape == (1, 24) and calls == [torch.Size([4, 16])]
    for handle in handles:
        handle.remove()


def test_a_packed_linear_falls_back_where_the_packed_kernel_cannot_serve():
    module = linear()
    pack(module)
    # Under autograd: oneDNN's packed linear has no backward, so the dense call runs and gradients flow.
    x = torch.randn(2, 16, requires_grad=True)
    module(x).sum().backward()
    assert x.grad is not None and module.weight.grad is not None
    # Weights written in place after packing: the packed copy is stale, calls run dense on the new weight.
    with torch.no_grad():
        module.weight.mul_(2)
        x = torch.randn(2, 16)
        assert torch.equal(module(x), nn.functional.linear(x, module.weight, module.bias))
    # After a dtype change the packed copy is stale: calls run dense on the module's current weight.
    module.to(torch.float64)
    x = torch.randn(2, 16, dtype=torch.float64)
    assert torch.equal(module(x), nn.functional.linear(x, module.weight, module.bias))


def test_a_target_packs_only_the_shapes_whose_probe_passed(monkeypatch):
    modules = [linear(24), linear(24), linear(32)]
    monkeypatch.setattr(packing, "can_prepack", lambda weight: True)
    monkeypatch.setattr(packing, "cached_packing_matches", lambda module: module.out_features == 24)
    assert prepack_target(modules) == 2
    assert [is_packed(m) for m in modules] == [True, True, False]
    assert prepack_target(modules) == 2 and [is_packed(m) for m in modules] == [True, True, False]   # idempotent
    monkeypatch.setattr(packing, "can_prepack", lambda weight: False)      # e.g. moved to a GPU
    assert prepack_target(modules) == 0 and not any(is_packed(m) for m in modules)
    monkeypatch.setattr(packing, "can_prepack", lambda weight: True)
    hooked = modules[0].forward                  # a forward someone else set on the instance stays theirs
    modules[0].forward = lambda x: hooked(x)
    assert prepack_target(modules) == 1 and not is_packed(modules[0]) and is_packed(modules[1])


def test_the_probe_rejects_a_kernel_that_changes_bits(monkeypatch):
    module = linear(dtype=torch.bfloat16)

    def off_by_rounding(weight, bias):        # a kernel that rounds one output of 3-row calls differently
        def call(x):
            out = nn.functional.linear(x, weight, bias)
            if x.shape[-2] == 3:
                out = out.clone()
                out.view(-1)[0] = out.view(-1)[0].float().nextafter(torch.tensor(float("inf"))).to(out.dtype) + \
                    out.view(-1)[0].abs().clamp_min(1) * 2**-6
            return out
        return call

    monkeypatch.setattr(packing, "packed_linear", off_by_rounding)
    assert not packing_matches(module, rows=(1, 2, 3))
    assert packing_matches(module, rows=(1, 2))


def test_bf16_packing_on_this_machine(capsys):
    """Whether this CPU packs bf16 linears, and whether its packed call gives F.linear's bits (what decides, per
    shape, if a target's linear is packed), are machine facts: reported. A draft packs wherever bf16 is native."""
    module = linear(576, 1536, bias=False, dtype=torch.bfloat16)
    native = packing.can_prepack(module.weight)
    equal = packing_matches(module, rows=(1, 2, 13)) if native else None
    with capsys.disabled():
        print(f"\n[machine] {cpu_kind()}: bf16 linears packable: {native}; packed call bit-equal to F.linear "
              f"(576x1536, 1/2/13 rows): {equal}")
    if not cpu_has_native_bf16():
        assert not native and prepack_draft(nn.Sequential(module)) == 0
        pytest.skip(f"{cpu_kind()} has no native bf16: linears are not packed here")
    assert prepack_draft(nn.Sequential(module, linear(dtype=torch.bfloat16))) == 2
