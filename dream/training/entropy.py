"""Entropy-adaptive intermediate supervision: which target layer teaches the draft's first block, per token.

For target layer l and query token i, AE_l(i) = mean over heads of -sum_j A_l[h, i, j] log A_l[h, i, j]
(0 log 0 = 0). The adapter's `prefill(entropy=True)` returns it as [L, S]; `attention_entropy` computes the
same from a full attention tensor and is the reference it is tested against. Per token the supervising
layer is l*(i) = argmin_l AE_l(i) inside a window of layers (`LayerWindow`), or one static layer.

WHICH hidden state supervises: the OUTPUT of layer l*, i.e. the residual stream right after decoder layer
l* (0-based), before the final norm: the adapter's `layer_outputs[l*]`, which is `hidden_states[l* + 1]` in
transformers' `output_hidden_states` tuple (whose entry 0 is the input embeddings). The reference code
gathered hidden_states[argmin + 1] with argmin over a window that started at layer 1, i.e. the INPUT of the
argmin layer; that off-by-one is not reproduced here.

Selections are computed once, offline, with the training data (dream.training.datagen).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from dream.draft.config import LayerWindow


def attention_entropy(attention: Tensor) -> Tensor:
    """Reference: attention probabilities [L, heads, S, S] (or [heads, S, S]) -> head-mean entropy [L, S] ([S])."""
    probs = attention.double()
    entropy = -torch.special.xlogy(probs, probs).sum(-1)         # [..., heads, S]
    return entropy.mean(-2).float()


def select_layers(entropy: Tensor, window: LayerWindow = LayerWindow()) -> Tensor:
    """entropy [L, S] -> supervising layer per token [S] long: argmin inside the window (first on ties)."""
    layers = window.candidates(entropy.shape[0])
    if window.static_layer is not None:
        return torch.full((entropy.shape[1],), window.static_layer, dtype=torch.long)
    return entropy[layers.start : layers.stop].argmin(0) + layers.start


def gather_supervision(layer_outputs: dict[int, Tensor] | Tensor, layers: Tensor) -> Tensor:
    """The supervising hidden state per token: OUTPUT of layer layers[i] at token i -> [S, H].

    layer_outputs: {layer: [S, H] or [1, S, H]} (the adapter's ForwardOutput.layer_outputs), or a stacked
    tensor [L, S, H] indexed by layer.
    """
    if isinstance(layer_outputs, Tensor):
        stacked, index = layer_outputs, layers
    else:
        needed = sorted(set(layers.tolist()))
        missing = [layer for layer in needed if layer not in layer_outputs]
        if missing:
            raise ValueError(f"layer outputs {missing} were selected but not captured")
        stacked = torch.stack([layer_outputs[layer].reshape(layer_outputs[layer].shape[-2:]) for layer in needed])
        index = torch.searchsorted(torch.tensor(needed), layers)
    tokens = torch.arange(layers.shape[0])
    return stacked[index, tokens]


@dataclass(frozen=True)
class EntropyReport:
    mean: list[float]            # [L] mean entropy per layer over all counted tokens
    std: list[float]             # [L] standard deviation per layer over tokens
    argmin_counts: list[int]     # [L] how many tokens picked each layer (within the window)
    num_tokens: int
    window: LayerWindow

    def to_dict(self) -> dict:
        out = asdict(self)
        out["window"] = self.window.to_dict()
        return out


def entropy_report(
    entropies: Iterable[Tensor],                 # each [L, S] for one sample
    masks: Iterable[Tensor] | None = None,       # each [S] bool: tokens to count (e.g. response tokens)
    window: LayerWindow = LayerWindow(),
) -> EntropyReport:
    """Per-layer mean/std of attention entropy over a dataset and the histogram of argmin layers."""
    total = total_sq = counts = None
    num_tokens = 0
    mask_iter = iter(masks) if masks is not None else None
    for entropy in entropies:
        entropy = entropy.double()
        if mask_iter is not None:
            entropy = entropy[:, next(mask_iter).bool()]
        if total is None:
            num_layers = entropy.shape[0]
            total = torch.zeros(num_layers, dtype=torch.float64)
            total_sq = torch.zeros_like(total)
            counts = torch.zeros(num_layers, dtype=torch.long)
        total += entropy.sum(1)
        total_sq += entropy.square().sum(1)
        counts += torch.bincount(select_layers(entropy, window), minlength=entropy.shape[0])
        num_tokens += entropy.shape[1]
    if total is None or num_tokens == 0:
        raise ValueError("entropy_report needs at least one token")
    mean = total / num_tokens
    std = (total_sq / num_tokens - mean.square()).clamp_min(0).sqrt()
    return EntropyReport(mean.tolist(), std.tolist(), counts.tolist(), num_tokens, window)


def plot_entropy_report(report: EntropyReport, path: str | Path, title: str = "") -> Path:
    """Two panels: mean +- std entropy by layer, and the argmin-layer histogram; written to `path`."""
    import matplotlib

    matplotlib.use("Agg")   # no display here; must precede pyplot's import
    import matplotlib.pyplot as plt

    layers = list(range(len(report.mean)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.errorbar(layers, report.mean, yerr=report.std, marker="o", capsize=3)
    top.set_ylabel("attention entropy (nats)")
    top.set_title(title or f"attention entropy by layer ({report.num_tokens} tokens)")
    bottom.bar(layers, report.argmin_counts)
    bottom.set_xlabel("target layer (0-based)")
    bottom.set_ylabel("tokens with argmin here")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
