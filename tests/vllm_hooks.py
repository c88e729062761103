"""What the vLLM tests read from inside an in-process engine."""

from __future__ import annotations

from typing import Any

import torch


def record_draft_calls(llm: Any) -> list[dict[str, torch.Tensor]]:
    """Hook the draft model inside the (in-process) worker: keep every forward's inputs and output."""
    records: list[dict[str, torch.Tensor]] = []

    def install(worker: Any) -> None:
        def hook(module: Any, args: tuple, kwargs: dict, out: tuple) -> None:
            kept = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            records.append(kept | {"out": out[0].detach().clone()})

        worker.model_runner.drafter.model.register_forward_hook(hook, with_kwargs=True)

    llm.collective_rpc(install)
    return records


def harness_forward(draft: Any, embeds: torch.Tensor, memory: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The harness draft over rows [n, H]: row i (harness position positions[i]) reads memory rows 0..i."""
    n = embeds.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    with torch.inference_mode():            # the recorded tensors are inference tensors
        state = draft.new_state()
        draft.remember(state, memory[None])
        return draft.forward_step(state, embeds[None], positions, causal, causal).features[0]


def check_speculative_steps(draft: Any, prefill: dict[str, torch.Tensor], steps: list[dict[str, torch.Tensor]],
                            positions: torch.Tensor) -> None:
    """Each recorded speculative step is one row fed the draft's own feature of the previous step, and its
    output equals the harness draft's over every row so far."""
    embeds, memory, previous = prefill["inputs_embeds"], prefill["hidden_states"], prefill["out"][-1]
    for step in steps:
        assert step["hidden_states"].shape[0] == 1 and torch.equal(step["hidden_states"][0], previous)
        embeds = torch.cat([embeds, step["inputs_embeds"]])
        memory = torch.cat([memory, step["hidden_states"]])
        positions = torch.cat([positions, step["positions"] + 1])
        out = harness_forward(draft, embeds, memory, positions)
        torch.testing.assert_close(step["out"][-1], out[-1], atol=1e-4, rtol=1e-5)
        previous = step["out"][-1]
