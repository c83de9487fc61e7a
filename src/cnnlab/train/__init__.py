"""Training: the loop, evaluation, fine-tuning, checkpoints, exact resume, distributed.

* :func:`train_one_epoch` / :func:`evaluate`: one pass, for any classifier ``nn.Module``;
* :func:`fit` with a :class:`TrainConfig`: a whole run as ``cnnlab train`` does it, from
  scratch or fine-tuned from any saved weights (``init_from``, ``freeze_backbone``, ``freeze``);
* :func:`evaluate_checkpoint` / :func:`predict`: any file :func:`cnnlab.load` reads.
"""

from cnnlab.train.checkpoint import load_state, save_state
from cnnlab.train.inference import evaluate_checkpoint, model_and_loaders, predict
from cnnlab.train.loop import (
    Distillation,
    NonFiniteLossError,
    evaluate,
    split_outputs,
    train_one_epoch,
)
from cnnlab.train.trainer import LRSchedule, TrainConfig, build_optimizer, fit

__all__ = [
    "Distillation",
    "LRSchedule",
    "NonFiniteLossError",
    "TrainConfig",
    "build_optimizer",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "load_state",
    "model_and_loaders",
    "predict",
    "save_state",
    "split_outputs",
    "train_one_epoch",
]
