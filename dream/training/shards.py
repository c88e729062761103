"""The datagen shard format: a directory of safetensors shards plus manifest.json.

Each shard holds the per-sample tensors of `SHARD_TENSORS` concatenated along axis 0, plus `tokens_offsets`
and `visual_offsets` ([N + 1] int64): sample i's rows are offsets[i]:offsets[i + 1] on its axis. Shard
metadata (strings): format, settings_key, ids (JSON list of written sample ids), first_entry, num_entries,
skipped (JSON list of {index, id, reason}), unfinished_answers. manifest.json (written last by dream.training.datagen)
lists the shards and records the target fingerprint and the settings. Written by `ShardWriter`, read by
`ShardDataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from dream.draft.config import aux_layers  # noqa: F401  (the layers aux_features holds; datagen reads it here)
from dream.jsonfile import read_tagged_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dream-shards"
FORMAT_VERSION = 2
# name -> (length axis: "tokens" [S] or "visual" [S_vis], trailing shape "", "H" or "3H"). Offsets index axis 0.
SHARD_TENSORS: dict[str, tuple[str, str]] = {
    "input_ids": ("tokens", ""),        # int64
    "loss_mask": ("tokens", ""),        # bool: position i predicts token i + 1, a response token
    "features": ("tokens", "H"),        # storage dtype: target final-layer features, post-norm
    "mid_layers": ("tokens", ""),       # int64: entropy-selected layer l* per token
    "mid_features": ("tokens", "H"),    # storage dtype: OUTPUT of layer l* at each token
    "aux_features": ("tokens", "3H"),   # storage dtype: [S, 3, H] residual entering each of aux_layers(L)
    "visual_positions": ("visual", ""),  # int64: positions of visual tokens in the sequence
    "visual_embeds": ("visual", "H"),   # storage dtype: merged input embeddings there
    "visual_scores": ("visual", ""),    # float32: last-layer attention each visual token receives
}


@dataclass(frozen=True)
class ShardSample:
    input_ids: Tensor         # [S] long
    loss_mask: Tensor         # [S] bool (see SHARD_TENSORS)
    features: Tensor          # [S, H]
    mid_layers: Tensor        # [S] long
    mid_features: Tensor      # [S, H]
    aux_features: Tensor      # [S, 3, H] (EAGLE-3's fused input)
    visual_positions: Tensor  # [S_vis] long
    visual_embeds: Tensor     # [S_vis, H]
    visual_scores: Tensor     # [S_vis] float32

    @property
    def visual_mask(self) -> Tensor:          # [S] bool
        mask = torch.zeros(self.input_ids.shape[0], dtype=torch.bool)
        mask[self.visual_positions] = True
        return mask


def read_manifest(directory: str | Path) -> dict[str, Any]:
    file = Path(directory) / MANIFEST
    manifest = read_tagged_json(file, MANIFEST_FORMAT, "manifest", missing_error=FileNotFoundError,
                                missing="not a datagen directory (or datagen unfinished)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


# Datagen settings that directories trained on together may differ in: the layout, and how the target's own
# answers were drawn (engine; temperature: greedy and sampled answers mixed are a choice of data, both the
# target's decodes, with the same features, layer window and answer length).
_MIXABLE_SETTINGS = ("shard_size", "max_samples", "engine", "temperature")


class ShardDataset:
    """Random access to the samples of one or more datagen directories, in order; tensors are read lazily
    from the shards. Several directories must come from the same target with the same sample settings
    (precision, answers, layer window, answer length): one dataset, made in parts."""

    def __init__(self, *directories: str | Path) -> None:
        if not directories:
            raise ValueError("no datagen directory given")
        self.directories = [Path(d) for d in directories]
        if len({d.resolve() for d in self.directories}) < len(self.directories):
            raise ValueError("a datagen directory is given twice: its samples would count double")
        manifests = [read_manifest(d) for d in self.directories]
        self.manifest = manifests[0]
        for directory, manifest in zip(self.directories[1:], manifests[1:]):
            _check_same_kind(self.manifest, manifest, self.directories[0], directory)
        self.settings = _joint_settings([m["settings"] for m in manifests])
        self._files: list[Any] = []
        self._index: list[tuple[int, int]] = []          # sample -> (shard, row)
        self._offsets: list[dict[str, Tensor]] = []
        for directory, manifest in zip(self.directories, manifests):
            for info in manifest["shards"]:
                handle = _open_shard(directory / info["file"])
                shard = len(self._files)
                self._files.append(handle)
                self._offsets.append({axis: handle.get_tensor(f"{axis}_offsets") for axis in ("tokens", "visual")})
                self._index.extend((shard, row) for row in range(info["num_samples"]))
        if not self._index:
            raise ValueError(f"{', '.join(map(str, self.directories))} hold(s) no samples")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> ShardSample:
        shard, row = self._index[i]
        handle, offsets = self._files[shard], self._offsets[shard]
        tensors = {}
        for name, (axis, _) in SHARD_TENSORS.items():
            start, stop = int(offsets[axis][row]), int(offsets[axis][row + 1])
            tensors[name] = handle.get_slice(name)[start:stop]
        return ShardSample(**tensors)

    def response_token_counts(self, vocab_size: int) -> Tensor:
        """[V] how often each target id is a supervised (response) token: for a reduced draft vocabulary."""
        counts = torch.zeros(vocab_size, dtype=torch.long)
        for handle in self._files:
            ids, mask = handle.get_tensor("input_ids"), handle.get_tensor("loss_mask")
            # Offsets are per sample, but a shift inside the concatenation only pairs a sample's last
            # position (never in the mask: nothing follows it) with the next sample's first token.
            counts += torch.bincount(ids[1:][mask[:-1]], minlength=vocab_size)
        return counts


def _check_same_kind(first: dict[str, Any], other: dict[str, Any], first_dir: Path, other_dir: Path) -> None:
    if other["target"] != first["target"]:
        raise ValueError(f"shards in {other_dir} and {first_dir} were made from different targets")
    settings = [{k: v for k, v in m["settings"].items() if k not in _MIXABLE_SETTINGS} for m in (first, other)]
    diffs = [k for k in sorted(set(settings[0]) | set(settings[1])) if settings[0].get(k) != settings[1].get(k)]
    if diffs:
        raise ValueError(f"shards in {other_dir} and {first_dir} were made with different settings: {', '.join(diffs)}")


def _joint_settings(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """The directories' common settings; a mixable one they differ in lists each directory's value, in order."""
    joint = dict(settings[0])
    for key in _MIXABLE_SETTINGS:
        values = [s.get(key) for s in settings]
        if any(v != values[0] for v in values):
            joint[key] = values
    return joint


def _open_shard(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt")
    except FileNotFoundError:
        raise FileNotFoundError(f"shard {file} listed in the manifest does not exist") from None
    except (SafetensorError, OSError) as err:
        raise ValueError(f"shard {file} cannot be read (truncated or corrupted): {err}") from None


class ShardWriter:
    """Collects one shard's samples in memory (a shard is a few hundred samples: tens of MB), then writes
    them with `safetensors.torch.save_file` into a temporary file that is renamed into place, so a shard
    either exists whole or not at all.

    The file holds every SHARD_TENSORS entry concatenated along axis 0, plus `tokens_offsets` and
    `visual_offsets` ([N + 1] int64): sample i's rows are offsets[i]:offsets[i + 1] on its axis.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.tmp.unlink(missing_ok=True)               # a leftover of an interrupted run of this shard
        self._parts: dict[str, list[Tensor]] = {name: [] for name in SHARD_TENSORS}
        self._offsets: dict[str, list[int]] = {"tokens": [0], "visual": [0]}

    def add(self, tensors: dict[str, Tensor]) -> None:
        lengths: dict[str, int] = {}
        for name, (axis, _) in SHARD_TENSORS.items():
            tensor = tensors[name].detach().cpu()
            assert lengths.setdefault(axis, tensor.shape[0]) == tensor.shape[0], f"{name}: ragged {axis} axis"
            self._parts[name].append(tensor)
        for axis, length in lengths.items():
            self._offsets[axis].append(self._offsets[axis][-1] + length)

    def finish(self, metadata: dict[str, str], empty_specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
        """Write the shard; `empty_specs` gives dtype and trailing shape of tensors when no sample was added."""
        tensors = {f"{axis}_offsets": torch.tensor(v, dtype=torch.int64) for axis, v in self._offsets.items()}
        for name, parts in self._parts.items():
            if parts:
                tensors[name] = torch.cat(parts).contiguous()
            else:
                dtype, trailing = empty_specs[name]
                tensors[name] = torch.zeros(0, *trailing, dtype=dtype)
        save_file(tensors, str(self.tmp), metadata=metadata)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Give up this shard: its temporary file goes; a finished shard file, if any, is untouched."""
        self._parts = {name: [] for name in SHARD_TENSORS}
        self.tmp.unlink(missing_ok=True)
