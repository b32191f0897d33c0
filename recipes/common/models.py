"""The example classifier shared by the recipes, the benchmarks and the tests.

:class:`MLPClassifier` is the small LightningModule every example trains: its steps call ``self(x)``
(so the callback times the forward, see :mod:`dq_plugins.recording.latency`) and return
``{"loss", "logits"}``, the contract of :class:`dq_plugins.lightning.DataQualityCallback`. Its head,
``self.head``, is the last ``nn.Linear`` of width ``num_classes``: the callback's default embedding is
that head's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class MLPClassifier(pl.LightningModule):
    """``in_dim -> [Linear, ReLU, (Dropout)] x len(hidden)`` (``self.backbone``) ``-> Linear`` (``self.head``).

    Batches are dicts with ``"inputs"`` (float, ``(B, in_dim)``) and ``"labels"`` (int64, ``(B,)``).

    Args:
        in_dim: input features.
        num_classes: output logits.
        hidden: widths of the hidden layers (``()``: a linear classifier).
        dropout: dropout after each hidden layer (0: none).
        lr: learning rate.
        optimizer: ``"adam"`` (with ``weight_decay``) or ``"sgd"``.
        weight_decay: Adam's weight decay.
        return_logits: ``False`` makes the steps return only the loss (the callback then needs
            ``logits_module=``).
        log_val_loss: log ``val_loss`` (progress bar) in each validation step.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.0,
        lr: float = 1e-3,
        optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        return_logits: bool = True,
        log_val_loss: bool = True,
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"Expected `optimizer` to be 'adam' or 'sgd' but got {optimizer!r}.")
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.lr, self.optimizer, self.weight_decay = lr, optimizer, weight_decay
        self.return_logits, self.log_val_loss = return_logits, log_val_loss

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` float -> ``(B, num_classes)`` logits."""
        return self.head(self.backbone(inputs))

    def _step(self, batch: dict[str, torch.Tensor]) -> Any:
        logits = self(batch["inputs"])
        loss = F.cross_entropy(logits, batch["labels"])
        return {"loss": loss, "logits": logits} if self.return_logits else loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        return self._step(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        out = self._step(batch)
        if self.log_val_loss:
            loss = out["loss"] if isinstance(out, dict) else out
            self.log("val_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
