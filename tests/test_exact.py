"""Exact in bf16: on every family, greedy output of the `ar` loop and of speculative decoding (random-weight
DREAM, EAGLE-2 and EAGLE-3 drafts, prompt lookup, noisy oracle drafters over several tree shapes) equals the stock
model's own `generate()` token for token, in bf16, the stock model running under the same batch-invariant
mode as the adapter. The diagnosis asserts, per family, the property the mode and the exact path give (a
row's bits do not depend on the rows fed with it) and prints what is machine-specific: which shapes the
probe pads. A negative control shows that the check catches the old masked verify path where this CPU's
kernels make it part from generate() (docs/exactness.md)."""

from __future__ import annotations

import zlib

import pytest
import torch
from fixtures import FAMILIES, VLM_FAMILIES, open_draft, stock_model, tiny_image
from proposers import TREES, OracleProposer, RandomProposer, hf_greedy

from dream.draft import DraftConfig, DraftProposer, build_draft
from dream.engine import generate
from dream.pld import PromptLookupProposer
from dream.target import TargetAdapter
from dream.target import invariant_attention
from dream.target.attention import ATTENTION_NAME, INVARIANT_ATTENTION_NAME, invariant_attention_name
from dream.target.diagnose import attention_findings, format_findings, rowwise_findings
from dream.target.invariance import (BatchInvariance, RowPlan, apply_row_plan, probe_row_plan, set_text_attention,
                                     text_attention)
from dream.target.invariant_attention import probe_attention
from dream.tree import Tree, TreeConfig, chain_tree, tree_from_parents

MAX_NEW = 24
PROMPTS = ("Describe it.", "a b c d e f g")
# Three tree shapes for the noisy oracles: a wide tree, a narrow deep one, a chain.
SHAPES = (TREES[0], TREES[3], TREES[5])
DRAFT_TREE = TreeConfig(top_k=3, depth=4, total_tokens=10)

pytestmark = pytest.mark.usefixtures("one_thread")   # see conftest.one_thread


def seed_of(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


@pytest.fixture(scope="module")
def bf16_case(tiny_target_path):
    """(family, prompt) -> (bf16 adapter, inputs, generate() tokens of the bf16 stock model); cached."""
    adapters: dict[str, TargetAdapter] = {}
    done: dict[tuple[str, str], tuple] = {}

    def get(family: str, text: str):
        if family not in adapters:
            adapters[family] = TargetAdapter.from_pretrained(tiny_target_path(family), dtype=torch.bfloat16,
                                                               batch_invariant="on")
        if (family, text) not in done:
            target = adapters[family]
            images = [tiny_image(0, (48, 32))] if family in VLM_FAMILIES else []
            content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
            inputs = target.build_inputs([{"role": "user", "content": content}], images)
            stock = stock_model(tiny_target_path(family), dtype=torch.bfloat16)
            BatchInvariance(stock, "on")  # the reference runs under the same numerics
            reference = hf_greedy(stock, inputs, MAX_NEW)
            done[family, text] = target, inputs, reference
        return done[family, text]

    return get


def random_draft_proposer(target: TargetAdapter, architecture: str, family: str) -> DraftProposer:
    torch.manual_seed(seed_of(family, architecture))
    draft = open_draft(build_draft(DraftConfig.from_target(target, architecture))).to(torch.bfloat16)
    return DraftProposer(draft, target, DRAFT_TREE)


def proposers(target: TargetAdapter, family: str, reference: list[int]) -> dict:
    out = {"pld": PromptLookupProposer(num_tokens=4, image_token_id=target.image_token_id),
           "dream": random_draft_proposer(target, "dream", family),
           "eagle2": random_draft_proposer(target, "eagle2", family),
           "eagle3": random_draft_proposer(target, "eagle3", family)}
    for i, cfg in enumerate(SHAPES):
        out[f"noisy{i}"] = OracleProposer(reference, cfg, target.vocab_size, hit=2.5, seed=seed_of(family, str(i)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_greedy_equals_generate(bf16_case, family):
    for text in PROMPTS:
        target, inputs, reference = bf16_case(family, text)
        assert target.verify_mode == "exact"
        assert generate(target, inputs, max_new_tokens=MAX_NEW).token_ids == reference, ("ar", text)
        for name, proposer in proposers(target, family, reference).items():
            result = generate(target, inputs, proposer=proposer, max_new_tokens=MAX_NEW)
            assert result.token_ids == reference, (name, text)


@pytest.mark.parametrize("family", FAMILIES)
def test_diagnosis_finds_what_the_exact_path_relies_on(bf16_case, family):
    """Under the batch-invariant mode, row-wise operations give a row the same bits whatever rows come with
    it, and the exact path's own attention calls (nodes batched per depth, keys gathered) equal a one-token
    step. Which shapes needed padding is this machine's fact: printed, not asserted (run with -s to read)."""
    target, inputs, _ = bf16_case(family, PROMPTS[0])
    assert target.invariance.invariant, target.invariance.summary()
    findings = rowwise_findings(target) + attention_findings(target, inputs)
    print(f"\n{family}: {target.invariance.summary()}\n{format_findings(findings)}")
    attention = "batch-invariant" if text_attention(target.model).startswith(INVARIANT_ATTENTION_NAME) else "sdpa"
    relied_on = [f for f in findings if f.section == "row-wise" or f"exact path, {attention}" in f.name]
    assert len(relied_on) > 8 and not [f.name for f in relied_on if f.differs]


# Cases where the old path parted from generate() on the CPUs seen so far (a property of the kernels).
OLD_PATH_CASES = [("llama", PROMPTS[1]), ("llava_next", PROMPTS[0]), ("smolvlm", PROMPTS[1])]


def test_negative_control_masked_path_parts_from_generate(bf16_case, monkeypatch):
    """The same check, on the masked verify path: some run must differ, else the test above proves nothing."""
    differing = []
    for family, text in OLD_PATH_CASES:
        target, inputs, reference = bf16_case(family, text)
        monkeypatch.setattr(target, "verify_mode", "masked")
        random = RandomProposer(TREES[0], target.vocab_size, seed=seed_of(family, "random"))
        for name, proposer in {"random": random, "pld": PromptLookupProposer(num_tokens=4)}.items():
            if generate(target, inputs, proposer=proposer, max_new_tokens=MAX_NEW).token_ids != reference:
                differing.append((family, name))
    if not differing:
        pytest.skip("on this CPU the masked path matched generate() in every case: no divergence to detect")


# ---- every tree node against decoding steps along its path ---------------------------------------------------
ONE_NODE = (torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, dtype=torch.long))


def random_tree(nodes: int, seed: int) -> Tree:
    """Parents drawn at random (parents first): wide and deep parts, depths up to nodes - 1."""
    generator = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=generator)) for i in range(1, nodes)]
    return tree_from_parents(torch.randint(3, 90, (nodes,), generator=generator), torch.tensor(parents))


# A random tree, a wide one, and a chain of 20: its nodes see 1 .. 20 keys past the prefix, so their lengths
# straddle every 16-key block edge a kernel might split at.
TREE_CASES = {"random12": random_tree(12, 1), "random20": random_tree(20, 2),
              "chain20": chain_tree(torch.arange(3, 23))}


def step_logits(target: TargetAdapter, cache, tree: Tree, node: int) -> torch.Tensor:
    """[V]: what plain one-token decoding steps along `node`'s path give it (one-node verifies, which
    test_bf16_greedy_equals_generate holds to generate()'s steps); the cache is rewound after."""
    path = tree.ancestors[node].nonzero().flatten()
    for token in tree.tokens[path]:
        logits = target.verify(token[None], *ONE_NODE, cache).logits[0, 0]
        target.commit(cache, 1, torch.zeros(1, dtype=torch.long))
    target.commit(cache, len(path), torch.zeros(0, dtype=torch.long))
    return logits


def differing_nodes(target: TargetAdapter, inputs, tree_attention: str, step_attention: str) -> dict:
    """Per tree case, the nodes whose verify logits (under `tree_attention`) are not bit-identical to their
    decoding steps' (under `step_attention`)."""
    cache = target.new_cache()
    target.prefill(inputs, cache)
    differing = {}
    for name, tree in TREE_CASES.items():
        set_text_attention(target.model, tree_attention)
        logits = target.verify(tree.tokens, tree.ancestors, tree.depths, cache).logits[0]
        target.commit(cache, tree.num_nodes, torch.zeros(0, dtype=torch.long))
        set_text_attention(target.model, step_attention)
        differing[name] = [i for i in range(tree.num_nodes)
                           if not torch.equal(logits[i], step_logits(target, cache, tree, i))]
    return differing


@pytest.fixture
def restore_attention(bf16_case):
    """The adapters are shared by the module: whatever attention a test switches to, switch back."""
    switched = []

    def get(family: str):
        target, inputs, _ = bf16_case(family, PROMPTS[0])
        switched.append((target.model, text_attention(target.model)))
        return target, inputs

    yield get
    for model, name in switched:
        set_text_attention(model, name)


@pytest.mark.parametrize("attention", ["batch-invariant", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tree_verify_equals_decoding_steps(restore_attention, family, attention):
    """The exact path's premise, asserted on this CPU: every node's logits equal plain decoding steps', for
    the batch-invariant attention (all nodes in one call per layer) and for sdpa (one call per depth)."""
    target, inputs = restore_attention(family)
    block = target.invariance.attention_block
    if attention == "batch-invariant" and block is None:
        pytest.skip(f"the batch-invariant attention failed its probe on this CPU: {target.invariance.summary()}")
    name = invariant_attention_name(block) if attention == "batch-invariant" else ATTENTION_NAME
    differing = differing_nodes(target, inputs, name, name)
    assert not any(differing.values()), differing


@pytest.mark.parametrize("family", ["llama", "idefics3"])
def test_negative_control_steps_under_other_attention(restore_attention, family):
    """The same check where the tree's attention is not the steps' (batch-invariant against sdpa): nodes must
    differ, else the equality above would not show that the verify reproduces the steps' own numerics."""
    target, inputs = restore_attention(family)
    block = target.invariance.attention_block
    if block is None:
        pytest.skip("the batch-invariant attention failed its probe on this CPU: there is no second attention")
    differing = differing_nodes(target, inputs, invariant_attention_name(block), ATTENTION_NAME)
    assert any(differing.values()), differing


def test_attention_probe_compares_bits(monkeypatch):
    """probe_attention fails a tree call whose input differs from the decoding step's in a single element by
    one bf16 step; the block it finds for the real call is this machine's fact, printed (-s)."""
    print(f"\nbatch-invariant attention at 4 heads / 2 kv heads / 16 dims, bf16: block "
          f"{probe_attention(4, 2, 16, torch.bfloat16)}")
    real = invariant_attention._tree_inputs

    def one_element_off(*args, **kwargs):
        query, key, value, mask = real(*args, **kwargs)
        query = query.clone()
        query[0, -1, 0, 0] = torch.nextafter(query[0, -1, 0, 0], torch.tensor(float("inf"), dtype=query.dtype))
        return query, key, value, mask

    monkeypatch.setattr(invariant_attention, "_tree_inputs", one_element_off)
    assert probe_attention(4, 2, 16, torch.bfloat16) is None


def test_auto_times_the_step_cost_once_per_machine(tiny_target_path, tmp_path, monkeypatch):
    """`auto` decides on a timing near its limit on some CPUs: timed once, then read back, two loads of the
    same model on the same machine decide alike (the timing itself is machine-specific: not asserted)."""
    import dream.target.invariance as invariance

    monkeypatch.setenv("DREAM_CACHE", str(tmp_path))
    first = BatchInvariance(stock_model(tiny_target_path("llama"), dtype=torch.bfloat16), "auto").report
    monkeypatch.setattr(invariance, "decode_step_cost", lambda *args, **kwargs: pytest.fail("timed again"))
    second = BatchInvariance(stock_model(tiny_target_path("llama"), dtype=torch.bfloat16), "auto").report
    assert (second.cost, second.enabled, second.attention_block) == (first.cost, first.enabled, first.attention_block)
    print(f"\n{first.summary()}")


def switch_kernels_past_32_rows(monkeypatch) -> None:
    """F.linear as bf16 linears run on an AMX Xeon: calls of up to 32 rows give a row the bits it gets alone,
    longer calls other bits (here fp64 sums, rounded once)."""
    real_linear = torch.nn.functional.linear

    def switching_linear(x, weight, bias=None):
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] > 32:
            out = real_linear(rows.double(), weight.double(), None if bias is None else bias.double()).float()
        else:
            out = torch.cat([real_linear(rows[i:i + 1], weight, bias) for i in range(rows.shape[0])]
                            or [real_linear(rows, weight, bias)])
        return out.reshape(*x.shape[:-1], weight.shape[0])

    monkeypatch.setattr(torch.nn.functional, "linear", switching_linear)


def test_a_kernel_that_changes_past_32_rows_gets_split_calls(monkeypatch):
    """The probe finds such a kernel (no padding, split past 32), and under the plan a 48-row call gives every
    row the bits it gets alone, where the stock call does not."""
    switch_kernels_past_32_rows(monkeypatch)
    module = torch.nn.Linear(256, 512)
    assert probe_row_plan(module) == RowPlan(pad=1, split=32)
    x = torch.randn(2, 24, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = torch.cat([module(row[None]) for row in x.reshape(48, 256)]).reshape(2, 24, 512)
        assert not torch.equal(module(x), alone)  # the negative control: the stock 48-row call
        handles = apply_row_plan(module, RowPlan(pad=1, split=32))
        assert torch.equal(module(x), alone)
        for handle in handles:
            handle.remove()


def test_a_40_node_verify_is_split_only_while_it_runs(tiny_target_path, tmp_path, monkeypatch):
    """With such kernels, a 40-node tree verify gives every node its decoding steps' logits: the split hooks go
    in for that verify (and the head after it) and are gone for the steps; without them nodes differ."""
    import dream.target.invariance as invariance

    monkeypatch.setenv("DREAM_CACHE", str(tmp_path))  # the fake kernels' probes must not reach the real cache
    monkeypatch.setattr(invariance, "PROBE_OUTPUTS", 1 << 12)
    switch_kernels_past_32_rows(monkeypatch)
    target = TargetAdapter.from_pretrained(tiny_target_path("llama"), batch_invariant="on")
    assert {(shape.pad_rows, shape.split_rows) for shape in target.invariance.shapes} == {(1, 32)}
    assert not any(m._forward_hooks for m in invariance.linear_modules(target.model))  # steps run unhooked
    inputs = target.build_inputs([{"role": "user", "content": [{"type": "text", "text": "Count to ten."}]}])
    tree = random_tree(40, 3)

    def differing() -> list[int]:
        cache = target.new_cache()
        target.prefill(inputs, cache)
        logits = target.verify(tree.tokens, tree.ancestors, tree.depths, cache).logits[0]
        target.commit(cache, tree.num_nodes, torch.zeros(0, dtype=torch.long))
        return [i for i in range(tree.num_nodes) if not torch.equal(logits[i], step_logits(target, cache, tree, i))]

    assert differing() == []
    monkeypatch.setattr(target._invariance, "_split_only", [])
    assert differing()
