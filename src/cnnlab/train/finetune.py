"""Fine-tuning: which parameters train, and frozen batch norm that stays frozen.

Transfer learning as Yosinski et al. (2014, "How transferable are features in deep neural
networks?", section 4) measured it: copy the first n layers of a trained network and either
freeze them ("frozen") or train them on the new task ("fine-tuned"); the rest starts afresh.
:func:`freeze` does the freezing, in two ways:

* ``backbone=True``: everything but the classifier, ``model.get_classifier()`` (the layer(s)
  ``reset_classifier`` replaces): a linear probe on the trained features;
* ``until="conv3_x"``: every parameter up to and including the named module, in the order the
  model registers its modules (``model.named_children()``; a dotted path such as
  ``conv4_x.0`` reaches inside one).

A frozen batch-norm layer also keeps its running statistics: it runs in eval mode whatever
``model.train()`` says (a forward pre-hook), so the features the classifier learns on are the
ones the source network computed. The model's state dict keeps every key.
"""

from __future__ import annotations

from torch import nn

from cnnlab.errors import CnnlabError

__all__ = ["freeze", "frozen_modules"]


def _name(model: nn.Module) -> str:
    return getattr(model, "model_name", None) or type(model).__name__


def _classifier(model: nn.Module) -> nn.Module:
    """``model.get_classifier()`` if it has trainable parameters, else one clear error."""
    name = _name(model)
    get = getattr(model, "get_classifier", None)
    if not callable(get):
        raise CnnlabError(
            f"{name} has no get_classifier(), so its classifier cannot be told from its "
            "backbone; freeze up to a named layer instead (--freeze LAYER)"
        )
    head = get()
    if not any(True for _ in head.parameters()):
        raise CnnlabError(
            f"{name}'s classifier ({type(head).__name__}) has no trainable parameters, so "
            "--freeze-backbone would leave nothing to train; use --freeze LAYER instead"
        )
    return head


def _up_to(model: nn.Module, until: str) -> list[str]:
    """Names of the modules registered up to and including ``until`` and all it holds."""
    names = [name for name, _ in model.named_modules()][1:]  # pre-order, the root dropped
    if until not in names:
        valid = ", ".join(name for name, _ in model.named_children())
        raise CnnlabError(
            f"--freeze: {_name(model)} has no layer {until!r}; its top-level layers are {valid} "
            "(a dotted path such as NAME.0 reaches inside one)"
        )
    end = names.index(until)
    while end + 1 < len(names) and names[end + 1].startswith(until + "."):
        end += 1
    return names[: end + 1]


def frozen_modules(model: nn.Module, until: str | None = None, backbone: bool = False) -> list[str]:
    """The names of the modules :func:`freeze` would freeze (their own parameters and, for
    batch norm, their statistics); the model is left as it is.

    Raises ``CnnlabError`` for an unknown ``until``, for ``backbone`` on a model whose
    classifier cannot be told apart or has no parameters, for both options at once, and
    where nothing would be left to train.
    """
    if until is not None and backbone:
        raise CnnlabError("--freeze and --freeze-backbone are mutually exclusive")
    if until is None and not backbone:
        return []
    if backbone:
        head = {id(m) for m in _classifier(model).modules()}
        names = [n for n, m in model.named_modules() if n and id(m) not in head]
    else:
        names = _up_to(model, until)
    modules = dict(model.named_modules())
    frozen = {id(p) for n in names for p in modules[n].parameters(recurse=False)}
    if all(id(p) in frozen for p in model.parameters()):
        raise CnnlabError(f"freezing up to {until!r} leaves no parameter to train")
    return names


def _keep_eval(module: nn.Module, args: object) -> None:
    """Forward pre-hook: a frozen batch norm normalises with its stored statistics."""
    module.training = False


def freeze(model: nn.Module, until: str | None = None, backbone: bool = False) -> list[str]:
    """Freeze part of ``model`` for fine-tuning; return the names of the frozen parameters.

    ``backbone=True`` leaves only ``model.get_classifier()`` trainable; ``until`` freezes every
    module registered up to and including that one. Frozen parameters get
    ``requires_grad=False`` (build the optimizer afterwards: it takes only trainable ones);
    frozen batch-norm layers keep their running statistics (they always run in eval mode).
    Errors as :func:`frozen_modules`. With neither option nothing changes.
    """
    names = frozen_modules(model, until, backbone)
    modules = dict(model.named_modules())
    frozen: list[str] = []
    for name in names:
        module = modules[name]
        for pname, p in module.named_parameters(recurse=False):
            p.requires_grad_(False)
            frozen.append(f"{name}.{pname}")
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(_keep_eval)
    return frozen
