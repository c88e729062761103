"""torchvision in the vLLM environment (dream.torchvision_ops): importable in every interpreter, images still
through transformers' PIL processors in the harness (skipped without torchvision, failed under CI=true)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from optional import require

require("torchvision")

from fixtures import build_tiny_target  # noqa: E402
from transformers import AutoProcessor  # noqa: E402
from transformers.image_processing_backends import PilBackend  # noqa: E402

from dream.target import TargetAdapter  # noqa: E402
from dream.torchvision_ops import define_missing_ops  # noqa: E402


def test_a_fresh_interpreter_imports_torchvision_and_transformers_image_utils():
    # No dream import first: vLLM's subprocesses (model inspection, engine cores) start this way.
    code = ("import torchvision, torchvision.transforms.v2.functional, transformers.image_utils; "
            "from transformers import Qwen2VLVideoProcessor; print(torchvision.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_ops_it_defines_have_no_kernel_and_torchvision_says_so():
    import torch
    import torchvision.ops

    assert not define_missing_ops()               # already done (or not needed) once torchvision imported
    if torchvision.extension._has_ops():
        pytest.skip("this torchvision's compiled ops load here: nothing was defined")
    with pytest.raises(RuntimeError, match="C\\+\\+ ops"):
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
def test_the_harness_keeps_pil_image_processors_beside_torchvision(tmp_path, family):
    path = build_tiny_target(family, tmp_path / family)
    # transformers alone would now pick its torchvision image processor ...
    assert not isinstance(AutoProcessor.from_pretrained(path).image_processor, PilBackend)
    # ... the harness does not (dream.target.families.IMAGE_BACKEND).
    processor = TargetAdapter.from_pretrained(path)._inputs.processor
    assert isinstance(getattr(processor, "image_processor", processor), PilBackend)
