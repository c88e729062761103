"""`dream train`: train a DREAM (or EAGLE-2 / EAGLE-3-style) draft on datagen shards.

Loss (dream.training.losses): w_feat * SmoothL1(final feature) + w_mid * SmoothL1(first-block output vs the output
of the entropy-selected target layer) + w_kl * KL(target || draft), on response tokens; the target
distribution is the target's head over the stored features. With --ttt-steps K > 1 the loss is averaged over K
training-time-test steps, steps 2 .. K feeding the draft its own earlier outputs (dream.training.ttt).
Visual tokens are pruned with the stored last-layer scores, exactly as at inference. AdamW (0.9, 0.95), transformers' linear warm-up then linear decay, gradient
clipping, optional bf16 autocast.

Multi-process (torchrun): DistributedDataParallel, gloo on CPU / nccl on GPU. The global batch is split
across ranks and each rank's loss is scaled so the averaged gradient is the token-mean over the GLOBAL batch;
with the deterministic schedule of dream.training.loop, N processes give the weights of one (within float
tolerance). Outputs in --out: `draft/` (save_draft; config.json records these settings and the target
fingerprint), `checkpoints/` (dream.training.checkpoint), `train_log.jsonl` (one line per step / evaluation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from dream.training.distributed import Distributed, init_distributed
from dream.target import load_target
from dream.target.identity import check_same_target
from dream.draft import DraftConfig, DraftModel, build_draft, frequent_vocab_map, save_draft, target_head
from dream.draft.config import LayerWindow
from dream.settings import DEFAULT_DTYPE, resolve_dtype_name
from dream.training.losses import LossWeights
from dream.training.shards import ShardDataset
from dream.training.datagen import check_output_dir
from dream.training.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from dream.training.loop import (
    BatchSchedule,
    LossModule,
    evaluate,
    local_slice,
    make_batch,
    noise_generator,
    split_indices,
)

LOG_FILE = "train_log.jsonl"
DRAFT_DIR = "draft"
_MAY_CHANGE_ON_RESUME = ("eval_every", "save_every")
GATE_SUFFIX = "_gate"         # CrossAttentionBlock's cross_attn_attn_gate / cross_attn_mlp_gate


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "dream"                   # "dream" | "eagle2" | "eagle3"
    steps: int = 1000
    batch_size: int = 4                   # global: split across processes
    lr: float = 3e-5
    warmup: int = 100                     # steps of linear warm-up from 0, then linear decay towards 0
    w_feat: float | None = None           # None: 0.2, but 0 for eagle3 (EAGLE-3 dropped feature regression)
    w_mid: float | None = None            # None: 0.2 for dream, 0 for the EAGLE baselines (no mid supervision)
    w_kl: float = 1.0
    keep_ratio: float | None = None       # visual tokens kept; None: the architecture's default (0.75 / 1.0)
    # Training-time test steps (1 = teacher forcing). None: 3 for eagle3 (EAGLE-3 trains with 7; each step adds a
    # forward over the batch whose attention spans all earlier steps, so 3 keeps CPU training affordable), else 1.
    ttt_steps: int | None = None
    noise: float = 0.2                    # uniform feature-noise width (0 = off)
    dtype: str = DEFAULT_DTYPE            # bf16: autocast, and the frozen target (embeddings, head) in bf16
    val_fraction: float = 0.02
    eval_every: int = 500                 # also evaluated before the first and after the last step
    save_every: int = 1000                # checkpoint period (0 = none)
    draft_vocab: int | None = None        # reduced draft vocabulary: the N most frequent response tokens
    blocks: tuple[str, ...] | None = None  # dream block layout; None: ("self", "cross", "self")
    seed: int = 0
    grad_clip: float = 0.5
    weight_decay: float = 0.0
    # The cross-attention gates are scalars that start closed (0): at the base rate Adam moves them by about
    # lr a step, so in a few thousand steps they stay near 0 and target features barely reach the draft.
    gate_lr_scale: float = 100.0

    def __post_init__(self) -> None:
        if self.w_feat is None:
            object.__setattr__(self, "w_feat", 0.0 if self.arch == "eagle3" else 0.2)
        if self.w_mid is None:
            object.__setattr__(self, "w_mid", 0.2 if self.arch == "dream" else 0.0)
        if self.ttt_steps is None:
            object.__setattr__(self, "ttt_steps", 3 if self.arch == "eagle3" else 1)
        for name in ("steps", "batch_size", "ttt_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        object.__setattr__(self, "dtype", resolve_dtype_name(self.dtype))     # auto -> this machine's choice
        if self.lr <= 0 or self.noise < 0 or self.grad_clip <= 0 or self.gate_lr_scale <= 0:
            raise ValueError("lr, gate_lr_scale and grad_clip must be > 0 and noise >= 0")
        self.weights()                                          # validates the loss weights

    def weights(self) -> LossWeights:
        return LossWeights(feature=self.w_feat, mid=self.w_mid, kl=self.w_kl)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["blocks"] = None if self.blocks is None else list(self.blocks)
        return out


@dataclass(frozen=True)
class TrainResult:
    draft_dir: Path
    evaluations: list[dict[str, Any]]     # {"step", "val_loss", "val_top1", ...}, first and last included


def train(cfg: TrainConfig, target_path: str, data_dir: str | Sequence[str], out_dir: str, *,
          resume: str | None = None, device: str = "auto",
          on_step: Callable[[int], None] | None = None) -> TrainResult | None:
    """Train on one datagen directory or several (one dataset, in order); returns the result on rank 0 (None
    elsewhere). resume: a checkpoint directory, or "latest". on_step(step) runs after each finished step (and
    its checkpoint)."""
    check_output_dir(Path(out_dir), "--out")
    ctx = init_distributed(device)
    try:
        data_dirs = [Path(data_dir)] if isinstance(data_dir, (str, Path)) else [Path(d) for d in data_dir]
        return _Run(cfg, target_path, data_dirs, Path(out_dir), ctx).train(resume, on_step)
    finally:
        ctx.shutdown()


def param_groups(draft: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: the cross-attention gates at lr * gate_lr_scale, everything else at lr."""
    gates = [p for name, p in draft.named_parameters() if name.endswith(GATE_SUFFIX)]
    rest = [p for name, p in draft.named_parameters() if not name.endswith(GATE_SUFFIX)]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if gates:
        groups.append({"params": gates, "lr": cfg.lr * cfg.gate_lr_scale})
    return groups


def gate_openings(draft: torch.nn.Module) -> dict[str, float]:
    """tanh of every cross-attention gate: how much of the target's features each block lets through."""
    return {name: round(float(p.detach().float().tanh()), 4) for name, p in draft.named_parameters()
            if name.endswith(GATE_SUFFIX)}


class _Run:
    def __init__(self, cfg: TrainConfig, target_path: str, data_dirs: list[Path], out: Path, ctx: Distributed) -> None:
        self.cfg, self.out, self.ctx, self.data_dirs = cfg, out, ctx, data_dirs
        self.dataset = ShardDataset(*data_dirs)
        self.target = load_target(target_path, cfg.dtype, ctx.device)
        self.fingerprint = self.target.fingerprint()
        check_same_target(self.dataset.manifest["target"], self.fingerprint, "shards", data_dirs[0])
        self.window = LayerWindow.from_dict(self.dataset.manifest["settings"]["layer_window"])
        if cfg.batch_size % ctx.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} (global) is not divisible by {ctx.world_size} processes")
        self.train_indices, self.val_indices = split_indices(len(self.dataset), cfg.val_fraction, cfg.seed)
        self.schedule = BatchSchedule(self.train_indices, cfg.batch_size, cfg.seed)
        self.draft = self._build_draft()
        self.keep_ratio = self.draft.config.keep_ratio
        module = LossModule(self.draft, cfg.weights(), cfg.ttt_steps)
        # With only the mid term, blocks after the first get no gradient: DDP must be told.
        unused = cfg.w_feat == 0 and cfg.w_kl == 0
        self.model = DistributedDataParallel(module, find_unused_parameters=unused) if ctx.active else module
        self.optimizer = torch.optim.AdamW(param_groups(self.draft, cfg), lr=cfg.lr, betas=(0.9, 0.95),
                                           weight_decay=cfg.weight_decay)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, cfg.warmup, cfg.steps)
        self.autocast = functools.partial(torch.autocast, ctx.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")

    def _build_draft(self) -> DraftModel:
        cfg = self.cfg
        overrides: dict[str, Any] = {}
        if cfg.keep_ratio is not None:
            overrides["keep_ratio"] = cfg.keep_ratio
        if cfg.draft_vocab is not None:
            overrides["draft_vocab_size"] = cfg.draft_vocab
        if cfg.blocks is not None:
            overrides["blocks"] = cfg.blocks
        draft_config = DraftConfig.from_target(self.target, cfg.arch, **overrides)
        torch.manual_seed(cfg.seed)
        draft = build_draft(draft_config)
        if cfg.draft_vocab is not None:
            counts = self.dataset.response_token_counts(draft_config.vocab_size)
            draft.set_vocab_map(frequent_vocab_map(counts, cfg.draft_vocab, required=self.target.eos_token_ids))
        draft.to(self.ctx.device)
        draft.bind_head(target_head(self.target))
        return draft

    # ---- the loop ----------------------------------------------------------------------------------------
    def train(self, resume: str | None, on_step: Callable[[int], None] | None) -> TrainResult | None:
        cfg, ctx = self.cfg, self.ctx
        start = self._resume(resume) if resume else self._fresh_start()
        evaluations: list[dict[str, Any]] = []
        if start == 0:
            evaluations.append(self._evaluate(0))
        progress = tqdm(total=cfg.steps, initial=start, desc="train", unit="step",
                        disable=None if ctx.is_main else True)
        for step in range(start + 1, cfg.steps + 1):
            record = self._step(step)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            self._log(record)
            if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
                evaluations.append(self._evaluate(step))
            if cfg.save_every and step % cfg.save_every == 0:
                self._save_checkpoint(step)
            if on_step is not None:
                on_step(step)
        progress.close()
        if not evaluations:                    # resumed from the final step's checkpoint
            evaluations.append(self._evaluate(cfg.steps))
        if not ctx.is_main:
            return None
        return TrainResult(self._save_draft(evaluations), evaluations)

    def _step(self, step: int) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        global_batch = self.schedule.global_batch(step)
        part = local_slice(cfg.batch_size, ctx)
        generators = [noise_generator(cfg.seed, step, slot) for slot in range(cfg.batch_size)][part]
        batch = make_batch(self.dataset, global_batch[part], self.target, self.draft, cfg.noise, generators,
                           ctx.device)
        with self.autocast():
            terms = self.model(batch)
        n_local = terms.num_tokens
        stats = torch.tensor([n_local, terms.total.item() * n_local, terms.feature.item() * n_local,
                              terms.mid.item() * n_local, terms.kl.item() * n_local],
                             dtype=torch.float64, device=ctx.device)
        n_global = ctx.all_reduce_sum(stats)[0].item()
        # DDP averages gradients over ranks: this scaling turns that average into the global token mean.
        loss = terms.total * (n_local * ctx.world_size / n_global)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.draft.parameters(), cfg.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        return {"step": step, "loss": stats[1].item() / n_global, "feature": stats[2].item() / n_global,
                "mid": stats[3].item() / n_global, "kl": stats[4].item() / n_global, "tokens": int(n_global),
                "lr": lr, "grad_norm": float(grad_norm)}

    def _evaluate(self, step: int) -> dict[str, Any]:
        if not self.val_indices:
            return {"step": step}
        per_rank = max(1, self.cfg.batch_size // self.ctx.world_size)
        metrics = evaluate(self.draft, self.dataset, self.val_indices, self.target, self.cfg.weights(),
                           self.cfg.ttt_steps, per_rank, self.ctx, self.autocast)
        record = {"step": step, **metrics}
        gates = gate_openings(self.draft)
        if gates:
            record["gates"] = gates
        self._log(record)
        return record

    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.out / LOG_FILE, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    # ---- state -------------------------------------------------------------------------------------------
    def _fresh_start(self) -> int:
        if list_checkpoints(self.out) or (self.out / DRAFT_DIR).exists():
            raise ValueError(f"{self.out} already holds a training run: pass --resume, or use a new --out")
        self.ctx.barrier()                     # every rank checked before rank 0 creates anything
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / LOG_FILE).unlink(missing_ok=True)
        return 0

    def _payload(self, step: int) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"step": step, "config": self.cfg.to_dict(), "target": self.fingerprint,
                "draft_config": self.draft.config.to_dict(), "model": self.draft.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng}

    def _save_checkpoint(self, step: int) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.out, step, self._payload(step))
        self.ctx.barrier()                     # no rank runs ahead of a checkpoint it might resume from

    def _resume(self, resume: str) -> int:
        if resume == "latest":
            found = list_checkpoints(self.out)
            if not found:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
            path = found[-1]
        else:
            path = Path(resume)
        state = load_checkpoint(path)
        saved = {k: v for k, v in state["config"].items() if k not in _MAY_CHANGE_ON_RESUME}
        now = {k: v for k, v in self.cfg.to_dict().items() if k not in _MAY_CHANGE_ON_RESUME}
        diffs = [f"{k}: checkpoint {saved.get(k)!r} != now {now[k]!r}" for k in sorted(now) if saved.get(k) != now[k]]
        if diffs:
            raise ValueError(f"--resume {path}: settings differ: " + "; ".join(diffs))
        check_same_target(state["target"], self.fingerprint, "checkpoint", path)
        self.draft.load_state_dict(state["model"])
        self.draft.bind_head(target_head(self.target))     # the loaded vocab_map selects the head rows
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # Nothing in the loop draws from the global RNG (every draw is seeded by step); restoring it anyway
        # keeps the resume exact if a module that does (dropout) is ever added.
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        step = int(state["step"])
        if self.ctx.is_main:
            _truncate_log(self.out / LOG_FILE, step)
        self.ctx.barrier()
        return step

    def _save_draft(self, evaluations: list[dict[str, Any]]) -> Path:
        training = {**self.cfg.to_dict(), "keep_ratio": self.keep_ratio, "data": ",".join(map(str, self.data_dirs)),
                    "data_settings": self.dataset.settings, "num_train": len(self.train_indices),
                    "num_val": len(self.val_indices), "world_size": self.ctx.world_size, "final": evaluations[-1]}
        final = self.out / DRAFT_DIR
        tmp = self.out / f".{DRAFT_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_draft(tmp, self.draft, self.fingerprint, layer_window=self.window, training=training)
        stale = self.out / f".{DRAFT_DIR}.old"
        if final.exists():                     # moved aside, not deleted, until the new one is in place
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(final, stale)
        os.rename(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
        return final


def _truncate_log(file: Path, step: int) -> None:
    """Drop log lines of steps after `step` (a killed run logged them; the resumed run repeats them), and a
    line the kill cut short."""
    if not file.exists():
        return
    kept = []
    for line in file.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    file.write_text("".join(line + "\n" for line in kept))
