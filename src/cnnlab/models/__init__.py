"""The model zoo: one module per architecture family; importing it registers every model."""

from cnnlab.models import (  # noqa: F401  (imported for their @register_model side effects)
    alexnet,
    bn_inception,
    efficientnet,
    googlenet,
    lenet,
    mobilenet,
    resnet,
    ssd,
    vgg,
    xception,
)
from cnnlab.models.base import ClassifierModel

__all__ = ["ClassifierModel"]
