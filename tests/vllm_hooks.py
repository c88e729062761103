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
