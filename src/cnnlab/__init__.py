"""cnnlab: the classic convolutional networks, built from their papers.

Build (``create_model``), save and load any weights (``save`` / ``load``, :mod:`cnnlab.saved`),
measure (``cnnlab.analysis``), train and fine-tune (``cnnlab.train``), compress
(``cnnlab.compress``) and deploy (``cnnlab.deploy``) LeNet-5 to MobileNetV2.
"""

from cnnlab import models  # noqa: F401  (importing the zoo registers every model)
from cnnlab.factory import create_model
from cnnlab.registry import list_models, model_info
from cnnlab.saved import load, save

__all__ = ["create_model", "list_models", "load", "model_info", "save"]
__version__ = "0.1.0"
