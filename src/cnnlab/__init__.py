"""cnnlab: the classic convolutional networks, built from their papers.

Build (``create_model``), measure (``cnnlab.analysis``), train (``cnnlab.train``), compress
(``cnnlab.compress``) and deploy (``cnnlab.deploy``) LeNet-5 to MobileNetV2.
"""

from cnnlab.registry import create_model, list_models, model_info

__all__ = ["create_model", "list_models", "model_info"]
__version__ = "0.1.0"
