"""One training step, as the trainer and the pre-flight check both run it.

:class:`TrainStep` holds what a step needs besides the batch: the model, its optimizer
(Adam/AdamW with the model's own no-decay parameters), the loss and its negatives, and the
mixed-precision context. A step is ``batch`` (with negatives) -> :meth:`forward_backward`
(forward, zero_grad, backward, unscale, clip: returns the loss and the gradient norm) ->
:meth:`apply` (the optimizer step). The trainer puts its gradient-explosion guard between
the last two; the pre-flight check runs them back to back.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..assemble import Assembled
from ..config import RunConfig, TrainConfig
from ..data.batches import NegativeSampler, draw_negatives
from ..utils.compile import call_compiled, compile_model
from ..utils.device import autocast_for
from .losses import NEGATIVES, get_loss


def build_optimizer(model, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam (betas 0.9, 0.98) or AdamW.

    ``l2_emb`` is an L2 penalty on the item embedding (Adam's coupled weight decay on that
    tensor). With AdamW, ``weight_decay`` applies to the weight matrices only: not to the
    parameters the model declares exempt (:meth:`SequentialRecommender.no_weight_decay`:
    biases, norms, mHC's static biases and gates) nor to the embedding's L2 group.
    """
    emb = model.item_embedding_weight()
    exempt = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p is emb or not p.requires_grad:
            continue
        (no_decay if name in exempt else decay).append(p)
    wd = train.weight_decay if train.optimizer == "adamw" else 0.0
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0},
              {"params": [emb], "weight_decay": train.l2_emb}]
    opt = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return opt(groups, lr=train.lr, betas=(0.9, 0.98))


def lr_lambda(warmup_steps: int, steps_per_epoch: int, decay_step: int, decay_rate: float):
    """Linear warm-up over ``warmup_steps`` optimizer steps, then ``decay_rate`` every
    ``decay_step`` epochs (step decay, as in the seed)."""

    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        epoch = step // max(1, steps_per_epoch)
        return warm * decay_rate ** (epoch // max(1, decay_step))

    return f


class TrainStep:
    """Model, optimizer, loss, negatives and precision of a run, on ``device``."""

    def __init__(self, cfg: RunConfig, parts: Assembled, device: torch.device, log=print):
        self.cfg, self.parts, self.device, self.log = cfg, parts, device, log
        ds = parts.dataset
        self.model = parts.model.to(device)
        self._first_compiled_step = bool(cfg.train.compile)
        if cfg.train.compile:  # in place: the DDP wrapper, evaluation and checkpoints see the same module
            compile_model(self.model, log)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.loss_fn = get_loss(cfg.train.loss)
        self.neg_kind = NEGATIVES[cfg.train.loss]
        self.sampler = (NegativeSampler(ds.item, ds.offsets, parts.split.train_end, ds.n_items)
                        if self.neg_kind != "none" else None)
        self.autocast, use_scaler = autocast_for(device, cfg.train.amp)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        clip = cfg.train.grad_clip
        self.clip = clip if clip > 0 else float("inf")

    def batch(self, users: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The training batch of ``users`` with the negatives its loss needs (on the CPU)."""
        batch = self.parts.batcher.train_batch(users)
        negatives = draw_negatives(self.neg_kind, users, batch["targets"], rng, self.sampler,
                                   self.parts.dataset.n_items, self.cfg.train.num_negatives)
        if negatives is not None:
            batch["negatives"] = negatives
        return batch

    def forward_backward(self, batch: dict[str, torch.Tensor], forward=None, loss_scale: float = 1.0
                         ) -> tuple[torch.Tensor, float]:
        """Forward (through ``forward``, e.g. the DDP wrapper; default the model), loss
        (times ``loss_scale``), zero_grad, backward, unscale, clip; returns the detached loss
        and the gradient norm before clipping."""
        if self._first_compiled_step:  # the backward graph compiles at its first use: fall back there too
            self._first_compiled_step = False
            return call_compiled(self.model, lambda: self.forward_backward(batch, forward, loss_scale), self.log)
        forward = forward or self.model
        with self.autocast() if self.autocast else nullcontext():
            hidden = forward(batch)
            loss = self.loss_fn(self.model, hidden, batch["targets"], negatives=batch.get("negatives"))
            if loss_scale != 1.0:
                loss = loss * loss_scale
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip))
        return loss.detach(), gnorm

    def apply(self) -> None:
        """The optimizer step of the gradients :meth:`forward_backward` left."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
