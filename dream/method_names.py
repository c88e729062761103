"""The method names, one vocabulary for both engines (`dream bench --engine harness|vllm`, `dream serve`).

    ar      plain decoding by the engine, no speculation (vLLM: no speculative_config)
    hf      transformers' own generate() on the loaded model (harness only)
    pld     prompt lookup, model-free (vLLM: its n-gram proposer)
    eagle2  the EAGLE-2-style draft
    eagle3  the EAGLE-3-style draft (vLLM: its EAGLE-3 path, reading the target's aux layers)
    dream   the DREAM draft; the harness also takes ablations dream-<what> (dream.methods)

The vLLM side once named ar `base` and pld `ngram` (the recorded runs in docs/results/vllm-*.json, `dream serve
--draft none|ngram`): those spellings are still accepted and read as the names above. No heavy imports here:
dream.serving loads this module in vLLM's processes.
"""

from __future__ import annotations

AR, HF, PLD = "ar", "hf", "pld"
DRAFT_NAMES = ("eagle2", "eagle3", "dream")   # one method per draft architecture; shipped drafts are looked up
                                              #   under these names (dream.methods.SHIPPED_DRAFTS)
BASELINES = (AR, HF, PLD)     # methods without a draft
PLAIN = (AR, HF)              # plain decoding: a speedup's baseline
VLLM_METHODS = (AR, PLD, *DRAFT_NAMES)     # what `dream bench --engine vllm` runs (drafts as chains)
HARNESS_ONLY = (HF,)
# Former names -> the names above: the vLLM side's `base` / `ngram`, and `dream serve --draft none`.
ALIASES = {"base": AR, "ngram": PLD, "none": AR}


def canonical(name: str) -> str:
    """A method name in this vocabulary (an alias read as the name it stands for)."""
    return ALIASES.get(name, name)
