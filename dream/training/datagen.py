"""`dream datagen`: LLaVA conversations -> self-distilled draft-training shards (format: dream.training.shards).

Per conversation: the target regenerates every answer greedily, turn by turn, given the conversation so far
(--keep-answers keeps the dataset's answers), then runs ONCE teacher-forced over the whole conversation and
records what training needs (dream.training.shards.SHARD_TENSORS): final features, the entropy-selected layer l* per
token and that layer's output, the low / middle / high layer states an EAGLE-3 draft fuses, last-layer visual scores, and the merged input embeddings at visual
positions (text embeddings are recomputed from the ids at train time).

Decisions:
- Two engines regenerate the answers: `hf`, batched HF `generate` in this process
  (dream.training.hf_answers), and `vllm`, continuous batching in a vLLM engine that runs first over every
  pending shard and leaves its answers in OUT/answers/ (dream.serving.datagen). Either way answers are kept
  as token ids and spliced into the conversation in token space (dream.training.data.conversation_inputs),
  never decoded and re-encoded, and the features come from the same HF target, teacher-forced.
- The feature pass runs up to --feature-batch-size conversations of similar length in one right-padded
  forward (TargetAdapter.prefill_batch): causal attention keeps the padding out of every real row, and the
  visual scores count real queries only, so each entry is the one-at-a-time pass's up to batched rounding.
- A missing or unreadable image, a conversation longer than the context, or a chat template that cannot
  be split into turns SKIPS the sample (large crawled datasets always hold a few broken files); skipped
  ids and reasons go to the manifest and their count is printed. A file that is not LLaVA format is fatal,
  before anything is written.
- Shard k holds entries [k * shard_size, (k + 1) * shard_size) of the file, skipped ones included, so the
  assignment never depends on what was skipped and a rerun resumes by skipping finished shards. Every shard
  records a key of the settings, the data file's hash and the target fingerprint; an output directory
  holding shards with another key is refused.
- Each shard is collected in memory (dream.training.shards.ShardWriter) and appears by rename only when
  complete; the manifest is written last, atomically. Memory is bounded by one shard.
- Under torchrun rank r makes shards r, r + world, ...; rank 0 writes the manifest after a barrier.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from PIL import Image
from safetensors import safe_open
from tqdm import tqdm

from dream.training.data import (
    Conversation,
    ConversationInputs,
    conversation_inputs,
    load_images,
    load_llava_json,
)
from dream.training.distributed import init_distributed
from dream.draft.config import LayerWindow
from dream.training.entropy import gather_supervision, select_layers
from dream.training.hf_answers import regenerate
from dream.training.shards import FORMAT_VERSION, MANIFEST, MANIFEST_FORMAT, SHARD_TENSORS, ShardWriter, aux_layers
from dream.settings import DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_MAX_NEW_TOKENS, DTYPES, resolve_dtype_name
from dream.target import ForwardOutput, TargetAdapter, load_target
from dream.target.inputs import group_by_signature

ENGINES = ("hf", "vllm")
ANSWERS_DIR = "answers"       # the vllm engine's answer files, one per shard (kept: small, and they resume a run)
# Stage one of the vllm engine (dream.serving.datagen.write_vllm_answers): given the config, the loaded
# target, the settings key and the shards' conversations, it writes every pending shard's answers file.
AnswerStage = Callable[["DatagenConfig", TargetAdapter, str, list[list[Conversation]]], None]


@dataclass(frozen=True)
class DatagenConfig:
    target: str                           # checkpoint directory or zoo name
    data: str                             # LLaVA conversation JSON
    image_folder: str                     # image file names in the JSON are relative to it
    out: str                              # shard directory (created)
    keep_answers: bool = False            # train on the dataset's answers instead of the target's own
    max_samples: int | None = None        # only the first N entries of the file
    shard_size: int = 256                 # entries per shard (skipped ones count, so shards are stable)
    batch_size: int = 8                   # conversations generated together
    feature_batch_size: int = 8           # conversations per teacher-forced feature forward (<= batch_size used)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # per regenerated answer (an unfinished answer is kept, counted)
    layer_window: LayerWindow = field(default_factory=LayerWindow)   # candidates for l*
    dtype: str = DEFAULT_DTYPE            # the target's compute dtype (what inference runs)
    storage_dtype: str = "bf16"           # features and embeddings on disk
    device: str = DEFAULT_DEVICE          # auto | cpu | cuda (this rank's GPU under torchrun)
    engine: str = "hf"                    # what regenerates answers: hf (batched generate) | vllm
    temperature: float = 0.0              # 0: greedy answers; > 0: sampled (vllm engine)

    def __post_init__(self) -> None:
        for name in ("shard_size", "batch_size", "feature_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature > 0 and self.engine != "vllm":
            raise ValueError("sampled answers (temperature > 0) need the vllm engine")
        if self.keep_answers and self.engine != "hf":
            raise ValueError("keep_answers regenerates nothing: the engine must stay hf")
        object.__setattr__(self, "dtype", resolve_dtype_name(self.dtype))     # auto -> this machine's choice
        for name in ("dtype", "storage_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {list(DTYPES)}, got {getattr(self, name)!r}")

    def settings(self) -> dict[str, Any]:
        """What decides the shards' contents (batch size, paths and device do not)."""
        return {"keep_answers": self.keep_answers, "max_samples": self.max_samples, "shard_size": self.shard_size,
                "max_new_tokens": self.max_new_tokens, "layer_window": self.layer_window.to_dict(),
                "dtype": self.dtype, "storage_dtype": self.storage_dtype, "engine": self.engine,
                "temperature": self.temperature}


def parse_layer_window(text: str) -> LayerWindow:
    """"A:B" (either side may be empty) -> layers A..B-1; "L" -> the static layer L."""
    try:
        if ":" not in text:
            return LayerWindow(static_layer=int(text))
        start, stop = text.split(":")
        return LayerWindow(start=int(start or 0), stop=int(stop) if stop else None)
    except ValueError as err:
        raise ValueError(f"--layer-window {text!r}: expected A:B, A:, :B or a single layer ({err})") from None


def run_datagen(cfg: DatagenConfig, answer_stage: AnswerStage | None = None) -> dict[str, Any] | None:
    """Make (or finish) the shard directory; returns the manifest on rank 0, None on other ranks. The vllm
    engine needs `answer_stage` (the command passes it: serving sits above training)."""
    conversations = load_llava_json(cfg.data)[: cfg.max_samples]
    out = Path(cfg.out)
    check_output_dir(out, "--out")
    # Ranks that finish early wait for the slowest one at the final barrier.
    ctx = init_distributed(cfg.device, timeout=timedelta(days=7))
    try:
        target = load_target(cfg.target, DTYPES[cfg.dtype], ctx.device)
        cfg.layer_window.candidates(target.num_layers)              # a bad window fails before any output
        if target.image_token_id is None and any(c.images for c in conversations):
            raise ValueError(f"{cfg.target} is a text-only target but the data has images")
        data_sha = hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest()
        key = _settings_key(cfg.settings(), data_sha, target.fingerprint())
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        _check_existing(out, key)
        shards = [conversations[i: i + cfg.shard_size] for i in range(0, len(conversations), cfg.shard_size)]
        if cfg.engine == "vllm":
            if answer_stage is None or ctx.world_size > 1:
                raise ValueError("the vllm engine runs in one process (vLLM uses every core) through `dream datagen`")
            answer_stage(cfg, target, key, shards)
        todo = [k for k in pending_shards(out, len(shards)) if k % ctx.world_size == ctx.rank]
        with tqdm(total=sum(len(shards[k]) for k in todo), desc=f"datagen rank {ctx.rank}", unit="sample",
                  position=ctx.rank, disable=None) as progress:
            for k in todo:
                _make_shard(target, shards[k], out / shard_name(k), cfg, key, progress)
        ctx.barrier()
        if not ctx.is_main:
            return None
        manifest = _write_manifest(out, len(shards), cfg, data_sha, key, target.fingerprint())
        if manifest["num_samples"] == 0:
            first = manifest["skipped"][0]["reason"] if manifest["skipped"] else "the data file is empty"
            if created:
                shutil.rmtree(out)                   # nothing usable was made: leave no empty dataset behind
            raise ValueError(f"no usable sample in {cfg.data}: all {manifest['num_entries']} entries were skipped "
                             f"(first: {first})")
        return manifest
    except BaseException:
        if ctx.is_main and out.is_dir() and not any(out.iterdir()):
            out.rmdir()                              # a run that failed before its first shard leaves no folder
        raise
    finally:
        ctx.shutdown()


def check_output_dir(path: Path, flag: str) -> None:
    """ValueError before any work when an output directory's path is taken by a file."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a directory")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def answers_name(k: int) -> str:
    return f"shard-{k:05d}.json"


def pending_shards(out: Path, num_shards: int) -> list[int]:
    return [k for k in range(num_shards) if not (out / shard_name(k)).exists()]


def _settings_key(settings: dict, data_sha: str, fingerprint: dict) -> str:
    blob = json.dumps({"settings": settings, "data_sha256": data_sha, "target": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_existing(out: Path, key: str) -> None:
    for file in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            found = (handle.metadata() or {}).get("settings_key")
        if found != key:
            raise ValueError(f"{out} holds {file.name}, made with other settings, data or target: "
                             "use a new --out (or remove the old shards)")


def _make_shard(target: TargetAdapter, conversations: list[Conversation], path: Path, cfg: DatagenConfig,
                key: str, progress: tqdm) -> None:
    writer = ShardWriter(path)
    skipped: list[dict[str, Any]] = []
    written: list[str] = []
    unfinished = eos_appended = 0
    made = _read_answers(path, key) if cfg.engine == "vllm" else None
    if made is not None:
        # The answer stage skipped unreadable images and over-long prompts; the images are read again below.
        skipped = [s for s in made["skipped"] if s["reason"].startswith("turn ")]
        unfinished = int(made["unfinished"])
    try:
        for i in range(0, len(conversations), cfg.batch_size):
            batch = conversations[i: i + cfg.batch_size]
            loaded = load_conversations(batch, cfg.image_folder, skipped)
            if cfg.keep_answers:
                answers = {c.index: [turn.answer for turn in c.turns] for c, _ in loaded}
            elif made is not None:
                answers = {c.index: made["answers"][str(c.index)] for c, _ in loaded if str(c.index) in made["answers"]}
            else:
                answers, count = regenerate(target, loaded, cfg.max_new_tokens, skipped, skip_record)
                unfinished += count
            samples = []
            for conversation, images in loaded:
                if conversation.index not in answers:
                    continue
                try:
                    samples.append((conversation, conversation_inputs(target, conversation,
                                                                      answers[conversation.index], images)))
                except Exception as err:   # one broken entry of a crawled dataset must not end the run
                    skipped.append(skip_record(conversation, _reason(err)))
            for conversation, sample, tensors in _extract_all(target, samples, cfg, skipped):
                writer.add(tensors)
                written.append(conversation.id)
                eos_appended += sample.eos_appended
            progress.update(len(batch))
        metadata = {"format": MANIFEST_FORMAT, "settings_key": key, "ids": json.dumps(written),
                    "first_entry": str(conversations[0].index), "num_entries": str(len(conversations)),
                    "skipped": json.dumps(skipped), "unfinished_answers": str(unfinished),
                    "eos_appended": str(eos_appended)}
        writer.finish(metadata, _empty_specs(target, cfg))
    except BaseException:
        writer.abort()
        raise


def skip_record(conversation: Conversation, reason: str) -> dict[str, Any]:
    return {"index": conversation.index, "id": conversation.id, "reason": reason}


def load_conversations(conversations: list[Conversation], image_folder: str,
                       skipped: list[dict[str, Any]]) -> list[tuple[Conversation, list[Image.Image]]]:
    """The conversations whose images load, with them; the others are added to `skipped` with the reason."""
    loaded = []
    for conversation in conversations:
        images = load_images(conversation, image_folder)
        if isinstance(images, str):
            skipped.append(skip_record(conversation, images))
        else:
            loaded.append((conversation, images))
    return loaded


def _read_answers(shard: Path, key: str) -> dict[str, Any]:
    """The vllm engine's answers for one shard (written by its stage one under the same settings)."""
    file = shard.parent / ANSWERS_DIR / answers_name(int(shard.stem.split("-")[1]))
    if not file.exists():
        raise ValueError(f"{file} is missing: the vllm engine's answer stage did not run for this shard")
    made = json.loads(file.read_text())
    if made.get("settings_key") != key:
        raise ValueError(f"{file} was made with other settings, data or target: remove {file.parent}")
    return made


# ---- teacher-forced extraction ------------------------------------------------------------------------------
def _extract_all(target: TargetAdapter, samples: list[tuple[Conversation, ConversationInputs]], cfg: DatagenConfig,
                 skipped: list[dict[str, Any]]) -> list[tuple[Conversation, ConversationInputs, dict[str, Tensor]]]:
    """Every sample's shard tensors, in the order given, from right-padded forwards of up to
    cfg.feature_batch_size samples of similar length and one `batch_signature` (smolvlm-135m, bf16, 2 cores:
    64 conversations of ~115 tokens, 8 to a forward, took about 0.8 of their time one at a time). A failing
    forward is retried one sample at a time, so only a broken sample is skipped."""
    tensors: dict[int, dict[str, Tensor]] = {}

    def extract(chunk: list[int]) -> None:
        try:
            tensors.update(zip(chunk, _extract(target, [samples[i][1] for i in chunk], cfg)))
        except Exception as err:   # one broken entry of a crawled dataset must not end the run
            if len(chunk) == 1:
                skipped.append(skip_record(samples[chunk[0]][0], _reason(err)))
            else:
                for i in chunk:
                    extract([i])

    for members in group_by_signature(range(len(samples)), lambda i: samples[i][1].inputs):
        members.sort(key=lambda i: samples[i][1].inputs.input_ids.shape[1])
        for start in range(0, len(members), cfg.feature_batch_size):
            extract(members[start: start + cfg.feature_batch_size])
    return [(*samples[i], tensors[i]) for i in range(len(samples)) if i in tensors]


def _reason(err: Exception) -> str:
    return str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"


@torch.no_grad()
def _extract(target: TargetAdapter, samples: list[ConversationInputs], cfg: DatagenConfig
             ) -> list[dict[str, Tensor]]:
    window = cfg.layer_window
    static = window.static_layer is not None
    # Layer outputs are captured: the state entering layer i is the output of layer i - 1.
    aux = [layer - 1 for layer in aux_layers(target.num_layers)]
    outs = target.prefill_batch([sample.inputs for sample in samples],
                                layers=sorted({*window.candidates(target.num_layers), *aux}),
                                entropy=not static, visual_scores=True)
    return [_sample_tensors(sample, out, aux, cfg) for sample, out in zip(samples, outs)]


def _sample_tensors(sample: ConversationInputs, out: ForwardOutput, aux: list[int], cfg: DatagenConfig
                    ) -> dict[str, Tensor]:
    inputs, window = sample.inputs, cfg.layer_window
    seq_len = inputs.input_ids.shape[1]
    if window.static_layer is not None:
        layers = torch.full((seq_len,), window.static_layer, dtype=torch.long)
    else:
        layers = select_layers(out.stats.entropy.float().cpu(), window)
    storage = DTYPES[cfg.storage_dtype]
    visual = inputs.visual_mask[0].nonzero().flatten()
    return {
        "input_ids": inputs.input_ids[0].long(),
        "loss_mask": sample.loss_mask,
        "features": out.features[0].cpu().to(storage),
        "mid_layers": layers,
        "mid_features": gather_supervision({k: v.cpu() for k, v in out.layer_outputs.items()}, layers).to(storage),
        "aux_features": torch.stack([out.layer_outputs[layer][0].cpu() for layer in aux], dim=1).to(storage),
        "visual_positions": visual,
        "visual_embeds": out.input_embeds[0].cpu()[visual].to(storage),
        "visual_scores": out.stats.visual_scores.float().cpu(),
    }


def _empty_specs(target: TargetAdapter, cfg: DatagenConfig) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """dtype and trailing shape of every shard tensor, for a shard in which every sample was skipped."""
    storage, hidden = DTYPES[cfg.storage_dtype], (target.hidden_size,)
    specs = {"loss_mask": (torch.bool, ()), "visual_scores": (torch.float32, ())}
    shapes = {"": (), "H": hidden, "3H": (3, *hidden)}
    for name, (_, trailing) in SHARD_TENSORS.items():
        specs.setdefault(name, (storage, shapes[trailing]) if trailing else (torch.int64, ()))
    return specs


# ---- manifest ------------------------------------------------------------------------------------------------
def _write_manifest(out: Path, num_shards: int, cfg: DatagenConfig, data_sha: str, key: str,
                    fingerprint: dict) -> dict[str, Any]:
    shards, skipped, unfinished, eos_appended = [], [], 0, 0
    for k in range(num_shards):
        with safe_open(str(out / shard_name(k)), framework="pt") as handle:
            meta = handle.metadata()
            tokens, visual = handle.get_tensor("tokens_offsets"), handle.get_tensor("visual_offsets")
            response = int(handle.get_tensor("loss_mask").sum())
        shards.append({"file": shard_name(k), "first_entry": int(meta["first_entry"]),
                       "num_entries": int(meta["num_entries"]), "num_samples": tokens.shape[0] - 1,
                       "num_tokens": int(tokens[-1]), "num_visual": int(visual[-1]), "num_response_tokens": response})
        skipped.extend(json.loads(meta["skipped"]))
        unfinished += int(meta["unfinished_answers"])
        eos_appended += int(meta.get("eos_appended", 0))
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, "target": fingerprint,
        "target_path": cfg.target, "data": cfg.data, "data_sha256": data_sha, "image_folder": cfg.image_folder,
        "settings": cfg.settings(), "settings_key": key,
        "num_entries": sum(s["num_entries"] for s in shards), "num_samples": sum(s["num_samples"] for s in shards),
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "num_response_tokens": sum(s["num_response_tokens"] for s in shards),
        "num_skipped": len(skipped), "skipped": skipped, "unfinished_answers": unfinished,
        "eos_appended": eos_appended, "shards": shards, "tensors": {name: {"axis": axis, "trailing": trailing}
                                      for name, (axis, trailing) in SHARD_TENSORS.items()},
    }
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest
