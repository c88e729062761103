"""The batch-invariant mode: a row gets the same bits whatever other rows come with it.

Why: a greedy tree verify equals plain decoding only if every operation gives a tree node's row the result a
one-token decoding step gives it. CPU GEMM libraries pick their kernel by the number of rows M, and the
kernels accumulate in different orders: on an AVX-512-BF16 EPYC a bf16 linear sends M = 1 through another
kernel than M >= 2 (rows part at near ties), and in fp32 M = 1, M in 2..3 and M >= 4 are three different
kernels there. Which shapes and row counts differ is a property of the machine, so it is probed, not assumed.

The mode: for each distinct linear shape of the language model (and the output head), `probe_row_plan`
finds the smallest P in PAD_CANDIDATES such that, for every probed row count M, each row of an M-row call
(padded to P rows when M < P) equals that row fed alone padded to P. Calls with fewer than P rows are then
padded with copies of their last row and the extra rows dropped, through forward hooks on the stock modules
(nothing is copied or subclassed). Calls of more rows run as they are: the probe checked them.
Some kernels change only past a row count a verify rarely reaches (on a 2-core AMX Xeon, bf16: every call
of 1 to 32 rows gives a row the bits it gets alone, 48 and 64 rows other ones). There a small P with a split
S wins over padding every step to 64 rows: calls of S < M <= max(PROBE_ROWS) rows run as calls of at most S
rows (`RowPlan`). Where nothing is padded, those hooks go in only around a verify of more than S nodes
(`BatchInvariance.large_calls`): hooks on every linear cost a decoding step 1-9 % there. Every call
that reaches generate()'s decoding step, a tree verify or a prefill goes through the same hooks, so the
reference generate() of the bench (`hf`) runs under the same numerics.

Row counts above max(PROBE_ROWS) are not probed: only prompt prefills reach them, and every method's
prefill is the same call. The probe runs once per shape and the model's device, under the current thread
count.

Attention: the mode also switches the language model's decoding steps to the batch-invariant attention
(dream.target.invariant_attention), with key counts padded to the block its probe found at the model's
head shapes, so that an exact tree verify can run all its nodes in one attention call per layer. Prefills
stay sdpa. Where the probe fails (or the model runs neither sdpa nor "dream"), decoding keeps sdpa and the
exact verify its per-depth sdpa calls.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from .attention import ATTENTION_NAME, invariant_attention_name, register_dream_attention
from .invariant_attention import attention_block
from .packing import is_packed
from .probe_cache import cached_probe, probe_key

POLICIES = ("auto", "on", "off")
DEFAULT_MAX_COST = 0.05  # "auto" takes the whole mode where a decoding step gets at most 5 % slower ...
# ... and the linear padding alone up to 15 %, or whatever the timing says where no call is padded past 2 rows
# (a one-token step is memory-bound: 2 rows read the same weights). Its 2-4 % on a bf16 CPU read 6.4 % beside
# two training jobs and 17 % beside three; exactness must not flip with the load. fp32's 16 rows (+59-90 %) stay off.
PADDING_MAX_COST = 0.15
TWO_ROW_PADDING = 2
PAD_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
PROBE_ROWS = (*range(1, 33), 48, 64)  # a decoding step and tree verifies
SPLIT_CANDIDATES = range(16, 33)  # a split row count keeps a 16-node verify one call; all below it are probed
PROBE_OUTPUTS = 1 << 18  # outputs compared per row count
# Decoding steps the batch-invariant attention may replace; another attention (eager, a kernel) is left alone.
SWITCHABLE_ATTENTION = ("sdpa", ATTENTION_NAME)


@dataclass(frozen=True)
class LinearShape:
    """One distinct linear shape of the target and what the probe found for it."""

    out_features: int
    in_features: int
    dtype: str
    bias: bool
    modules: int  # how many modules share it
    pad_rows: int | None  # calls with fewer rows are padded to this many; None: no candidate was invariant
    split_rows: int | None = None  # calls of more rows (up to max(PROBE_ROWS)) run in chunks of this many

    def plan_summary(self) -> str:
        if self.pad_rows is None:
            return "NOT invariant"
        plan = "as is" if self.pad_rows == 1 else f"pad to {self.pad_rows}"
        return plan + (f", split past {self.split_rows} rows" if self.split_rows else "")


@dataclass(frozen=True)
class InvarianceReport:
    policy: str  # "auto" | "on" | "off", as asked
    enabled: bool  # the hooks are in place
    shapes: tuple[LinearShape, ...] = ()
    cost: float | None = None  # extra time of a plain decoding step under the mode, a fraction (timed once
    #   per machine and model shape, kept in $DREAM_CACHE/invariance.json)
    threads: int | None = None  # the intra-op thread count the probe ran under (kernels depend on it)
    attention_probed: bool = False  # the batch-invariant attention was probed (the model ran sdpa or "dream")
    attention_block: int | None = None  # its key-count block where it passed (decoding steps and exact
    #   verifies use it while the mode is on); None: failed, not probed, or left out by auto; sdpa kept
    attention_left_out: bool = False  # auto: it passed its probe but cost too much a step; sdpa kept

    @property
    def invariant(self) -> bool:
        """The mode is on and every linear shape found a row count that makes it batch-invariant."""
        return self.enabled and all(shape.pad_rows is not None for shape in self.shapes)

    def to_json(self) -> dict:
        return {**asdict(self), "invariant": self.invariant}

    def summary(self) -> str:
        if not self.shapes:
            return "batch-invariant mode off"
        state = "on" if self.enabled else f"off (policy {self.policy})"
        parts = [f"{s.out_features}x{s.in_features}{'+bias' if s.bias else ''}: " + s.plan_summary()
                 for s in self.shapes]
        return (f"batch-invariant mode {state}, {self.shapes[0].dtype}, {self.threads} threads, it costs "
                f"~{self.cost:.0%} of a decoding step; attention: {self.attention_summary()}; " + "; ".join(parts))

    def attention_summary(self) -> str:
        if not self.attention_probed:
            return "sdpa (not probed)"
        if self.attention_left_out:
            return ("sdpa, one call per depth in a verify (the batch-invariant attention passed its probe but "
                    "made a decoding step over 5 % slower: --batch-invariant on uses it)")
        if self.attention_block is None:
            return "sdpa (the batch-invariant attention failed its probe here), one call per depth in a verify"
        return f"batch-invariant (keys padded to a multiple of {self.attention_block}), one call per layer in a verify"


def linear_modules(model: PreTrainedModel) -> list[nn.Linear]:
    """The text decoder's linear layers and the output head: every linear a decoding step runs (a VLM's
    vision tower and connector run in the prefill only)."""
    found = [m for m in model.model.get_decoder().modules() if isinstance(m, nn.Linear)]
    head = model.get_output_embeddings()
    if isinstance(head, nn.Linear):
        found.append(head)
    return found


class BatchInvariance:
    """The mode on a model's language model: probed once, applied through hooks and the attention switch,
    removable.

    policy "on" applies the padding the probe found and the batch-invariant attention where its probe passed;
    "auto" applies both where together they make a plain decoding step at most DEFAULT_MAX_COST slower (timed
    once per machine and model shape), else the padding alone (exact verifies then run sdpa, one call per
    depth) where that alone costs at most PADDING_MAX_COST or pads no call past 2 rows; "off" probes nothing."""

    def __init__(self, model: PreTrainedModel, policy: str = "auto") -> None:
        if policy not in POLICIES:
            raise ValueError(f"batch-invariant policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self._handles: list[RemovableHandle] = []
        self._split_only: list[tuple[list[nn.Linear], RowPlan]] = []  # hooked only for a long call (large_calls)
        self._model, self._restore_attention = model, None  # restore_attention: the name before the switch
        if policy == "off":
            self.report = InvarianceReport(policy, False)
            return
        groups: dict[tuple, list[nn.Linear]] = {}
        for module in linear_modules(model):
            key = (module.out_features, module.in_features, module.weight.dtype, module.bias is not None)
            groups.setdefault(key, []).append(module)
        plans = [cached_row_plan(members[0]) for members in groups.values()]
        padded = [(members, plan) for members, plan in zip(groups.values(), plans) if plan and plan.pad > 1]
        split_only = [(members, plan) for members, plan in zip(groups.values(), plans)
                      if plan and plan.pad == 1 and plan.split is not None]
        probed = text_attention(model) in SWITCHABLE_ATTENTION
        block = probe_model_attention(model) if probed else None
        changes = padded or block is not None
        cost = self._cost(padded, block) if changes else 0.0
        attention_kept = False
        if policy == "auto" and cost > DEFAULT_MAX_COST and block is not None:
            # The padding alone keeps the exact verify exact (on sdpa, one call per depth): keep that where
            # only the attention's extra cost passes the limit.
            cost = self._cost(padded, None) if padded else 0.0
            block, attention_kept = None, True
        two_rows = block is None and all(plan.pad <= TWO_ROW_PADDING for _, plan in padded)
        # With the attention on, cost <= DEFAULT_MAX_COST already.
        enabled = policy == "on" or cost <= PADDING_MAX_COST or two_rows
        if enabled:
            self._apply(padded, block)
            self._split_only = split_only
        shapes = tuple(LinearShape(out, width, str(dtype).removeprefix("torch."), bias, len(members),
                                   plan and plan.pad, plan and plan.split)
                       for (out, width, dtype, bias), members, plan in zip(groups, groups.values(), plans))
        self.report = InvarianceReport(policy, enabled, shapes, cost, torch.get_num_threads(), probed, block,
                                       attention_kept)

    def _cost(self, padded: list[tuple[list[nn.Linear], RowPlan]], attention_block: int | None) -> float:
        """decode_step_cost of this padding and attention, timed once per machine and model shape: the
        cost sits near the limit on some CPUs (4-7 % on an AVX-512-BF16 EPYC), where timing it at every load
        made `auto` decide differently from one run to the next."""
        model = self._model
        config, weight = model.config.get_text_config(), model.get_output_embeddings().weight
        shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                 getattr(config, "num_key_value_heads", None), getattr(config, "intermediate_size", None),
                 weight.shape[0])
        pads = sorted({(members[0].out_features, members[0].in_features, plan.pad, plan.split)
                       for members, plan in padded})
        packed = any(is_packed(m) for m in linear_modules(model))    # packed linears make a step cheaper
        key = probe_key("decode-step-cost", weight.device.type, weight.dtype, *shape, pads, attention_block,
                        *(["packed"] if packed else []))
        return cached_probe(key, lambda: decode_step_cost(
            model, lambda: self._apply(padded, attention_block), self.remove))

    def _apply(self, padded: list[tuple[list[nn.Linear], RowPlan]], attention_block: int | None) -> None:
        for members, plan in padded:
            for module in members:
                self._handles += apply_row_plan(module, plan)
        if attention_block is not None:
            self._restore_attention = text_attention(self._model)
            set_text_attention(self._model, invariant_attention_name(attention_block))

    @contextmanager
    def large_calls(self, rows: int) -> Iterator[None]:
        """Inside, calls of `rows` rows give each row its own bits on the linears that need no padding but a
        split past some row count: their hooks are in place only while a call that long runs (a tree verify of
        more nodes than the split), so a decoding step pays for no hooks."""
        handles = [handle for members, plan in self._split_only if rows > plan.split
                   for module in members for handle in apply_row_plan(module, plan)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._split_only = []
        if self._restore_attention is not None:
            set_text_attention(self._model, self._restore_attention)
            self._restore_attention = None


def probe_model_attention(model: PreTrainedModel) -> int | None:
    """The block at which the batch-invariant attention is invariant here at the language model's head shapes
    (a cached probe); None: at none."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    weight = model.get_output_embeddings().weight
    return attention_block(heads, kv_heads, head_dim, weight.dtype, weight.device)


def text_attention(model: PreTrainedModel) -> str:
    """The attention implementation the language model runs."""
    return model.config.get_text_config()._attn_implementation


def set_text_attention(model: PreTrainedModel, name: str) -> None:
    """Switch the language model's attention only: a VLM's vision tower keeps its own (CLIP breaks otherwise)."""
    register_dream_attention()
    text = model.config.get_text_config()
    if text is model.config:
        model.set_attn_implementation(name)
        return
    key = next(key for key in model.config.sub_configs if getattr(model.config, key, None) is text)
    model.set_attn_implementation({key: name})


@torch.no_grad()
def decode_step_cost(model: PreTrainedModel, apply: Callable[[], None], remove: Callable[[], None],
                     context: int = 160, repeats: int = 15) -> float:
    """Extra time of a plain decoding step (the text decoder and head over one token after `context` cached
    ones) with the mode applied (padding, attention), over the step without. Steps are timed in alternating
    pairs and the median of the pairs' ratios taken: a pair shares the machine's load of its moment, and the
    median ignores the pairs a burst of other work hit (fastest-of-each read 0 to 13 % for a 5 % cost). The
    context is a typical step's: a ~100-token image prompt plus half of 128 new tokens (at 64 the attention's
    key padding to its block weighs about 4 % of a step on smolvlm-135m, at 160 about 1 %)."""
    decoder, head = model.model.get_decoder(), model.get_output_embeddings()
    weight = head.weight
    embeds = torch.randn(1, context + 1, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight)
    prefix = decoder(inputs_embeds=embeds[:, :context], use_cache=True).past_key_values

    def step_s() -> float:
        cache = copy.deepcopy(prefix)
        start = time.perf_counter()
        head(decoder(inputs_embeds=embeds[:, context:], past_key_values=cache, use_cache=True).last_hidden_state)
        return time.perf_counter() - start

    step_s()  # warm-up
    ratios = []
    for _ in range(repeats):
        plain = step_s()
        apply()
        ratios.append(step_s() / plain)
        remove()
    return max(median(ratios) - 1.0, 0.0)  # below 0 is timing noise: padding adds work


@dataclass(frozen=True)
class RowPlan:
    """How the mode runs a linear's calls: fewer than `pad` rows padded to `pad`; more than `split` rows (up to
    max(PROBE_ROWS)) in chunks of at most `split` rows; split None: whole."""

    pad: int
    split: int | None = None


def cached_row_plan(module: nn.Linear) -> RowPlan | None:
    """probe_row_plan, once per machine: the kernel choice depends on the CPU, torch, the thread count, the
    device, the shape and dtype; the weight's values only decide which outputs a difference shows on. The
    results are kept in $DREAM_CACHE/invariance.json (a probe of the 49k-row head takes seconds)."""
    weight = module.weight
    key = probe_key("row plan v2", weight.device.type, weight.dtype, *weight.shape, module.bias is not None)
    found = cached_probe(key, lambda: _plan_json(probe_row_plan(module)))
    return RowPlan(*found) if found is not None else None


def _plan_json(plan: RowPlan | None) -> list | None:
    return None if plan is None else [plan.pad, plan.split]


@torch.no_grad()
def probe_row_plan(module: nn.Linear, rows: tuple[int, ...] = PROBE_ROWS,
                   candidates: tuple[int, ...] = PAD_CANDIDATES) -> RowPlan | None:
    """The smallest pad P such that every row of every probed call equals the row fed alone (padded to P), or,
    failing that at P, every call of up to S rows does (S in SPLIT_CANDIDATES, S >= P): then RowPlan(P, S).

    A kernel difference shows only where two accumulation orders round an output differently (about 1 in
    10^4-10^5 bf16 outputs), so the probe compares at least PROBE_OUTPUTS outputs per row count: each row
    count M tiles `n` random rows into calls of M rows (padded to P rows where M < P, as the mode runs them)."""
    weight, bias = module.weight, module.bias
    n = max(max(rows), -(-PROBE_OUTPUTS // module.out_features))
    x = torch.randn(n, module.in_features, generator=torch.Generator().manual_seed(0)).to(weight)

    def run(m: int, pad: int) -> Tensor:  # every row of x through calls of m rows, each padded to `pad`
        tiles = [_pad(x[i : i + m], pad) for i in range(0, n - m + 1, m)]
        return torch.cat([nn.functional.linear(t[None], weight, bias)[0, :m] for t in tiles])

    unpadded: dict[int, Tensor] = {}  # calls of m >= pad rows run as they are, whatever the candidate
    for pad in candidates:
        alone = run(1, pad)
        passed = 0  # the largest row count up to which every probed count passed
        for m in sorted(rows):
            if m >= pad and m not in unpadded:
                unpadded[m] = run(m, m)
            out = unpadded[m] if m >= pad else run(m, pad)
            if not torch.equal(out, alone[: out.shape[0]]):
                break
            passed = m
        if passed == max(rows):
            return RowPlan(pad)
        splits = [m for m in SPLIT_CANDIDATES if pad <= m <= passed and m in rows]
        if splits:
            return RowPlan(pad, max(splits))
    return None


def _pad(rows: Tensor, pad: int) -> Tensor:
    """[m, K] -> [max(m, pad), K]: the last row repeated (the probe checks the kept rows do not depend on it)."""
    if rows.shape[0] >= pad:
        return rows
    return torch.cat([rows, rows[-1:].expand(pad - rows.shape[0], -1)])


def apply_row_plan(module: nn.Linear, plan: RowPlan) -> list[RemovableHandle]:
    """Run `module`'s calls as `plan` says, through forward hooks: fewer than plan.pad rows padded (the first
    rows kept); more than plan.split rows, up to max(PROBE_ROWS), as chunks of plan.split rows computed in the
    forward hook, while the stock call between the hooks gets no rows (and does no work)."""
    call: dict[str, Any] = {"shape": None, "rows": None}  # the call being changed: input shape, a split's rows

    def before(mod: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        rows = x.shape[:-1].numel()
        call["shape"], call["rows"] = None, None
        if 0 < rows < plan.pad:
            call["shape"] = x.shape
            return (_pad(x.reshape(rows, x.shape[-1]), plan.pad), *args[1:])
        if plan.split is not None and plan.split < rows <= max(PROBE_ROWS):
            call["shape"], call["rows"] = x.shape, x.reshape(rows, x.shape[-1])
            return (call["rows"][:0], *args[1:])
        return None

    def after(mod: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        shape, rows = call["shape"], call["rows"]
        if shape is None:
            return None
        if rows is not None:  # mod.forward, not mod(...): the chunks must not come back through these hooks
            output = torch.cat([mod.forward(_pad(chunk, plan.pad))[: chunk.shape[0]]
                                for chunk in rows.split(plan.split)])
        return output[: shape[:-1].numel()].reshape(*shape[:-1], output.shape[-1])

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
