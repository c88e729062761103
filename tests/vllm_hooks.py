"""What the vLLM tests read from inside an in-process engine."""

from __future__ import annotations

from typing import Any

import torch


def record_draft_calls(llm: Any) -> list[dict[str, torch.Tensor]]:
    """Hook the draft model inside the (in-process) worker: keep every forward's inputs and outputs ("out": the
    features the head reads, "feedback": what the next speculative step is fed; EAGLE-3: the pre-norm state)."""
    records: list[dict[str, torch.Tensor]] = []

    def install(worker: Any) -> None:
        def hook(module: Any, args: tuple, kwargs: dict, out: tuple) -> None:
            kept = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            records.append(kept | {"out": out[0].detach().clone(), "feedback": out[1].detach().clone()})

        worker.model_runner.drafter.model.register_forward_hook(hook, with_kwargs=True)

    llm.collective_rpc(install)
    return records


def harness_forward(draft: Any, embeds: torch.Tensor, memory: torch.Tensor,
                    positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The harness draft over rows [n, H]: row i (harness position positions[i]) reads memory rows 0..i.
    -> (features [n, H], feedback [n, H]: what each row leaves for a drafted position after it)."""
    n = embeds.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    with torch.inference_mode():            # the recorded tensors are inference tensors
        state = draft.new_state()
        draft.remember(state, memory[None])
        out = draft.forward_step(state, embeds[None], positions, causal, causal)
        return out.features[0], draft.feedback(out)[0]


def check_draft_rows(draft: Any, record: dict[str, torch.Tensor], positions: torch.Tensor) -> None:
    """The draft inside vLLM computed the harness draft's features and feedback on the prompt's rows."""
    features, feedback = harness_forward(draft, record["inputs_embeds"], record["hidden_states"], positions)
    torch.testing.assert_close(record["out"], features, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(record["feedback"], feedback, atol=1e-4, rtol=1e-5)


def check_speculative_steps(draft: Any, prefill: dict[str, torch.Tensor], steps: list[dict[str, torch.Tensor]],
                            positions: torch.Tensor) -> None:
    """Each recorded speculative step is one row fed the draft's own feedback of the previous step, and its
    output equals the harness draft's over every row so far."""
    embeds, memory, previous = prefill["inputs_embeds"], prefill["hidden_states"], prefill["feedback"][-1]
    for step in steps:
        assert step["hidden_states"].shape[0] == 1 and torch.equal(step["hidden_states"][0], previous)
        embeds = torch.cat([embeds, step["inputs_embeds"]])
        memory = torch.cat([memory, step["hidden_states"]])
        positions = torch.cat([positions, positions[-1:] + 1])
        features, feedback = harness_forward(draft, embeds, memory, positions)
        torch.testing.assert_close(step["out"][-1], features[-1], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(step["feedback"][-1], feedback[-1], atol=1e-4, rtol=1e-5)
        previous = step["feedback"][-1]
