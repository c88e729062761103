"""Let PyPI's torchvision import beside the CPU torch, without its compiled operators.

The torchvision that pairs with torch 2.13.0 on PyPI (0.28.0) is a CUDA build: its `_C` extension links
libtorch_cuda and does not load beside the CPU torch. torchvision is written to import without `_C` (an op
that needs it raises torchvision's own "not compiled with C++ ops" error when called), except for one line:
`torchvision._meta_registrations` registers fake kernels for `torchvision::nms` and `torchvision::qnms`
unconditionally, and registering for an operator nobody defined fails ("operator torchvision::nms does not
exist"), so `import torchvision` fails, and with it transformers' image utilities and every vLLM process.

`install()` puts a finder on `sys.meta_path` that acts once, when torchvision is first imported: if `_C` does
not load, it defines those two operators' schemas (no kernel; `torchvision.ops.nms` checks for the compiled
ops first and raises its own error). What transformers and vLLM use from torchvision, `transforms.v2`'s
functional ops and the video processors' constructors, is Python over torch ops and needs no `_C`.

`write_pth()` (run by `make vllm`) writes `dream-torchvision.pth` into site-packages,
so the finder is in place in every interpreter of the environment: vLLM imports transformers' image
utilities, hence torchvision, in subprocesses (model inspection, engine cores) before any plugin runs.
Where `_C` loads (a CUDA torch with its own torchvision), nothing is defined.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path
from typing import Any

PTH_NAME = "dream-torchvision.pth"
# torchvision's unconditional fake registrations, with the schemas its C++ code declares.
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library: Any = None     # the torch.library.Library holding the schemas (they live as long as it does)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "torchvision":
            sys.meta_path.remove(self)
            define_missing_ops()
        return None      # the regular finders import it


def install() -> None:
    """Define the operators before torchvision's first import (idempotent)."""
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())


def define_missing_ops() -> bool:
    """Define `torchvision::nms` / `qnms` when torchvision's `_C` does not load; True if they were defined."""
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or _library is not None:
        return False
    import torch

    for extension in sorted(Path(spec.origin).parent.glob("_C*.so")):
        try:
            torch.ops.load_library(str(extension))
            return False
        except OSError:
            pass
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _library.define(schema)
    return True


def write_pth() -> Path:
    """Make every interpreter of this environment call install() at startup; returns the file written."""
    path = Path(sysconfig.get_path("purelib")) / PTH_NAME
    path.write_text("import dream.torchvision_ops; dream.torchvision_ops.install()\n")
    return path
