"""TargetAdapter: one interface over stock transformers VLMs (and text LMs) for tree speculative decoding."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from .attention import (ATTENTION_NAME, VERIFY_MODES, AttentionObserver, StatsRecorder, VerifyMode, recording,
                        register_dream_attention, tree_verify)
from .cache import TargetCache, keep_tree_entries
from .families import IMAGE_BACKEND, Family, family_of
from .head import final_softcap, soft_cap
from .identity import target_fingerprint
from .inputs import InputBuilder, TargetInputs, pad_batch, processor_chat_template
from .invariance import BatchInvariance, InvarianceReport, linear_modules
from .masks import TreeLayout
from .packing import prepack_target


@dataclass
class AttentionStats:
    entropy: Tensor | None  # [L, S] float32: head-mean attention entropy of each query, per layer
    visual_scores: Tensor | None  # [S_vis] float32: attention each visual token receives in the LAST layer,
    #   summed over all queries, averaged over heads


@dataclass
class ForwardOutput:
    logits: Tensor  # [1, N, V]
    features: Tensor  # [1, N, H] final-layer post-norm
    input_embeds: Tensor | None  # [1, N, H] merged input embeddings the language model received (prefill)
    layer_outputs: dict[int, Tensor]  # requested layer outputs (residual after layer l), each [1, N, H]
    stats: AttentionStats | None


class TargetAdapter:
    """A stock transformers model behind the prefill / verify / commit interface of docs/design.md.

    The wrapped model's language model is switched to the "dream" attention implementation (sdpa, plus tree
    masks and on-the-fly statistics); it stays usable as a plain model, with the same outputs.

    `batch_invariant` ("auto" | "on" | "off", default "auto") probes the language model's linear layers and
    pads the calls whose row count takes another kernel (dream.target.invariance), and switches decoding steps
    to a batch-invariant attention that a verify runs for all nodes in one call per layer, where its probe
    passes, so a row's logits never depend on the rows fed with it; "auto" does so where that makes a
    decoding step at most 5 % slower.
    `invariance` reports what the probe found. Applied to the model itself: its own generate() runs under the
    same numerics.

    `verify_mode` (`VerifyMode`, default "exact") picks the verify path. "exact": every tree node attends over
    exactly its visible keys, as a one-token decoding step would, so outputs equal the stock model's own
    generate() bit for bit, in bf16 too (docs/exactness.md). "masked": one masked attention over prefix +
    tree, equal to a plain forward only up to rounding (exact in fp32 up to ~1e-6); the negative control of
    the exactness tests. It may be switched between calls (the `verify_mode` setter checks the name).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, processor: Any = None,
                 *, verify_mode: VerifyMode = "exact", batch_invariant: str = "auto") -> None:
        self.verify_mode = verify_mode
        spec = family_of(model.config)
        self._spec: Family = spec
        self.family: str = spec.name
        self.model = model.eval()
        self.tokenizer = tokenizer
        text_config = model.config.get_text_config()
        self.num_layers: int = text_config.num_hidden_layers
        self.hidden_size: int = text_config.hidden_size
        self.vocab_size: int = text_config.vocab_size
        self.max_context: int = text_config.max_position_embeddings
        self.image_token_id: int | None = getattr(model.config, "image_token_id", None) if spec.vision else None
        self.eos_token_ids: set[int] = _eos_ids(model, tokenizer)
        register_dream_attention()
        # Only the language model switches: the vision towers keep their own attention (CLIP breaks otherwise).
        model.set_attn_implementation({"text_config": ATTENTION_NAME} if spec.vision else ATTENTION_NAME)
        self._base = model.model  # VLM: vision + merge + language model; text LM: the decoder itself
        self._lm = model.model.get_decoder()  # the text decoder (language_model / text_model / itself)
        self._layers = self._lm.layers
        self._softcap = final_softcap(model.config)
        self._inputs = InputBuilder(spec, model.config, tokenizer, processor, self.max_context, model.dtype)
        self.packed_linears: int = 0     # linears on prepacked weights (set by _kernels)
        self._invariance = self._kernels(batch_invariant)

    @property
    def verify_mode(self) -> VerifyMode:
        """How verify() attends: "exact" (default) or "masked" (see the class docstring)."""
        return self._verify_mode

    @verify_mode.setter
    def verify_mode(self, mode: VerifyMode) -> None:
        if mode not in VERIFY_MODES:
            raise ValueError(f"verify mode {mode!r}: expected one of {', '.join(VERIFY_MODES)}")
        self._verify_mode = mode

    @property
    def invariance(self) -> InvarianceReport:
        return self._invariance.report

    def set_batch_invariant(self, policy: str) -> InvarianceReport:
        """Switch the batch-invariant mode ("auto" | "on" | "off"); it probes the kernels of the model's
        current device, dtype and thread count, so call it again after changing them."""
        self._invariance.remove()
        self._invariance = self._kernels(policy)
        return self.invariance

    def _kernels(self, policy: str) -> BatchInvariance:
        """Prepacked linears (same bits, less time: dream.target.packing), then the batch-invariant mode, both
        for the model's current device and dtype."""
        self.packed_linears = prepack_target(linear_modules(self.model))
        return BatchInvariance(self.model, policy)

    @classmethod
    def from_pretrained(
        cls,
        path_or_model: str | Path | PreTrainedModel,
        *,
        dtype: torch.dtype = torch.float32,
        processor: Any = None,
        verify_mode: VerifyMode = "exact",
        batch_invariant: str = "auto",
    ) -> "TargetAdapter":
        """Load a checkpoint directory (or wrap a loaded model) with its tokenizer and processor.

        `processor` may be a stock processor or a tokenizer; whatever is missing is loaded from the checkpoint
        directory (the model's `name_or_path` when a model object is given). `dtype` applies when loading.
        """
        if isinstance(path_or_model, PreTrainedModel):
            model, path = path_or_model, path_or_model.name_or_path
        else:
            path = str(path_or_model)
            vision = family_of(AutoConfig.from_pretrained(path)).vision
            auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
            model = auto.from_pretrained(path, dtype=dtype)
        expander = family_of(model.config).expander
        given = processor if isinstance(processor, ProcessorMixin) else None
        if expander == "stock":
            processor = given or AutoProcessor.from_pretrained(path, backend=IMAGE_BACKEND)
            return cls(model, processor.tokenizer, processor, verify_mode=verify_mode,
                       batch_invariant=batch_invariant)
        tokenizer = given.tokenizer if given else processor
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        if tokenizer.chat_template is None and path:
            tokenizer.chat_template = processor_chat_template(path)
        image_processor = None
        if expander is not None:
            image_processor = given.image_processor if given else AutoImageProcessor.from_pretrained(
                path, backend=IMAGE_BACKEND)
        return cls(model, tokenizer, image_processor, verify_mode=verify_mode, batch_invariant=batch_invariant)

    def build_inputs(self, prompt: str | list[dict], images: Sequence[Image.Image] = (), *,
                     expand_images: bool = True) -> TargetInputs:
        """A string prompt is used verbatim (write the family's image placeholder per image); chat messages
        ({"role", "content"}, content a string or a list of {"type": "text"|"image"} parts) go through the
        chat template with a generation prompt. expand_images=False leaves each image placeholder as the
        tokenizer encodes it, with no pixels: the token prompt for an engine that expands images itself."""
        return self._inputs(prompt, images, expand_images=expand_images)

    @property
    def pad_token_id(self) -> int:
        """What pads a batch of prompts: the tokenizer's pad token, else the lowest EOS id."""
        pad = self.tokenizer.pad_token_id
        return min(self.eos_token_ids) if pad is None else pad

    def new_cache(self) -> TargetCache:
        return TargetCache()

    @torch.no_grad()
    def prefill(
        self,
        inputs: TargetInputs,
        cache: TargetCache,
        *,
        layers: Sequence[int] = (),
        entropy: bool = False,
        visual_scores: bool = False,
        all_logits: bool = False,
    ) -> ForwardOutput:
        """Run the prompt into an empty cache; optionally capture layer outputs and attention statistics.

        Logits are [1, 1, V] at the last prompt position (the head over that row alone, as generate() does),
        or [1, S, V] with all_logits. Statistics never change the outputs."""
        if cache.get_seq_length() != 0:
            raise ValueError("prefill needs an empty cache (TargetAdapter.new_cache())")
        self._check_layers(layers)
        recorder = StatsRecorder(self.num_layers, entropy, visual_scores) if entropy or visual_scores else None
        out, embeds, layer_outputs = self._recorded_forward(inputs.input_ids, inputs.model_kwargs, cache, layers,
                                                            recorder)
        if self._spec.mrope and self._base.rope_deltas is not None:
            cache.rope_delta = int(self._base.rope_deltas.flatten()[0])
        features = out.last_hidden_state
        logits = self.head(features if all_logits else features[:, -1:])
        stats = None
        if recorder is not None:
            stats = _row_stats(recorder.entropy_matrix(), recorder.received, 0, inputs.visual_mask[0])
        return ForwardOutput(logits, features, embeds, layer_outputs, stats)

    @torch.no_grad()
    def prefill_batch(self, batch: Sequence[TargetInputs], *, layers: Sequence[int] = (), entropy: bool = False,
                      visual_scores: bool = False) -> list[ForwardOutput]:
        """Several prompts of one `batch_signature` in one forward, right-padded, each into a fresh cache that
        is dropped (teacher-forced feature extraction): per prompt what prefill() returns, cut to its length.
        Causal attention keeps the padding out of every real row; a batched kernel may still round a row
        differently than the prompt alone (in bf16 as batched generate() does)."""
        self._check_layers(layers)
        input_ids, mask, model_kwargs = pad_batch(batch, self.pad_token_id, "right")
        lengths = mask.sum(1)
        recorder = None
        if entropy or visual_scores:
            recorder = StatsRecorder(self.num_layers, entropy, visual_scores, lengths=lengths)
        out, embeds, layer_outputs = self._recorded_forward(input_ids, model_kwargs, self.new_cache(), layers,
                                                            recorder)
        entropy = None if recorder is None else recorder.entropy_matrix()
        results = []
        for row, (inputs, n) in enumerate(zip(batch, lengths.tolist())):
            features = out.last_hidden_state[row: row + 1, :n]
            stats = None if recorder is None else _row_stats(entropy, recorder.received, row, inputs.visual_mask[0])
            results.append(ForwardOutput(self.head(features[:, -1:]), features, embeds[row: row + 1, :n],
                                         {k: v[row: row + 1, :n] for k, v in layer_outputs.items()}, stats))
        return results

    def _recorded_forward(self, input_ids: Tensor, model_kwargs: dict[str, Any], cache: TargetCache,
                          layers: Sequence[int], recorder: StatsRecorder | None
                          ) -> tuple[Any, Tensor, dict[int, Tensor]]:
        """The stock forward over whole prompts: its output, the merged input embeddings the language model
        received and the outputs of `layers`; `recorder` collects attention statistics on the way."""
        if self._spec.mrope:
            self._base.rope_deltas = None  # otherwise a text-only prompt would inherit the last image's delta
        device = self.model.device
        input_ids = input_ids.to(device)
        model_kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in model_kwargs.items()}
        captured: dict[str, Tensor] = {}
        layer_outputs: dict[int, Tensor] = {}
        with ExitStack() as stack:
            stack.callback(self._lm.register_forward_pre_hook(_capture_embeds(captured), with_kwargs=True).remove)
            self._capture_layers(stack, layers, layer_outputs)
            if recorder is not None:
                stack.enter_context(recording(recorder))
            out = self._base(input_ids=input_ids, past_key_values=cache, use_cache=True, **model_kwargs)
        # A text LM embeds its input_ids itself: then those embeddings are all it received.
        embeds = captured["inputs_embeds"] if "inputs_embeds" in captured else self.embed(input_ids)
        return out, embeds, dict(sorted(layer_outputs.items()))

    @torch.no_grad()
    def verify(self, tokens: Tensor, ancestors: Tensor, depths: Tensor, cache: TargetCache, *,
               layers: Sequence[int] = (), observe: AttentionObserver | None = None) -> ForwardOutput:
        """One forward over N tree nodes; node i sees the committed prefix and its own ancestors only.

        tokens [N] long; ancestors [N, N] bool (ancestors[i, j]: j is i or an ancestor of i, parents before
        children); depths [N] long. Node i has position cache_len + depths[i]; the cache grows by N (commit()
        then keeps the accepted path). A one-node tree is one plain decoding step. Attention runs in
        `verify_mode`; `observe` (diagnostics) sees every layer's attention inputs, changing nothing.
        `layers`: layer outputs to capture, as prefill's (hooks that only read: the outputs are unchanged).
        """
        self._check_layers(layers)
        prefix = cache.get_seq_length()
        last = prefix + int(depths.max())  # read before the transfer: no device sync on the caller's CPU tree
        if last >= self.max_context:
            raise ValueError(f"tree reaches position {last}, past the model's context of {self.max_context}")
        device = self.model.device
        depths = depths.to(device=device, dtype=torch.long)
        layout = TreeLayout(prefix, depths, ancestors.to(device=device, dtype=torch.bool))
        position_ids = layout.positions[None]  # [1, N]
        if self._spec.mrope:
            position_ids = (position_ids + cache.rope_delta)[None].expand(3, 1, -1)  # [3, 1, N]
        layer_outputs: dict[int, Tensor] = {}
        with ExitStack() as stack:
            stack.enter_context(tree_verify(layout, self.verify_mode, observe))
            stack.enter_context(self._invariance.large_calls(tokens.numel()))
            self._capture_layers(stack, layers, layer_outputs)
            ids = tokens.to(device)[None]
            out = self._lm(input_ids=ids, position_ids=position_ids, past_key_values=cache, use_cache=True)
            features = out.last_hidden_state
            logits = self.head(features)
        return ForwardOutput(logits, features, None, dict(sorted(layer_outputs.items())), None)

    def _check_layers(self, layers: Sequence[int]) -> None:
        bad = [layer for layer in layers if not 0 <= layer < self.num_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range 0..{self.num_layers - 1}")

    def _capture_layers(self, stack: ExitStack, layers: Sequence[int], store: dict[int, Tensor]) -> None:
        """Hooks (removed with `stack`) that keep the output of each of `layers` in `store`."""
        for layer in set(layers):
            stack.callback(self._layers[layer].register_forward_hook(_capture_output(store, layer)).remove)

    @torch.no_grad()
    def commit(self, cache: TargetCache, num_tree: int, keep: Tensor) -> None:
        """Keep the accepted entries `keep` ([k] indices into the last num_tree cache entries), in order."""
        keep_tree_entries(cache, num_tree, keep)

    def embed(self, token_ids: Tensor) -> Tensor:
        """[..., n] -> [..., n, H], with the target's own embedding scaling (Gemma3)."""
        return self.model.get_input_embeddings()(token_ids.to(self.model.device))

    def head(self, features: Tensor) -> Tensor:
        """[..., H] -> [..., V], with final-logit soft-capping where the stock class applies it."""
        return soft_cap(self.model.get_output_embeddings()(features), self._softcap)

    def fingerprint(self) -> dict:
        """Identity of the target a draft was trained against (dream.target.identity)."""
        return target_fingerprint(self)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    sources = [getattr(model.generation_config, "eos_token_id", None), model.config.get_text_config().eos_token_id]
    for source in [*sources, tokenizer.eos_token_id]:
        if source is not None:
            ids.update([source] if isinstance(source, int) else source)
    return ids


def _row_stats(entropy: Tensor | None, received: Tensor | None, row: int, visual_mask: Tensor) -> AttentionStats:
    """One prompt's statistics from a recorded (batched) prefill ([B, L, S] entropy, [B, S] attention each key
    received), cut to its length and visual positions."""
    entropy = None if entropy is None else entropy[row, :, : visual_mask.shape[0]]
    if received is not None:
        received = received[row, visual_mask.to(received.device).nonzero().flatten()]
    return AttentionStats(entropy=entropy, visual_scores=received)


def _capture_embeds(store: dict[str, Tensor]):
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("inputs_embeds") is not None:
            store["inputs_embeds"] = kwargs["inputs_embeds"]

    return hook


def _capture_output(store: dict[int, Tensor], layer: int):
    def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        store[layer] = output[0] if isinstance(output, tuple) else output

    return hook
