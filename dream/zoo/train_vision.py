"""Train the vision side of the `smolvlm-135m` zoo target on easy-vqa train images (never test images).

Two stages, one resumable run (`--resume` continues from `<out>/last.pt`, stage and step included):

1. `vision`: the tower alone learns the image's colour and shape (cross-entropy on the pooled
   features), which 4x4 patches the shape covers, and its centroid and size. Minutes on 2 cores.
2. `lm`: tower (low LR) + connector + new-token embeddings + LoRA on every linear layer of the LM
   learn to answer. Each step packs, per image, its easy-vqa colour / shape questions, balanced yes/no
   questions (`data.yes_no_qa`; easy-vqa's own, ~80 % "absent", teach the prior, so they are off by
   default: `--own-yes-no true`), one multi-sentence
   description and one more grounded question into one sequence (see `dream.zoo.packing`), plus
   one text-only row of SmolLM2's own replies to text prompts (generated once, LoRA off, cached in
   `<out>/text_distill.json`) so the LM stays the instruct model it was. The LM runs in bf16, the LM
   head only at answer positions.

The held-out validation images are `val_images` train images (every k-th id), never trained on
(`dream.zoo.objectives` says what "exact" means). `--init-from ASSETS` starts stage 2 afresh from
shipped weights (tower, connector, LoRA, new-token rows) instead of from stage 1.

  dream zoo train-vision --out runs/vision                 # fresh run
  dream zoo train-vision --out runs/vision --resume        # continue
  dream zoo train-vision --out runs/ft --init-from dream/assets/smolvlm-135m --lm-steps 400
  dream zoo train-vision --export runs/vision/best.pt      # -> dream/assets/smolvlm-135m/
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dream.zoo import data as D
from dream.zoo import model as M
from dream.zoo.objectives import VisionHeads, distill_text, eval_lm, eval_text, eval_vision, log, vision_losses
from dream.zoo.packing import Packer, pack, packed_loss
from dream.zoo.spec import ZooSpec
from dream.zoo.train_data import Images, turns_for


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/vision"
    seed: int = 0
    val_images: int = 200        # train images held out for validation (evenly spaced ids)
    val_qa_images: int = 100     # of those, how many the periodic LM validation runs on
    # stage 1: the tower on colour / shape / coverage / position labels
    vision_steps: int = 500
    vision_batch: int = 64
    vision_lr: float = 1e-3
    # stage 2: tower + connector + new-token rows + LoRA on packed QA and descriptions
    lm_steps: int = 4000
    lm_batch: int = 4            # images per step
    max_qa_per_image: int = 6    # easy-vqa turns per image per step (they have ~9.6)
    yes_no_per_image: int = 8    # balanced yes/no turns per image per step (half about its own colour / shape)
    own_yes_no: bool = False     # also easy-vqa's own yes/no questions? (~80 % "absent": the model learns the prior)
    text_turns: int = 3          # text-only self-distillation turns per step (one extra row)
    text_max_new_tokens: int = 160   # longer SmolLM2 replies are dropped from the distillation set
    lora_lr: float = 4e-4
    connector_lr: float = 1e-3
    tower_lr: float = 1e-4
    warmup: int = 100            # stage-2 warm-up steps (stage 1 warms up over 50, decays to 5 %)
    min_lr_ratio: float = 0.1    # stage 2 decays (cosine) to this fraction of each LR at lm_steps
    eval_every: int = 200
    ckpt_minutes: float = 5.0
    log_every: int = 10
    threads: int = 2             # intra-op threads; 0 = auto: 2 while the machine is otherwise idle, else 1

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(**d)


def set_threads(requested: int) -> int:
    """torch.set_num_threads(requested), or with 0 pick 1-2 from the load other processes put on 2 cores.

    Two OpenMP threads on a 2-core machine shared with other jobs stall on each other (steps ran 2-5x
    slower than with one thread); alone, two are ~1.8x faster than one.
    """
    if requested > 0:
        threads = requested
    else:
        others = os.getloadavg()[0] - torch.get_num_threads()
        threads = 2 if others < 0.5 else 1
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------- runner
class Trainer:
    def __init__(self, cfg: TrainConfig, spec: ZooSpec):
        self.cfg, self.spec = cfg, spec
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        lm_state, text_config, tokenizer = M.load_smollm2(spec)
        tokenizer = M.make_tokenizer(tokenizer)
        self.processor = M.make_processor(spec, tokenizer)
        self.packer = Packer(self.processor)
        model = M.assemble(spec, lm_state, text_config, tokenizer)
        del lm_state
        text = model.model.text_model
        text.to(torch.bfloat16)                       # frozen base in bf16 (lm_head is tied to it)
        text.requires_grad_(False)
        if spec.lora_rank:
            M.add_lora(text, spec)                    # LoRA factors fp32, trainable
        self.model = model
        first = self.packer.new_token_ids
        self.new_rows = nn.Parameter(text.embed_tokens.weight[first].float().clone())   # [4, H]
        self.heads = VisionHeads(spec.vision_hidden)
        self.images = Images(cfg.val_images)
        self.text_train, self.text_val = self._text_pairs(tokenizer)     # before any LoRA weights load
        self.stage, self.step, self.best = "vision", 0, -1.0
        self.history: list[dict] = []
        self.optimizer = self._optimizer()
        n_vis = sum(p.numel() for p in model.model.vision_model.parameters())
        n_con = sum(p.numel() for p in model.model.connector.parameters())
        n_lora = sum(p.numel() for n, p in text.named_parameters() if "lora_" in n)
        log(f"params: tower {n_vis:,} connector {n_con:,} lora {n_lora:,} new rows {self.new_rows.numel():,}; "
            f"{spec.image_seq_len} visual tokens; train images {len(self.images.train_rows)}, "
            f"val {len(self.images.val_rows)}")

    def _text_pairs(self, tokenizer):
        """(train, val) (prompt, reply) pairs; every 10th prompt is validation."""
        path = self.out / "text_distill.json"
        prompts = D.text_prompts()
        if path.exists():
            cached = json.loads(path.read_text())
            if cached["prompts"] != prompts or cached["max_new_tokens"] != self.cfg.text_max_new_tokens:
                raise ValueError(f"{path} was made for other prompts / lengths: delete it to regenerate")
            replies = cached["replies"]
        else:
            log(f"generating SmolLM2's replies to {len(prompts)} text prompts (once; cached in {path})")
            self.model.eval()
            replies = distill_text(self.model, tokenizer, prompts, self.cfg.text_max_new_tokens)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"prompts": prompts, "max_new_tokens": self.cfg.text_max_new_tokens,
                                       "replies": replies}, indent=1))
            os.replace(tmp, path)
        train = [(p, r) for k, (p, r) in enumerate(zip(prompts, replies)) if r is not None and k % 10]
        val = [(p, r) for k, (p, r) in enumerate(zip(prompts, replies)) if r is not None and not k % 10]
        log(f"text distillation pairs: {len(train)} train, {len(val)} val "
            f"({sum(r is None for r in replies)} unfinished dropped)")
        return train, val

    # -- parameters and state ----------------------------------------------------------------
    def trainable(self) -> dict[str, torch.Tensor]:
        """Shipped names -> tensors (+ stage-1 heads)."""
        state = {f"model.vision_model.{k}": v for k, v in self.model.model.vision_model.state_dict().items()}
        state.update({f"model.connector.{k}": v for k, v in self.model.model.connector.state_dict().items()})
        state.update(M.lora_state(self.model.model.text_model))
        state[M.NEW_EMBED_KEY] = self.new_rows.detach()
        state.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})
        return state

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        model = self.model
        model.model.vision_model.load_state_dict(
            {k.removeprefix("model.vision_model."): v for k, v in state.items() if k.startswith("model.vision_model.")})
        model.model.connector.load_state_dict(
            {k.removeprefix("model.connector."): v for k, v in state.items() if k.startswith("model.connector.")})
        params = dict(model.named_parameters())
        for k, v in state.items():
            if "lora_" in k:
                params[k].data.copy_(v)
        self.new_rows.data.copy_(state[M.NEW_EMBED_KEY])
        self.heads.load_state_dict({k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")})

    def _optimizer(self):
        cfg = self.cfg
        if self.stage == "vision":
            groups = [{"params": list(self.model.model.vision_model.parameters()) + list(self.heads.parameters()),
                       "lr": cfg.vision_lr, "base_lr": cfg.vision_lr}]
        else:
            lora = [p for n, p in self.model.model.text_model.named_parameters() if "lora_" in n]
            groups = [
                {"params": list(self.model.model.vision_model.parameters()), "lr": cfg.tower_lr,
                 "base_lr": cfg.tower_lr},
                {"params": list(self.model.model.connector.parameters()) + [self.new_rows], "lr": cfg.connector_lr,
                 "base_lr": cfg.connector_lr},
                {"params": lora, "lr": cfg.lora_lr, "base_lr": cfg.lora_lr},
            ]
        return torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.98))

    def save(self, name: str) -> Path:
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        torch.save({"config": dataclasses.asdict(self.cfg), "spec": self.spec.to_dict(), "stage": self.stage,
                    "step": self.step, "best": self.best, "history": self.history,
                    "trainable": self.trainable(), "optimizer": self.optimizer.state_dict()}, tmp)
        os.replace(tmp, path)
        return path

    def resume(self, path: Path) -> None:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if ckpt["spec"] != self.spec.to_dict():
            raise ValueError(f"{path} was trained with a different spec: {ckpt['spec']}")
        changed = {k: (v, getattr(self.cfg, k)) for k, v in ckpt["config"].items()
                   if k not in ("threads", "out") and getattr(self.cfg, k, None) != v}
        if changed:
            log(f"warning: resuming with a changed config (checkpoint value, now): {changed}")
        self.load_trainable(ckpt["trainable"])
        self.stage, self.step, self.best, self.history = ckpt["stage"], ckpt["step"], ckpt["best"], ckpt["history"]
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        log(f"resumed {path}: stage {self.stage} step {self.step} best {self.best:.4f}")

    def init_from(self, assets: Path) -> None:
        """Start stage 2 at step 0 from shipped weights (their spec must be this run's)."""
        spec, vision, delta = M.load_shipped(assets)
        if spec.to_dict() != self.spec.to_dict():
            raise ValueError(f"{assets} was exported with a different spec")
        state = {k: v.float() for k, v in {**vision, **delta}.items()}
        state.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})   # stage-1 only, not shipped
        self.load_trainable(state)
        self.stage, self.step = "lm", 0
        self.optimizer = self._optimizer()
        log(f"stage 2 starts from {assets}")

    # -- stages ------------------------------------------------------------------------------
    def run(self) -> None:
        set_threads(self.cfg.threads)
        if self.stage == "vision":
            self.run_vision()
            self.stage, self.step = "lm", 0
            self.optimizer = self._optimizer()
            self.save("vision_stage.pt")
            self.save("last.pt")
        self.run_lm()

    def run_vision(self) -> None:
        cfg, images = self.cfg, self.images
        tower = self.model.model.vision_model
        tower.train()
        train_rows = torch.tensor(images.train_rows)
        last_save, t0 = time.time(), time.time()
        while self.step < cfg.vision_steps:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
            rows = train_rows[torch.randint(len(train_rows), (cfg.vision_batch,), generator=g)]
            flips = torch.rand(cfg.vision_batch, generator=g) < 0.5
            factor = cosine(self.step, 50, cfg.vision_steps, 0.05)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            losses, acc = vision_losses(tower, self.heads, images, rows, flips, self.spec.patch_size)
            loss = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(tower.parameters(), 1.0)
            self.optimizer.step()
            self.step += 1
            if self.step % cfg.log_every == 0:
                parts = " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                log(f"vision step {self.step}/{cfg.vision_steps} loss {loss.item():.3f} ({parts}) "
                    f"acc colour {acc['color']:.2f} shape {acc['shape']:.2f} {(time.time() - t0) / cfg.log_every:.2f} s/step "
                    f"{torch.get_num_threads()} threads")
                t0 = time.time()
                set_threads(cfg.threads)
            if self.step % 100 == 0 or self.step == cfg.vision_steps:
                tower.eval()
                val = eval_vision(tower, self.heads, images, self.spec.patch_size)
                tower.train()
                self.history.append({"stage": "vision", "step": self.step, **val})
                log(f"vision val step {self.step}: colour {val['color']:.4f} shape {val['shape']:.4f}")
            if time.time() - last_save > cfg.ckpt_minutes * 60:
                self.save("last.pt")
                last_save = time.time()

    def lm_batch(self, step: int):
        """Images of this step: epoch-wise permutations of the train rows, fixed by (seed, epoch)."""
        cfg, rows = self.cfg, self.images.train_rows
        convs = []
        for b in range(cfg.lm_batch):
            k = step * cfg.lm_batch + b
            epoch, index = divmod(k, len(rows))
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(rows))
            row = rows[order[index]]
            rng = np.random.default_rng([cfg.seed, step, b])
            flip = bool(rng.random() < 0.5)
            pixels = self.images.pixel_values[row]
            convs.append((pixels.flip(-1) if flip else pixels, turns_for(self.images, row, flip, rng, cfg.max_qa_per_image, cfg.yes_no_per_image,
                                                           cfg.own_yes_no)))
        if cfg.text_turns:
            rng = np.random.default_rng([cfg.seed, step, cfg.lm_batch])
            picks = rng.choice(len(self.text_train), size=cfg.text_turns, replace=False)
            convs.append((None, [self.text_train[k] for k in picks]))
        return pack(self.packer, convs)

    def run_lm(self) -> None:
        cfg, model = self.cfg, self.model
        model.train()
        last_save = time.time()
        t0, tokens, window = time.time(), 0, []          # since the last log line (eval / save time excluded)
        while self.step < cfg.lm_steps:
            batch = self.lm_batch(self.step)
            factor = cosine(self.step, cfg.warmup, cfg.lm_steps, cfg.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, correct, _ = packed_loss(model, batch, self.packer.image_token_id,
                                                   self.packer.new_token_ids, self.new_rows)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
            self.step += 1
            tokens += int((batch.position_ids > 0).sum()) + batch.input_ids.shape[0]
            window.append((loss.item(), correct.float().mean().item()))
            if self.step % cfg.log_every == 0:
                dt = time.time() - t0
                l, a = np.mean(window, axis=0)
                log(f"lm step {self.step}/{cfg.lm_steps} loss {l:.4f} token acc {a:.3f} lr x{factor:.3f} "
                    f"{dt / len(window):.2f} s/step {tokens / dt:.0f} tok/s {torch.get_num_threads()} threads")
                t0, tokens, window = time.time(), 0, []
                set_threads(cfg.threads)
            if self.step % cfg.eval_every == 0 or self.step == cfg.lm_steps:
                model.eval()
                val = eval_lm(model, self.packer, self.images, self.new_rows, cfg.val_qa_images)
                val["text_token_acc"] = eval_text(model, self.packer, self.text_val, self.new_rows)
                model.train()
                self.history.append({"stage": "lm", "step": self.step, **val})
                log("lm val step {}: ".format(self.step) + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
                if val["exact"] > self.best:
                    self.best = val["exact"]
                    self.save("best.pt")
                    log(f"new best {self.best:.4f} -> {self.out / 'best.pt'}")
                self.save("last.pt")
                last_save = time.time()
                t0, tokens, window = time.time(), 0, []
            elif time.time() - last_save > cfg.ckpt_minutes * 60:
                self.save("last.pt")
                last_save = time.time()
                t0, tokens, window = time.time(), 0, []
        log("done")


def run_training(cfg: TrainConfig, *, resume: bool = False, init_from: Path | None = None) -> None:
    """Run (or, with resume, continue from <out>/last.pt) the two-stage training of `cfg`."""
    log("config " + json.dumps(dataclasses.asdict(cfg)))
    trainer = Trainer(cfg, ZooSpec())
    if resume:
        last = Path(cfg.out) / "last.pt"
        if not last.exists():
            raise FileNotFoundError(f"--resume: {last} does not exist")
        trainer.resume(last)
    elif init_from is not None:
        trainer.init_from(init_from)
    trainer.run()
