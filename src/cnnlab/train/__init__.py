"""Training: the loop, evaluation, checkpoints, exact resume, distributed (torchrun + DDP).

* :func:`train_one_epoch` / :func:`evaluate`: one pass, for any classifier ``nn.Module``;
* :func:`fit` with a :class:`TrainConfig`: a whole run as ``cnnlab train`` does it;
* :func:`load_weights`: our safetensors checkpoints into a model, with one clear error for a
  file that is missing, corrupt, foreign or does not fit.
"""

from cnnlab.train.checkpoint import load_state, load_weights, read_meta, save_weights
from cnnlab.train.inference import (
    evaluate_checkpoint,
    load_checkpoint_model,
    plot_confusion,
    predict,
)
from cnnlab.train.loop import Distillation, NonFiniteLossError, evaluate, train_one_epoch
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
    "load_checkpoint_model",
    "load_state",
    "load_weights",
    "plot_confusion",
    "predict",
    "read_meta",
    "save_weights",
    "train_one_epoch",
]
