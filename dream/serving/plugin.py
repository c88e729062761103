"""The `vllm.general_plugins` entry point: vLLM calls `register()` in every process it starts.

It registers the draft architecture written by `dream export` and replaces vLLM's Idefics3 / SmolVLM
classes with subclasses that add the EAGLE interface (dream.serving.targets). Registration is lazy
("module:Class" strings): vLLM imports the classes only when a model of that architecture is built.
"""

from __future__ import annotations

from dream.serving.export import DRAFT_ARCHITECTURE


# Stock architecture name -> the subclass that replaces it (same weights and outputs, plus the EAGLE interface).
TARGET_OVERRIDES = {
    "Idefics3ForConditionalGeneration": "dream.serving.targets:DreamIdefics3ForConditionalGeneration",
    "SmolVLMForConditionalGeneration": "dream.serving.targets:DreamSmolVLMForConditionalGeneration",
}


def register() -> None:
    from vllm import ModelRegistry

    ModelRegistry.register_model(DRAFT_ARCHITECTURE, "dream.serving.draft_model:EagleDreamDraft")
    for architecture, class_path in TARGET_OVERRIDES.items():
        ModelRegistry.register_model(architecture, class_path)
