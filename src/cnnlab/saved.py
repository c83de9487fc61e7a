"""A saved model: weights + metadata, to and from every kind of file cnnlab takes.

``save(model, path, class_names=..., preprocess=...)`` writes a cnnlab ``.safetensors`` file;
``load(source, model=None, num_classes=None) -> (model, meta)`` reads any of these, told apart
by their content, not their extension:

* a **run folder** (``cnnlab train --out``): its ``best.safetensors``, else ``last.safetensors``;
* a **cnnlab .safetensors** file (``format = cnnlab.weights/1`` in its metadata);
* a **.cnz** file (Deep Compression, :mod:`cnnlab.codec`), decoded bit for bit;
* **foreign weights**: a torchvision or timm state dict, in a ``.pth``/``.pt`` file (read with
  ``torch.load(weights_only=True)``: pickled code is refused, never run) or a plain
  ``.safetensors`` file, converted by :mod:`cnnlab.interop`. ``torchvision:PATH`` or
  ``timm:PATH`` names the layout; without a prefix cnnlab's own key names are tried first,
  then torchvision's, then timm's. Foreign weights need the model's name.

``meta`` always holds ``model``, ``num_classes``, ``in_chans``, ``class_names``,
``preprocess`` (a :class:`cnnlab.data.Preprocess` as a dict) and ``model_kwargs`` (the model's
own keywords it was built with, e.g. ``{"shortcut": "A"}``), plus ``kind`` (which of the
above), ``path`` and whatever else the file stored (epoch, accuracy, compression recipe...).
What a file does not say is filled in and listed in ``meta["assumed"]``: class names ``0`` ..
``N-1`` (torchvision's ImageNet category names for its 1000-class weights) and the model's
native input size with ImageNet statistics (RGB) or Fashion-MNIST's (grey).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import pickle
import pickletools
import stat
import struct
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from cnnlab import codec, interop
from cnnlab.data import FASHION_MNIST_STATS, IMAGENET_STATS, Preprocess
from cnnlab.errors import CnnlabError
from cnnlab.io import atomic_write_bytes
from cnnlab.registry import accepted_keywords, build_model, build_on_meta, model_info

__all__ = [
    "FOREIGN_LAYOUTS",
    "FORMAT",
    "SCALARS",
    "is_aux_key",
    "load",
    "load_weights",
    "model_kwargs",
    "read_cnz",
    "read_meta",
    "read_weights",
    "refused_pickle",
    "resolve_weights",
    "save",
    "save_weights",
    "torch_load_weights_only",
]

FORMAT = "cnnlab.weights/1"
FOREIGN_LAYOUTS = ("torchvision", "timm")
MAX_META_BYTES = 1 << 20  # a checkpoint's JSON metadata; class names of even 100k classes fit
MAX_CLASSES = 100_000
MAX_IMG_SIZE = 4096  # pixels per side that a file may ask us to resize to
MAX_CLASS_NAME = 1024  # characters in one class name
IN_CHANS = (1, 3)  # grey or RGB: what the preprocessing can give a model
SCALARS = (bool, int, float, str, type(None))  # what a stored model keyword may hold


# --------------------------------------------------------------------------- cnnlab safetensors


def is_aux_key(key: str) -> bool:
    """Parameters of auxiliary heads (``aux1.*``, ``aux2.*``), used in training only."""
    return key.split(".", 1)[0].startswith("aux")


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    meta: Mapping[str, Any] | None = None,
    drop_aux: bool = False,
) -> None:
    """Write the model's tensors (and JSON ``meta``) to ``path`` atomically."""
    tensors = _state_dict(model)
    if drop_aux:
        tensors = {k: v for k, v in tensors.items() if not is_aux_key(k)}
    # Tied tensors (shared storage) are cloned: safetensors stores each tensor on its own.
    seen: set[int] = set()
    for k, v in tensors.items():
        if v.untyped_storage().data_ptr() in seen:
            tensors[k] = v.clone()
        seen.add(tensors[k].untyped_storage().data_ptr())
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in (meta or {}).items()}}
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    class_names: list[str] | None = None,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model`` as a cnnlab ``.safetensors`` file that every command takes.

    ``model`` is a registry model (``cnnlab.create_model``); ``class_names`` (one per output)
    and ``preprocess`` are checked and stored where given (:func:`load` assumes defaults for
    what is missing, and says so); ``meta`` adds entries (plain JSON data). Weights holding
    NaN or infinity are refused, as :func:`load` refuses them.
    """
    name = getattr(model, "model_name", None)
    if not isinstance(name, str):
        raise CnnlabError("save() takes a model built by cnnlab.create_model (it has model_name)")
    if not hasattr(model, "num_classes"):  # a features_only model: no classifier to describe
        raise CnnlabError(
            f"save() takes a whole {name}; save that, and rebuild the feature maps with "
            f"create_model({name!r}, pretrained=PATH, features_only=True)"
        )
    broken = next((k for k, v in model.state_dict().items() if not _finite(v)), None)
    if broken is not None:
        raise CnnlabError(f"{broken} holds NaN or infinite values (diverged?): not saved, as "
                          "no command would load the file")  # fmt: skip
    if isinstance(preprocess, Preprocess):
        preprocess = preprocess.as_dict()
    given = {"class_names": class_names, "preprocess": preprocess}
    given = {k: v for k, v in given.items() if v is not None}
    checked = _complete(given, name, model.num_classes, int(model.input_size[0]))
    stored = {k: checked[k] for k in ("model", "num_classes", "in_chans", *given)}
    kwargs = model_kwargs(name, getattr(model, "model_kwargs", None), "the model")
    if kwargs:
        stored["model_kwargs"] = kwargs
    save_weights(model, path, {**dict(meta or {}), **stored})


def resolve_weights(path: str | os.PathLike[str]) -> Path:
    """A weights file, or a run folder's ``best.safetensors`` (else ``last.safetensors``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
            if (p / name).exists():  # a FIFO or a folder: not silently skipped for last
                raise CnnlabError(f"{str(p / name)!r} is not a regular file")
        raise CnnlabError(f"no best.safetensors or last.safetensors in folder {str(p)!r}")
    if not p.exists():
        raise CnnlabError(f"checkpoint {str(p)!r} does not exist")
    if not p.is_file():
        raise CnnlabError(f"{str(p)!r} is not a regular file")
    return p


def _read_safetensors(p: Path, with_tensors: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, raw string metadata) of any safetensors file; ``CnnlabError`` if unreadable."""
    try:
        with safe_open(str(p), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in (f.keys() if with_tensors else [])}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CnnlabError(
            f"{str(p)!r} is not a readable safetensors file (corrupt, truncated or another "
            f"format): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    return tensors, raw_meta


def read_weights(
    path: str | os.PathLike[str], with_tensors: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a cnnlab weights file; any other file is a ``CnnlabError``.

    ``with_tensors=False`` reads the header only (the tensors come back empty)."""
    p = resolve_weights(path)
    tensors, raw_meta = _read_safetensors(p, with_tensors)
    if raw_meta.get("format") != FORMAT:
        raise CnnlabError(f"{str(p)!r} is a safetensors file but not a cnnlab checkpoint")
    if sum(len(v) for v in raw_meta.values()) > MAX_META_BYTES:
        raise CnnlabError(f"{str(p)!r}: checkpoint metadata larger than {MAX_META_BYTES} bytes")
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except (json.JSONDecodeError, RecursionError):
        raise CnnlabError(f"{str(p)!r}: corrupt checkpoint metadata") from None
    return tensors, meta


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a cnnlab weights file (model, class names, preprocessing, epoch...)."""
    return read_weights(path, with_tensors=False)[1]


def _fit_report(own: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], aux: bool):
    """'missing a, b; unexpected c; shape d (1, 2) vs (3, 4)', or '' where they fit."""
    missing = [k for k in own if k not in tensors and (aux or not is_aux_key(k))]
    unexpected = [k for k in tensors if k not in own and (aux or not is_aux_key(k))]
    wrong = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    # Integers or booleans for a float parameter would be cast without a word (and back).
    cast = [
        f"{k} {_dtype_name(tensors[k])} vs {_dtype_name(v)}"
        for k, v in own.items()
        if k in tensors and tensors[k].is_floating_point() != v.is_floating_point()
    ]
    labelled = (("missing", missing), ("unexpected", unexpected), ("shape", wrong), ("dtype", cast))
    return "; ".join(
        f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in labelled
        if keys
    )


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _copy_into(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, strict_aux: bool = False
) -> None:
    """Copy ``tensors`` into ``model``, or raise naming what does not fit (model untouched).

    Auxiliary-head tensors may be missing on either side unless ``strict_aux``."""
    target = getattr(model, "module", model)
    own = target.state_dict()
    problems = _fit_report(own, tensors, strict_aux)
    if problems:
        name = getattr(target, "model_name", type(target).__name__)
        raise CnnlabError(f"{source!r} does not fit {name}: {problems}")
    broken = next((k for k in own if k in tensors and not _finite(tensors[k])), None)
    if broken is not None:
        raise CnnlabError(f"{source!r}: {broken} holds NaN or infinite values (corrupt weights)")
    with torch.no_grad():
        for k, v in own.items():
            if k in tensors:
                v.copy_(tensors[k])


def _finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in ``t``: its min and max (NaN propagates) in one pass, no copy."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    low, high = torch.aminmax(t if t.element_size() > 1 else t.float())  # no float8 kernel
    return bool(torch.isfinite(low) and torch.isfinite(high))


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, strict_aux: bool = False
) -> None:
    """Load cnnlab safetensors weights (a file, or a run folder's best/last) into ``model``."""
    tensors, _ = read_weights(path)
    _copy_into(model, tensors, str(resolve_weights(path)), strict_aux)


# --------------------------------------------------------------------------- metadata


def _default_class_names(name: str, num_classes: int) -> list[str]:
    """torchvision's ImageNet names for a 1000-class torchvision architecture, else '0'..'N-1'."""
    tv_name = interop.TORCHVISION_NAMES.get(name)
    if num_classes == 1000 and tv_name is not None:
        import torchvision

        weights = list(torchvision.models.get_model_weights(tv_name))
        categories = weights[0].meta.get("categories") if weights else None
        if categories and len(categories) == num_classes:
            return list(categories)
    return [str(i) for i in range(num_classes)]


def _default_preprocess(name: str, in_chans: int, size: Any = None) -> dict[str, Any]:
    """The model's native size (or the ``img_size`` a .cnz header gives), standard statistics."""
    if type(size) is not int or not 0 < size <= MAX_IMG_SIZE:
        size = model_info(name)["input_size"][-1]
    mean, std = FASHION_MNIST_STATS if in_chans == 1 else IMAGENET_STATS
    return Preprocess(size, in_chans, mean, std).as_dict()


def _check_sizes(num_classes: Any, in_chans: Any, source: str) -> None:
    """num_classes in 1..MAX_CLASSES and in_chans 1 or 3, before anything is built."""
    if type(num_classes) is not int or not 0 < num_classes <= MAX_CLASSES:
        raise CnnlabError(f"{source}: {num_classes!r} classes is outside 1..{MAX_CLASSES}")
    if type(in_chans) is not int or in_chans not in IN_CHANS:
        raise CnnlabError(f"{source}: in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}")


def _class_names(names: Any, num_classes: int, source: str) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise CnnlabError(f"{source}: class names must be a list of strings")
    if len(names) != num_classes:
        raise CnnlabError(
            f"{source}: {len(names)} class names for a model of {num_classes} outputs"
        )
    if any(len(c) > MAX_CLASS_NAME for c in names):
        raise CnnlabError(f"{source}: a class name is longer than {MAX_CLASS_NAME} characters")
    return names


def _preprocess(pre: Any, in_chans: int, source: str) -> Preprocess:
    """Stored preprocessing checked: finite statistics, a positive std, a bounded size."""
    if not isinstance(pre, dict):
        raise CnnlabError(f"{source}: preprocessing metadata must be a JSON object")
    try:
        checked = Preprocess.from_dict(pre)
    except ValueError as exc:
        raise CnnlabError(f"{source}: bad preprocessing: {exc}") from None
    if checked.size > MAX_IMG_SIZE:
        raise CnnlabError(
            f"{source}: preprocessing size {checked.size} is above the limit {MAX_IMG_SIZE}"
        )
    if checked.in_chans != in_chans:
        raise CnnlabError(
            f"{source}: preprocessing gives {checked.in_chans} channels, the model takes {in_chans}"
        )
    return checked


def _complete(
    meta: dict[str, Any], name: str, num_classes: int, in_chans: int, source: str = "the model"
) -> dict[str, Any]:
    """``meta`` with model, num_classes, in_chans, class names and preprocessing checked or
    filled in (the filled-in ones listed under ``assumed``); ``source`` names the file."""
    _check_sizes(num_classes, in_chans, source)
    out = {**meta, "model": name, "num_classes": num_classes, "in_chans": in_chans}
    assumed = []
    names = meta.get("class_names")
    if names is None:
        names = _default_class_names(name, num_classes)
        assumed.append("class_names")
    names = _class_names(names, num_classes, source)
    pre = meta.get("preprocess")
    if pre is None:
        pre = _default_preprocess(name, in_chans, meta.get("img_size"))
        assumed.append("preprocess")
    pre = _preprocess(pre, in_chans, source)
    out.update(class_names=names, preprocess=pre.as_dict(), assumed=assumed)
    return out


# --------------------------------------------------------------------------- building models


def _short(value: Any, limit: int = 200) -> str:
    """``value`` for an error line: one line, at most ``limit`` characters (a file chose it)."""
    text = " ".join((str(value) if isinstance(value, BaseException) else repr(value)).split())
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def model_kwargs(name: str, stored: Any, source: str) -> dict[str, Any]:
    """``stored`` checked as keywords of model ``name`` (plain JSON scalars) for a file."""
    if stored is None:
        return {}
    if not isinstance(stored, dict) or not all(
        k in accepted_keywords(name) and isinstance(v, SCALARS) for k, v in stored.items()
    ):
        raise CnnlabError(
            f"{source}: model keywords must map {name}'s keywords "
            f"({', '.join(accepted_keywords(name)) or 'none'}) to plain values, "
            f"got {_short(stored)}"
        )
    return dict(stored)


def _build_checked(name: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                   source: str) -> nn.Module:  # fmt: skip
    """``create_model(name, **config)`` holding ``tensors``; the shapes are checked on the
    'meta' device first, so a file's claims allocate nothing they do not pay for."""
    _check_fit(name, config, tensors, source)
    model = build_model(name, **config)
    _copy_into(model, tensors, source)
    return model


def _probe(name: str, config: Mapping[str, Any], source: str) -> nn.Module:
    """``name`` built with ``config`` on the 'meta' device (no memory), its sizes bounded."""
    _check_sizes(config.get("num_classes"), config.get("in_chans"), repr(source))
    try:
        probe = build_on_meta(name, **config)
    except (ValueError, TypeError) as exc:
        raise CnnlabError(
            f"{source!r}: cannot build {name!r} with {_short(config)}: {_short(exc)}"
        ) from None
    n = sum(v.numel() for v in probe.state_dict().values())
    if n > codec.MAX_ELEMENTS:
        raise CnnlabError(f"{source!r}: {name} {_short(config)} would hold {n:,} values")
    return probe


def _check_fit(
    name: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise unless ``tensors`` (real or on 'meta') fit ``name`` built with ``config``."""
    problems = _fit_report(_probe(name, config, source).state_dict(), tensors, aux=False)
    if problems:
        raise CnnlabError(f"{source!r} does not fit {name} {_short(config)}: {problems}")


def _in_model_order(
    name: str,
    tensors: Mapping[str, torch.Tensor],
    source: str,
    kwargs: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """``tensors`` in the order of ``name``'s state dict where the keys are ours (a safetensors
    file keeps its keys sorted, not in model order); other keys follow as they came."""
    try:
        order = [k for k in build_on_meta(name, **(kwargs or {})).state_dict() if k in tensors]
    except (ValueError, TypeError) as exc:
        raise CnnlabError(
            f"{source!r}: cannot build {name!r} with {_short(kwargs or {})}: {_short(exc)}"
        ) from None
    return {k: tensors[k] for k in order + [k for k in tensors if k not in set(order)]}


def _infer_config(name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """num_classes and in_chans of a state dict of model ``name``, in model order: the first
    conv's input channels (or the first linear layer's C x H x W inputs) and the last linear
    layer's outputs. The caller checks them by building the model."""
    kept = [v for k, v in tensors.items() if not is_aux_key(k)]
    matrices = [v for v in kept if v.dim() == 2]
    convs = [v for v in kept if v.dim() == 4]
    channels, height, width = model_info(name)["input_size"]
    if convs:
        in_chans = int(convs[0].shape[1])
    else:
        first = int(matrices[0].shape[1]) if matrices else channels * height * width
        in_chans = first // (height * width) if first % (height * width) == 0 else channels
    num_classes = int(matrices[-1].shape[0]) if matrices else model_info(name)["num_classes"]
    return {"num_classes": num_classes, "in_chans": in_chans}


def _model_name(stored: Any, wanted: str | None, source: str) -> str:
    if wanted is not None and stored is not None and stored != wanted:
        raise CnnlabError(f"{source!r} holds {stored}, not {wanted}")
    name = stored if stored is not None else wanted
    if not isinstance(name, str):
        raise CnnlabError(f"{source!r} does not say which model it holds; name the model")
    try:
        model_info(name)  # an unknown name fails here, with suggestions
    except ValueError as exc:
        raise CnnlabError(f"{source!r}: {exc}") from None
    return name


# --------------------------------------------------------------------------- reading each kind


Read = tuple[str, dict[str, int], dict[str, torch.Tensor], dict[str, Any]]


def _read_cnnlab(p: Path, wanted: str | None) -> Read:
    tensors, meta = read_weights(p)
    name = _model_name(meta.get("model"), wanted, str(p))
    kwargs = model_kwargs(name, meta.get("model_kwargs"), repr(str(p)))
    tensors = _in_model_order(name, tensors, str(p), kwargs)
    config = _infer_config(name, tensors) | kwargs
    if isinstance(meta.get("class_names"), list):
        config["num_classes"] = len(meta["class_names"])
    config |= {k: meta[k] for k in ("num_classes", "in_chans") if type(meta.get(k)) is int}
    return name, config, tensors, {**meta, "kind": "cnnlab"}


def _cnz_config(header: dict[str, Any], wanted: str | None, source: str) -> tuple[str, dict]:
    """The model name and ``create_model`` arguments a .cnz header gives, checked."""
    name = _model_name(header.get("model"), wanted, source)
    config = header.get("config")
    if not isinstance(config, dict):
        raise CnnlabError(f"{source!r}: the model configuration is not a JSON object")
    sizes = {k: config.get(k) for k in ("num_classes", "in_chans")}
    _check_sizes(sizes["num_classes"], sizes["in_chans"], repr(source))
    rest = {k: v for k, v in config.items() if k not in sizes}
    return name, sizes | model_kwargs(name, rest or None, repr(source))


def _cnz_check(path: str, wanted: str | bool | None, found: dict[str, Any]) -> codec.cnz.Check:
    """The check :func:`cnnlab.codec.read` runs before decoding: the header's model and its
    configuration, built on 'meta', must hold exactly the declared tensors (aux heads aside).
    A header without a model passes when ``wanted`` is ``False`` (plain tensors)."""

    def check(header: dict[str, Any], declared: dict[str, tuple]) -> None:
        if wanted is False and header.get("model") is None:
            return
        name, config = _cnz_config(header, wanted or None, path)
        shapes = {k: torch.empty(s, dtype=d, device="meta") for k, (d, s) in declared.items()}
        _check_fit(name, config, shapes, path)
        found.update(name=name, config=config)

    return check


def read_cnz(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header, tensors) of a .cnz file; where the header names a model, its configuration
    and every declared tensor shape are checked against that model (on 'meta') before any
    tensor is decoded (``cnnlab decompress``). ``CnnlabError`` if anything is wrong."""
    return codec.read(path, _cnz_check(str(path), False, {}))


def _read_cnz(p: Path, wanted: str | None) -> Read:
    """A .cnz file's model: the header's model and every declared shape are checked on the
    'meta' device before any tensor is decoded (nothing is allocated for a lie)."""
    found: dict[str, Any] = {}
    header, tensors = codec.read(p, _cnz_check(str(p), wanted, found))
    extra = header.get("extra") if isinstance(header.get("extra"), dict) else {}
    return found["name"], found["config"], tensors, {**extra, "kind": "cnz"}


def _read_foreign(p: Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain safetensors file or a weights-only torch file."""
    if _is_safetensors(p):
        return _read_safetensors(p, with_tensors=True)[0]
    problem = _not_torch_file(p)
    if problem:
        raise CnnlabError(f"{str(p)!r} is not a readable weights file: {problem}")
    obj = torch_load_weights_only(p, "weights file")
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CnnlabError(f"{str(p)!r} does not hold a state dict (a mapping of names to tensors)")
    for k, v in obj.items():
        if not _is_plain(v):
            raise CnnlabError(
                f"{str(p)!r}: {_short(k, 80)} is not a plain tensor of real numbers "
                f"({_kind_of(v)}); save dense CPU weights"
            )
    return obj


def _is_plain(t: torch.Tensor) -> bool:
    """A dense, real-valued tensor with data (what a model's parameters and buffers hold):
    not sparse, quantized, nested, complex, nor on the 'meta' device (torch.load gives all)."""
    return t.layout == torch.strided and not (
        t.is_quantized or t.is_nested or t.is_complex() or t.is_meta
    )


def _kind_of(t: torch.Tensor) -> str:
    """'sparse_coo', 'quantized', 'nested', 'complex64' or 'meta': why ``t`` is not plain."""
    if t.layout != torch.strided:
        return str(t.layout).removeprefix("torch.")
    for what in ("quantized", "nested", "meta"):
        if getattr(t, f"is_{what}"):
            return what
    return str(t.dtype).removeprefix("torch.")


def refused_pickle(path: str | os.PathLike[str]) -> str:
    """The one line for a file whose pickle holds code (``torch.load(weights_only=True)``)."""
    return (
        f"{str(path)!r} is not a weights-only checkpoint (it holds pickled code); "
        "it was refused and not loaded"
    )


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, cut at a word (at most 160 characters)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:160].rsplit(" ", 1)[0] + " ..."


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unpickler_detail(exc: BaseException) -> str:
    """What torch's weights-only unpickler objected to, without its advice to turn it off."""
    lines = [line.strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_TORCH_ADVICE)]
    detail = lines[0].removeprefix("WeightsUnpickler error:").strip() if lines else ""
    return _first_line(ValueError(detail)) if detail else "corrupt pickle"


_IMPORTS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ"}


def _imports_something(p: Path) -> bool:
    """Whether the pickle in ``p`` (a torch zip's ``data.pkl``, or the pickles at the start
    of a legacy file) names a class or function to import: read as opcodes, never run."""
    try:
        with contextlib.ExitStack() as stack:
            if zipfile.is_zipfile(p):
                archive = stack.enter_context(zipfile.ZipFile(p))
                pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
                stream = stack.enter_context(archive.open(pkl[0])) if pkl else io.BytesIO()
            else:
                stream = stack.enter_context(open(p, "rb"))
            head = io.BytesIO(stream.read(16 << 20))  # the pickles come first
            for _ in range(4):  # a legacy torch file: magic, protocol, system info, object
                ops = itertools.islice(pickletools.genops(head), 1_000_000)
                if any(op.name in _IMPORTS for op, _, _ in ops):
                    return True
    except Exception:  # unreadable as pickle opcodes: corrupt, not code
        return False
    return False


def torch_load_weights_only(path: str | os.PathLike[str], what: str = "weights file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: pickled code is refused (never run)
    with :func:`refused_pickle`'s line, any other failure is one ``CnnlabError`` line."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower() or _imports_something(p):
            raise CnnlabError(refused_pickle(p)) from None
        raise CnnlabError(
            f"{str(p)!r} is not a readable {what}: {_unpickler_detail(exc)}"
        ) from None
    except Exception as exc:  # any failure to parse an untrusted file is a bad file
        raise CnnlabError(f"{str(p)!r} is not a readable {what}: {_torch_detail(exc)}") from None


def _torch_detail(exc: BaseException) -> str:
    """Why torch.load failed, in one line; torch's own words where they read well."""
    if "storage has wrong byte size" in str(exc):  # torch prints it with unfilled %ld
        return "a tensor's data is not the size its header declares (truncated or altered)"
    return _first_line(exc)


def _read_foreign_weights(p: Path, wanted: str | None, layout: str | None) -> Read:
    if wanted is None:
        raise CnnlabError(f"{str(p)!r} holds foreign weights: name the model they are for")
    model_info(wanted)
    tensors = _in_model_order(wanted, _read_foreign(p), str(p))
    ours = build_on_meta(wanted, **_infer_config(wanted, tensors)).state_dict()
    problems = _fit_report(ours, tensors, aux=False)
    if layout is None and not problems:
        converted, kind = tensors, "state-dict"  # our own key names, saved with torch.save
    else:
        kind = layout or _guess_layout(wanted, problems, str(p))
        converted = _convert(wanted, tensors, kind, str(p))
    meta = {"kind": kind, "source": str(p)}
    return wanted, _infer_config(wanted, converted), converted, meta


def _guess_layout(name: str, problems: str, source: str) -> str:
    for layout, names in (("torchvision", interop.TORCHVISION_NAMES), ("timm", interop.TIMM_NAMES)):
        if name in names:
            return layout
    raise CnnlabError(
        f"{source!r} does not fit {name} ({problems}) and {name} has no torchvision or timm "
        "counterpart to convert from"
    )


def _convert(name: str, tensors: dict, layout: str, source: str) -> dict[str, torch.Tensor]:
    """``tensors`` of torchvision's or timm's ``name`` under our key names (by position)."""
    convert = {"torchvision": interop.from_torchvision, "timm": interop.from_timm}[layout]
    tensors = _reference_order(layout, name, tensors)
    try:
        return convert(name, tensors, **_infer_config(name, tensors))
    except ValueError as exc:
        raise CnnlabError(f"{source!r} as {layout} weights for {name}: {exc}") from None


def _reference_order(layout: str, name: str, tensors: dict) -> dict:
    """``tensors`` in the order of the reference model's state dict (interop converts by
    position, and a safetensors file keeps its keys sorted, not in model order)."""
    try:
        with torch.device("meta"):
            if layout == "torchvision":
                import torchvision

                tv_name = interop.TORCHVISION_NAMES[name]
                ref = torchvision.models.get_model(tv_name, weights=None)
            else:
                import timm

                ref = timm.create_model(interop.TIMM_NAMES[name])
    except (ImportError, KeyError, TypeError, ValueError):
        return tensors  # no reference to order by: the file's own order
    order = [k for k in ref.state_dict() if k in tensors]
    return {k: tensors[k] for k in order + [k for k in tensors if k not in set(order)]}


def _head(p: Path, n: int) -> bytes:
    """The first ``n`` bytes of the file ``p`` (fewer where it is shorter)."""
    with open(p, "rb") as f:
        return f.read(n)


def _not_torch_file(p: Path) -> str:
    """Why ``p`` cannot be a torch.save file, from its first bytes ('' where it may be one):
    a zip (with its directory at the end) or, in torch's legacy format, a pickle."""
    head = _head(p, 4)
    if head == b"PK\x03\x04":
        return "" if zipfile.is_zipfile(p) else "a truncated or corrupt torch.save (zip) file"
    return "" if head[:1] == b"\x80" else "not a .cnz, a safetensors or a torch.save file"


def _is_safetensors(p: Path) -> bool:
    head = _head(p, 9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 0


def _kind(p: Path, layout: str | None = None) -> str:
    """'run', 'cnz', 'cnnlab' or 'foreign' ('foreign' where ``layout`` names one), once ``p``
    is known to be a folder or a non-empty regular file (a device is never read)."""
    if p.is_dir() and layout is None:
        return "run"
    if not p.exists():
        raise CnnlabError(f"checkpoint {str(p)!r} does not exist")
    info = p.stat()
    if not stat.S_ISREG(info.st_mode):
        raise CnnlabError(f"{str(p)!r} is not a regular file")
    if info.st_size == 0:
        raise CnnlabError(f"{str(p)!r} is empty (0 bytes): not a weights file")
    if layout is not None:
        return "foreign"
    if codec.is_cnz(p):
        return "cnz"
    if _is_safetensors(p):
        return "cnnlab" if _read_safetensors(p, False)[1].get("format") == FORMAT else "foreign"
    return "foreign"


def split_source(source: str | os.PathLike[str]) -> tuple[str | None, Path]:
    """``"torchvision:w.pth"`` -> ``("torchvision", Path("w.pth"))``; no prefix -> ``None``."""
    text = os.fspath(source)
    layout, sep, rest = text.partition(":")
    if sep and layout in FOREIGN_LAYOUTS and not Path(text).exists():
        text = rest
    else:
        layout = None
    if not text:  # Path("") is the current folder, which would be read as a run folder
        raise CnnlabError(f"no file name in checkpoint {os.fspath(source)!r}")
    return layout, Path(text)


def load(
    source: str | os.PathLike[str],
    model: str | nn.Module | None = None,
    num_classes: int | None = None,
    *,
    strict_aux: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """(the model in eval mode holding the weights of ``source``, its metadata).

    ``model`` is the expected model name (required for foreign weights; a file holding another
    model is an error), or a built model to load the weights into. ``num_classes`` replaces
    the classifier when it differs from the file's (for fine-tuning; the head is then new).
    Any problem is one ``CnnlabError`` line, and nothing half-loaded is returned.
    """
    layout, p = split_source(source)
    wanted = getattr(model, "model_name", None) if isinstance(model, nn.Module) else model
    kind = _kind(p, layout)
    if kind == "run":
        p, kind = resolve_weights(p), "cnnlab"
    if kind == "cnz":
        name, config, tensors, meta = _read_cnz(p, wanted)
    elif kind == "cnnlab":
        name, config, tensors, meta = _read_cnnlab(p, wanted)
    else:
        name, config, tensors, meta = _read_foreign_weights(p, wanted, layout)
    if isinstance(model, nn.Module):  # into the caller's model: checked key by key, no copy
        _copy_into(model, tensors, str(p), strict_aux)
        built = model
    else:
        built = _build_checked(name, config, tensors, str(p))
    meta = _complete(meta, name, config["num_classes"], config["in_chans"], repr(str(p)))
    meta["model_kwargs"] = {k: v for k, v in config.items() if k not in ("num_classes", "in_chans")}
    meta["path"] = str(p)
    if num_classes is not None and num_classes != meta["num_classes"]:
        _replace_head(built, meta, num_classes)
    return built.eval(), meta


def _replace_head(model: nn.Module, meta: dict[str, Any], num_classes: int) -> None:
    if type(num_classes) is not int or not 0 < num_classes <= MAX_CLASSES:
        raise CnnlabError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes!r}")
    model.reset_classifier(num_classes)
    meta.update(num_classes=num_classes, class_names=[str(i) for i in range(num_classes)])
    meta["assumed"] = sorted({*meta["assumed"], "class_names"})
