"""Which operations of a target's forward give one position a result that depends on what is fed with it.

Lossless speculative decoding needs every tree node's logits to equal what plain decoding computes for it.
In fp32 that holds up to ~1e-6; in bf16 any operation whose result for a row depends on the other rows in
the call, or on masked entries, can flip a near tie. This module checks, on a loaded target, (1) the row-wise
operations (every linear layer and norm of a decoder layer, the final norm, the head with its soft-capping,
rotary / M-RoPE tables) at other row counts; (2) attention on real queries and keys of one decoding step, in
the ways a verify could call it, against the call a one-token step of generate() makes. The whole path (3),
which runs the engine, sits above it in `dream.bench.wholepath`. `scripts/diagnose_exactness.py` prints all
three; docs/exactness.md records the findings.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .adapter import TargetAdapter
from .attention import eager_weights
from .exact import DepthGroup, exact_tree_attention, one_step_window
from .inputs import TargetInputs
from .invariant_attention import TreeKeys, decode_attention, padded, tree_attention

ROW_COUNTS = (2, 5, 12, 17, 33, 64)  # rows fed with the probed row: tree sizes, up to the invariance probe's
EXTRA = 11  # masked extra keys / extra queries in the masked-verify variant (a 12-node tree)
SHORTER = range(0, 16, 2)  # the step's query is also probed over its first L - j keys: kernels vary with L
PAD = 7  # masked keys padding the step's row in the batch-invariant tree call (a deeper node's length)


@dataclass(frozen=True)
class Finding:
    section: str  # "row-wise" | "attention" | "model" (dream.bench.wholepath)
    name: str  # the operation or variant
    differs: bool  # its result for the probed position is not bit-identical to the reference
    detail: str  # max |difference| and where


def diagnose(target: TargetAdapter, inputs: TargetInputs) -> list[Finding]:
    """Sections (1) and (2): the row-wise operations and the attention calls."""
    return rowwise_findings(target) + attention_findings(target, inputs)


def format_findings(findings: list[Finding]) -> str:
    width = max(len(f.name) for f in findings)
    return "\n".join(f"{f.section:9} {f.name:{width}}  {'DIFFERS' if f.differs else 'same   '}  {f.detail}"
                     for f in findings)


# ---- (1) row-wise operations ---------------------------------------------------------------------------------
@torch.no_grad()
def rowwise_findings(target: TargetAdapter, counts: tuple[int, ...] = ROW_COUNTS) -> list[Finding]:
    """Rows 0 and n - 1 of a call over n rows against the same row alone, for every n in counts."""
    decoder = target.model.model.get_decoder()
    probes: dict[str, tuple[Callable[[Tensor], Tensor], int]] = {}
    for name, module in decoder.layers[0].named_modules():
        if isinstance(module, nn.Linear):
            probes[f"layers.0.{name}"] = (module, module.in_features)
        elif "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
            probes[f"layers.0.{name}"] = (module, module.weight.shape[-1])
    probes["final norm"] = (decoder.norm, target.hidden_size)
    probes["lm head (+ soft-capping)"] = (target.head, target.hidden_size)
    findings = [_rowwise(name, fn, width, counts, target.model.dtype) for name, (fn, width) in probes.items()]
    return findings + _rotary_findings(target, decoder, counts)


def _rowwise(name: str, fn: Callable[[Tensor], Tensor], width: int, counts: tuple[int, ...],
             dtype: torch.dtype) -> Finding:
    rows = torch.randn(max(counts), width, generator=torch.Generator().manual_seed(0)).to(dtype)
    alone = {i: fn(rows[i : i + 1][None])[0, 0] for i in {0, *[n - 1 for n in counts]}}
    worst = []
    for n in counts:
        batch = fn(rows[:n][None])[0]
        worst += [(max_diff(batch[i], alone[i]), n) for i in (0, n - 1)]
    return worst_finding("row-wise", name, worst, "rows")


def _rotary_findings(target: TargetAdapter, decoder: nn.Module, counts: tuple[int, ...]) -> list[Finding]:
    rotary = getattr(decoder, "rotary_emb", None)
    if rotary is None:
        return []
    layer_types = sorted(set(getattr(decoder.config, "layer_types", None) or [None]), key=str)
    takes_type = "layer_type" in inspect.signature(rotary.forward).parameters
    mrope = target.family.startswith("qwen2")
    x = torch.zeros(1, 1, target.hidden_size, dtype=target.model.dtype)

    def tables(positions: Tensor, layer_type: str | None) -> Tensor:  # positions [n] -> [n, 2 * D]
        ids = positions[None].expand(3, 1, -1) if mrope else positions[None]
        cos, sin = rotary(x, ids, layer_type) if takes_type and layer_type else rotary(x, ids)
        return torch.cat([cos, sin], -1).reshape(-1, positions.numel(), cos.shape[-1] * 2)[0]

    findings = []
    for layer_type in layer_types:
        worst = []
        for n in counts:
            positions = torch.arange(97, 97 + n)
            batch = tables(positions, layer_type)
            worst += [(max_diff(batch[i], tables(positions[i : i + 1], layer_type)[0]), n) for i in (0, n - 1)]
        label = "rotary" + ("/M-RoPE" if mrope else "") + (f" ({layer_type})" if takes_type and layer_type else "")
        findings.append(worst_finding("row-wise", label, worst, "positions"))
    return findings


# ---- (2) attention on one decoding step's real queries and keys ----------------------------------------------
@torch.no_grad()
def attention_findings(target: TargetAdapter, inputs: TargetInputs) -> list[Finding]:
    """Per variant, the layers whose output for the step's query differs from the one-token call (at any of
    the key counts L - j, j in SHORTER)."""
    variants: dict[str, list[tuple[float, int]]] = {}
    block = target.invariance.attention_block or 1
    for layer, (module, query, key, value, kwargs) in enumerate(_capture_decode_step(target, inputs)):
        for keep in [key.shape[2] - j for j in SHORTER if j < key.shape[2]]:
            k, v = key[:, :, :keep], value[:, :, :keep]
            for name, diff in _attention_variants(module, query, k, v, kwargs, block).items():
                variants.setdefault(name, []).append((diff, layer))
    return [worst_finding("attention", name, worst, "layers") for name, worst in variants.items()]


def _capture_decode_step(target: TargetAdapter, inputs: TargetInputs) -> list[tuple]:
    """(module, query [1, H, 1, D], key / value [1, H_kv, L, D], kwargs) of every layer in one decoding step."""
    cache = target.new_cache()
    token = target.prefill(inputs, cache).logits[0, -1].argmax()
    captured: list[tuple] = []

    def observe(module, query, key, value, kwargs):
        captured.append((module, query, key, value, kwargs))

    target.verify(token[None], torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long), cache,
                  observe=observe)
    return captured


def _attention_variants(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, kwargs: dict,
                        block: int) -> dict:
    length = key.shape[2]
    one_step = (DepthGroup(torch.zeros(1, dtype=torch.long), None, length),)
    reference = exact_tree_attention(module, query, key, value, one_step, **kwargs)[0][0, 0]  # [H, D]
    gathered = (DepthGroup(torch.zeros(1, dtype=torch.long), torch.arange(length)[None], length),)
    window = kwargs.get("sliding_window")
    visible = one_step_window(length, window) or length
    k, v = key[:, :, -visible:], value[:, :, -visible:]
    generator = torch.Generator().manual_seed(0)
    out = {
        "explicit all-True mask (GQA heads packed as query rows)":
            _sdpa(module, query, k, v, torch.ones(1, 1, 1, visible, dtype=torch.bool), kwargs),
        f"+{EXTRA} masked keys and {EXTRA} more queries (masked tree verify)":
            _masked_tree(module, query, k, v, kwargs, generator),
        "batched with 4 other single-query rows (exact path, sdpa, one depth)":
            _batched(module, query, k, v, kwargs, generator),
        "keys gathered into a strided view (exact path, sdpa)":
            exact_tree_attention(module, query, key, value, gathered, **kwargs)[0][0, 0],
        "eager, fp32 softmax": _eager(query, k, v, None, kwargs),
    }
    diffs = {name: max_diff(result, reference) for name, result in out.items()}
    diffs[f"batch-invariant: with 4 other nodes, keys gathered, +{PAD} masked (exact path, batch-invariant)"] = \
        _invariant_tree(query, k, v, kwargs, generator, block)
    extra_mask = torch.cat([torch.ones(visible, dtype=torch.bool), torch.zeros(EXTRA, dtype=torch.bool)])
    k_extra, v_extra = (torch.cat([t, t[:, :, -1:].expand(-1, -1, EXTRA, -1)], 2) for t in (k, v))
    diffs["eager: +masked keys vs eager"] = max_diff(_eager(query, k_extra, v_extra, extra_mask, kwargs),
                                                  out["eager, fp32 softmax"])
    if window and length > window:
        by_mask = torch.arange(length) >= length - window
        diffs["sliding window by mask over all keys (masked path)"] = max_diff(
            _sdpa(module, query, key, value, by_mask.view(1, 1, 1, -1), kwargs), reference)
    return diffs


def _sdpa(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, kwargs: dict) -> Tensor:
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)[0][0, 0]


def _masked_tree(module, query, key, value, kwargs, generator) -> Tensor:
    """The query as node 0 of a 12-node tree: the others' keys appended and masked out for it."""
    others = torch.randn(1, query.shape[1], EXTRA, query.shape[3], generator=generator).to(query)
    keys = torch.cat([key, torch.randn(*key.shape[:2], EXTRA, key.shape[3], generator=generator).to(key)], 2)
    values = torch.cat([value, torch.randn(*value.shape[:2], EXTRA, value.shape[3], generator=generator).to(value)], 2)
    mask = torch.ones(1, 1, EXTRA + 1, key.shape[2] + EXTRA, dtype=torch.bool).tril(key.shape[2] - 1)
    return sdpa_attention_forward(module, torch.cat([query, others], 2), keys, values, mask, **kwargs)[0][0, 0]


def _batched(module, query, key, value, kwargs, generator) -> Tensor:
    def noise(t: Tensor) -> Tensor:
        return torch.randn(4, *t.shape[1:], generator=generator).to(t)

    kept = one_step_window(key.shape[2], kwargs.get("sliding_window"))
    mask = None if kept is None else torch.ones(1, 1, 1, kept, dtype=torch.bool)
    batch = [torch.cat([t, noise(t)]) for t in (query, key, value)]
    return sdpa_attention_forward(module, *batch, mask, **kwargs)[0][0, 0]


def _invariant_tree(query: Tensor, key: Tensor, value: Tensor, kwargs: dict, generator: torch.Generator,
                    block: int) -> float:
    """The batch-invariant attention's tree call against its decoding step: the step's query as node 0 of 5,
    its keys gathered from a cache with 16 more entries, its row padded by PAD masked keys (and the block)."""
    scale = query.shape[-1] ** -0.5 if kwargs.get("scaling") is None else kwargs["scaling"]
    alone = decode_attention(query, key, value, None, scale, kwargs.get("softcap"), block)[0, 0]  # [H, D]
    length, n = key.shape[2], 5
    extra = torch.randn(*key.shape[:2], 16, key.shape[3], generator=generator).to(key)
    keys, values = torch.cat([key, extra], 2), torch.cat([value, extra.flip(2)], 2)
    others = torch.randn(1, query.shape[1], n - 1, query.shape[3], generator=generator).to(query)
    queries = torch.cat([query, others], 2)
    width = padded(length + PAD, block)
    own = torch.arange(length)
    rows = [torch.cat([own, own[-1:].expand(width - length)])]
    rows += [torch.randint(0, length + 16, (width,), generator=generator) for _ in range(n - 1)]
    bias = torch.zeros(1, n, 1, width)
    bias[0, 0, 0, length:] = float("-inf")
    plan = TreeKeys(torch.stack(rows).flatten().to(key.device), bias.to(key.device), width)
    batched = tree_attention(queries, keys, values, plan, scale, kwargs.get("softcap"))[0, 0]
    return max_diff(batched, alone)


def _eager(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, kwargs: dict) -> Tensor:
    weights = eager_weights(query, key, mask, kwargs.get("scaling"), None, False)
    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    return torch.matmul(weights.to(query.dtype), value)[0, :, 0]


# ---- helpers --------------------------------------------------------------------------------------------------
def max_diff(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def worst_finding(section: str, name: str, worst: list[tuple[float, int]], unit: str) -> Finding:
    """worst: (max |diff|, where) per probe."""
    bad = sorted({where for diff, where in worst if diff > 0})
    top = max(diff for diff, _ in worst)
    where = f" ({len(bad)} of {len({w for _, w in worst})} {unit}: {bad[:8]})" if bad else ""
    return Finding(section, name, bool(bad), f"max |diff| {top:.1e}{where}")
