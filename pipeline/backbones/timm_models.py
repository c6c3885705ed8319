"""Any timm 1.x model as a backbone: ``timm/<model name>`` (e.g. ``timm/convnext_tiny.fb_in22k``).

The resolver registered for the ``timm/`` prefix builds a :class:`BackboneSpec`
on demand from the model's own metadata, read from an instance built with
``pretrained=False`` on the meta device (no weights, no download, no compute):

* CNNs and hierarchical transformers (ResNet, EfficientNet, MobileNetV3,
  ConvNeXt, RegNet, Swin, ...): the top-level children of the network, in
  order (``nn.Sequential`` containers opened where a feature module lies
  inside), are cut into one stage per ``feature_info`` entry; taps
  ``layer1``..``layer4`` are the stages ending at stride 4/8/16/32.  Stages of
  channels-last models (Swin) hand on ``(N, C, H, W)`` maps like every CNN.
* Vision transformers (ViT, DeiT, DINOv2 with registers, CLIP): an ``embed``
  stage (patches, class/register tokens, position embedding), then the blocks
  in four groups ending at four evenly spaced blocks (``layer1``..``layer4``,
  tokens pooled ``cls``, ``mean`` or ``cls+mean``; ``num_prefix_tokens`` are
  left out of the mean).
* ``head`` is timm's pre-logits vector: the rest of ``forward_features`` then
  ``forward_head(x, pre_logits=True)``; the classifier is never built
  (``num_classes=0``).
* The default pooling (``--pool auto``) is the model's own, from its
  ``global_pool`` (:func:`own_pooling`): ``cls`` for ``token``, ``mean`` for
  ``avg`` or a ViT without a class token, ``max`` for ``max``, else ``avg``.

Preprocessing comes from the model's pretrained config
(``timm.data.resolve_data_config``).  Weights: ``imagenet`` (alias
``pretrained``) is the tag's pretrained file from the Hugging Face hub through
``huggingface_hub`` (its cache, ``HF_HOME``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``), ``none`` random, ``PATH`` a local ``.safetensors`` or
state_dict (loaded without pickle); both go through timm's own checkpoint
filter, so a checkpoint with its classifier fits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import UsageError, WeightsError, opt, program
from ..files import sha256_file
from ..options import MAP_POOLINGS, TOKEN_POOLINGS
from .registry import BackboneSpec, Preprocessing, Tap, register_resolver
from .weights import load_local_state_dict

log = logging.getLogger(__name__)

PREFIX = "timm/"
#: Strides of the taps layer1..layer4 of a CNN.
TAP_STRIDES = (4, 8, 16, 32)
#: Top-level children that belong to ``forward_head`` (everything from the first one on).
HEAD_CHILDREN = ("global_pool", "head", "fc", "classifier", "head_drop", "fc_norm", "flatten",
                 "pre_logits", "head_dist", "attn_pool")
#: Files a timm hub repository holds its weights in, tried in this order (as timm does).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


# ------------------------------------------------------------------ cutting a model


def _nn():
    import torch.nn as nn

    return nn


def _feature_modules(model) -> list:
    info = model.feature_info
    if hasattr(info, "module_name"):
        return [(info.module_name(i), info.channels(i), info.reduction(i))
                for i in range(len(info))]
    return [(f["module"], f["num_chs"], f["reduction"]) for f in info]


def _ordered_children(model, wanted: set) -> list:
    """``[(path, module)]``: the model's children in order, opening an ``nn.Sequential``
    (recursively) wherever a wanted module path lies inside it."""
    nn = _nn()
    out = []

    def visit(prefix, module):
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if path not in wanted and isinstance(child, nn.Sequential) and \
                    any(w.startswith(path + ".") for w in wanted):
                visit(path + ".", child)
            else:
                out.append((path, child))

    visit("", model)
    return out


def is_token_model(model) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


_CLASSES: dict = {}


def _modules():
    """The stage classes, defined on first use so importing this module imports no torch."""
    if _CLASSES:
        return _CLASSES
    nn = _nn()

    class _Stage(nn.Module):
        """Modules run in order; channels-last models convert at the stage's edges so every
        stage hands on ``(N, C, H, W)``."""

        def __init__(self, modules, nhwc_in: bool = False, nhwc_out: bool = False):
            super().__init__()
            self.body = nn.Sequential(*modules)
            self.nhwc_in, self.nhwc_out = nhwc_in, nhwc_out

        def forward(self, x):
            if self.nhwc_in:
                x = x.permute(0, 2, 3, 1)
            x = self.body(x)
            if self.nhwc_out:
                x = x.permute(0, 3, 1, 2)
            return x

    class _HeadStage(nn.Module):
        """The rest of ``forward_features`` (``tail``), then ``forward_head(pre_logits=True)``.

        The head's modules are registered here (so they train, move and export
        with this stage); the model itself is held unregistered, only to call its
        ``forward_head``, which reads those same modules.
        """

        def __init__(self, model, tail, head_names, nhwc_in: bool = False):
            super().__init__()
            self.tail = nn.Sequential(*tail)
            self.head = nn.ModuleDict({n: getattr(model, n) for n in head_names})
            self.nhwc_in = nhwc_in
            object.__setattr__(self, "_model", model)

        def forward(self, x):
            if self.nhwc_in:
                x = x.permute(0, 2, 3, 1)
            return self._model.forward_head(self.tail(x), pre_logits=True)

    class _TokenEmbed(nn.Module):
        """A vision transformer's patch embedding, prefix tokens and position embedding."""

        def __init__(self, model):
            super().__init__()
            for name in ("patch_embed", "pos_drop", "patch_drop", "norm_pre"):
                self.add_module(name, getattr(model, name))
            for name, p in model.named_parameters(recurse=False):  # cls/reg/dist tokens, pos_embed
                self.register_parameter(name, p)
            object.__setattr__(self, "_model", model)

        def forward(self, x):
            m = self._model
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    _CLASSES.update(Stage=_Stage, HeadStage=_HeadStage, TokenEmbed=_TokenEmbed)
    return _CLASSES


def token_tap_blocks(depth: int) -> list:
    """Indices of the four evenly spaced blocks tapped as layer1..layer4 (the last is the
    last block); fewer when the model has fewer than four blocks."""
    return sorted({max(0, round(depth * (k + 1) / 4) - 1) for k in range(4)})


def timm_stages(model) -> list:
    """``[(stage name, module)]`` of a timm model, the last one ``head`` (pre-logits)."""
    if is_token_model(model):
        m = _modules()
        stages = [("embed", m["TokenEmbed"](model))]
        start = 0
        for i in token_tap_blocks(len(model.blocks)):
            stages.append((f"blocks.{i}", _nn().Sequential(*model.blocks[start:i + 1])))
            start = i + 1
        head = [n for n, _ in model.named_children() if n in HEAD_CHILDREN]
        stages.append(("head", m["HeadStage"](model, [model.norm], head)))
        return stages
    if getattr(model, "feature_info", None) is None:
        raise UsageError(f"timm model {type(model).__name__} declares no feature_info, so its "
                         f"depth taps are unknown; pick another model (`{program()} backbones "
                         "--search PATTERN` lists the supported ones with their taps)",
                         param="backbone")
    ends = [m for m, _c, _r in _feature_modules(model)]
    children = _ordered_children(model, set(ends))
    missing = [e for e in ends if e not in {p for p, _ in children}]
    if missing:
        raise UsageError(f"timm model {type(model).__name__}: feature module(s) {missing} are "
                         "not in a sequential path of the network, so it cannot be cut into "
                         "stages here; pick another model", param="backbone")
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    stage_cls = _modules()["Stage"]
    stages, current, head = [], [], []
    for path, module in children:
        if head or (path in HEAD_CHILDREN and "." not in path):
            head.append(path)
            continue
        current.append(module)
        if path in ends:
            stages.append((path, stage_cls(current, nhwc_in=nhwc and bool(stages), nhwc_out=nhwc)))
            current = []
    stages.append(("head", _modules()["HeadStage"](model, current, head, nhwc_in=nhwc)))
    return stages


# ------------------------------------------------------------------ metadata


def _create(model_name: str, kwargs: dict, meta: bool, **extra):
    import timm
    import torch

    try:
        if meta:
            with torch.device("meta"):
                return timm.create_model(model_name, pretrained=False, num_classes=0,
                                         **kwargs, **extra)
        return timm.create_model(model_name, num_classes=0, **{"pretrained": False, **extra},
                                 **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
            raise UsageError(
                f"backbone {PREFIX + model_name!r}: timm {timm.__version__} has no such model "
                f"({exc}); list the models with `{program()} backbones --search PATTERN`",
                param="backbone") from None
        raise


def timm_global_pool(model) -> str:
    """timm's ``global_pool`` of ``model`` as a name (``token``, ``avg``, ``max``, ``map``,
    ...; "" when it has none): a string on a ViT or Swin, the ``pool_type`` of a pooling
    module on a CNN, or that of its classifier head (ConvNeXt, RegNet)."""
    for owner in (model, getattr(model, "head", None)):
        pool = getattr(owner, "global_pool", None)
        name = pool if isinstance(pool, str) else getattr(pool, "pool_type", None)
        if name:
            return str(name)
    return ""


def own_pooling(model) -> tuple[str, str]:
    """``(pooling, why)``: the pooling of ours closest to the model's own ``global_pool``
    (what ``--pool auto`` means for it)."""
    timm_pool = timm_global_pool(model)
    said = f"timm global_pool={timm_pool!r}"
    if is_token_model(model):
        has_cls = getattr(model, "cls_token", None) is not None
        if timm_pool == "token" and has_cls:
            return "cls", f"{said}, its class token"
        if timm_pool == "avg" or not has_cls:
            return "mean", (f"{said}, the mean of its patch tokens" if timm_pool == "avg" else
                            f"{said} and no class token: the mean of its patch tokens")
        return "cls", f"{said}, not a token pooling: its class token"
    if timm_pool == "max":
        return "max", f"{said}, the maximum over the last feature map"
    if timm_pool in ("avg", "fast"):
        return "avg", f"{said}, the average of the last feature map"
    return "avg", f"{said}, not offered here: the usual average of the feature map"


def describe_model(model) -> dict:
    """Taps (and what the spec needs besides) from a (meta) timm model, no forward pass."""
    head_width = int(getattr(model, "head_hidden_size", None) or model.num_features)
    if is_token_model(model):
        width = int(model.embed_dim)
        patch = model.patch_embed.patch_size
        stride = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        taps = tuple(Tap(f"layer{k + 1}", f"blocks.{i}", width, stride, "tokens")
                     for k, i in enumerate(token_tap_blocks(len(model.blocks))))
        has_cls = getattr(model, "cls_token", None) is not None
        return {"taps": taps + (Tap("head", "head", head_width, stride, "vector"),),
                "poolings": TOKEN_POOLINGS if has_cls else ("mean",),
                "pooling": own_pooling(model),
                "num_prefix_tokens": int(model.num_prefix_tokens), "family": "vit"}
    timm_stages(model)  # refuses a model it cannot cut, before any weights are fetched
    features = _feature_modules(model)
    taps = []
    for k, stride in enumerate(TAP_STRIDES):
        at = [(m, c) for m, c, r in features if r == stride]
        if at:
            taps.append(Tap(f"layer{k + 1}", at[-1][0], int(at[-1][1]), stride, "map"))
    deepest = max(r for _m, _c, r in features)
    family = "hierarchical" if getattr(model, "output_fmt", "NCHW") == "NHWC" else "cnn"
    return {"taps": tuple(taps) + (Tap("head", "head", head_width, int(deepest), "vector"),),
            "poolings": MAP_POOLINGS, "pooling": own_pooling(model), "num_prefix_tokens": 0,
            "family": family}


def preprocessing_of(model, kwargs: dict) -> Preprocessing:
    """The model's pretrained config as a :class:`Preprocessing` (``img_size`` overrides)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    size = kwargs.get("img_size") or cfg["input_size"][-1]
    size = int(size[-1] if isinstance(size, (tuple, list)) else size)
    if cfg.get("crop_mode", "center") != "center":
        log.info("%s: crop_mode %r in its config; this workbench centre-crops",
                 type(model).__name__, cfg.get("crop_mode"))
    return Preprocessing(input_size=size, crop_pct=float(cfg["crop_pct"]),
                         interpolation=str(cfg["interpolation"]),
                         mean=tuple(float(v) for v in cfg["mean"]),
                         std=tuple(float(v) for v in cfg["std"]))


# ------------------------------------------------------------------ weights


_SHA_CACHE: dict = {}


def _sha(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def hub_source(pretrained_cfg) -> tuple:
    """``(repo_id, revision, [file names to try])`` of a pretrained config's hub weights."""
    repo = (pretrained_cfg or {}).get("hf_hub_id")
    if not repo:
        return None, None, []
    repo, _, revision = repo.partition("@")
    name = pretrained_cfg.get("hf_hub_filename")
    return repo, revision or None, [name] if name else list(HUB_FILES)


def download_hub_weights(model_name: str, pretrained_cfg) -> tuple[str, str]:
    """``(local file, repo/file)`` of ``model_name``'s pretrained weights, fetched by
    huggingface_hub into its cache.  A file already in the cache is used without asking
    the hub (so offline re-runs start at once; its SHA-256 names it in the store key)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    repo, revision, files = hub_source(pretrained_cfg)
    offline = (f"pass {opt('weights', 'PATH')} to a local .safetensors or state_dict of "
               f"{model_name} (or {opt('weights', 'none')} for random weights)")
    if not repo:
        raise WeightsError(f"timm model {model_name!r} has no pretrained weights on the "
                           f"Hugging Face hub; {offline}", param="weights")
    for filename in files:
        cached = try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(cached, str):
            return cached, f"{repo}/{filename}"
    missing = []
    for filename in files:
        try:
            path = hf_hub_download(repo, filename, revision=revision, library_name="timm")
            return path, f"{repo}/{filename}"
        except RemoteEntryNotFoundError:
            missing.append(filename)  # the repository has not this file: try the next one
        except (LocalEntryNotFoundError, Exception) as exc:  # offline, DNS, proxy, HTTP errors
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise WeightsError(
                f"could not download the pretrained weights of {model_name} from the Hugging "
                f"Face hub ({repo}/{filename}: {type(exc).__name__}: {first}); without network "
                f"access, {offline} (HF_HUB_OFFLINE=1 skips the hub's retries)",
                param="weights") from None
    raise WeightsError(f"the hub repository {repo} has none of {', '.join(missing)}; {offline}",
                       param="weights")


def read_state_dict(path: str) -> tuple[dict, str]:
    """``(state_dict, identity)`` of a ``.safetensors`` file or a torch state_dict (no pickle)."""
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(16)
    if p.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except Exception as exc:
            raise WeightsError(f"weights file {path!r} cannot be read as safetensors: {exc}",
                               param="weights") from None
        return state, f"file:sha256:{_sha(str(p))}"
    return load_local_state_dict(path)


def load_into(model, model_name: str, kwargs: dict, state: dict, source: str):
    """Load ``state`` into ``model`` through timm's own pretrained loading (its checkpoint
    filter, position-embedding resampling, classifier left out)."""
    try:
        ready = _create(model_name, kwargs, meta=False, pretrained=True,
                        pretrained_cfg_overlay={"state_dict": state})
        model.load_state_dict(ready.state_dict(), strict=True)
    except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
        raise WeightsError(f"weights from {source} do not fit timm model {model_name}: "
                           f"{str(exc).splitlines()[0]}", param="weights") from None


# ------------------------------------------------------------------ the spec


def timm_spec(model_name: str, name: str | None = None, description: str | None = None,
              **model_kwargs) -> BackboneSpec:
    """A :class:`BackboneSpec` for timm's ``model_name`` (with a pretrained tag or not),
    built with ``model_kwargs`` (e.g. ``img_size=64, depth=4`` for a small test model)."""
    meta = _create(model_name, model_kwargs, meta=True)
    info = describe_model(meta)
    preprocessing = preprocessing_of(meta, model_kwargs)
    pretrained_cfg = dict(meta.pretrained_cfg or {})
    tag = pretrained_cfg.get("tag")
    full_name = model_name if "." in model_name or not tag else f"{model_name}.{tag}"

    def build():
        return _create(model_name, model_kwargs, meta=False)

    def hub_file():
        return download_hub_weights(full_name, pretrained_cfg)

    def imagenet_identity():
        path, where = hub_file()
        return f"hf-hub:{where}:sha256:{_sha(path)}"

    def load(model, weights: str) -> str:
        if weights in ("imagenet", "pretrained"):
            path, where = hub_file()
            state, _ = read_state_dict(path)
            identity = f"hf-hub:{where}:sha256:{_sha(path)}"
            source = f"the hub ({where})"
        else:
            state, identity = read_state_dict(weights) if Path(weights).is_file() else \
                load_local_state_dict(weights)  # its message names the missing file
            source = weights
        load_into(model, model_name, model_kwargs, state, source)
        return identity

    cls = type(meta).__name__
    return BackboneSpec(
        name=name or PREFIX + model_name,
        description=description or (f"timm {full_name} ({cls}, {info['family']}); pretrained "
                                    f"weights from the Hugging Face hub "
                                    f"({pretrained_cfg.get('hf_hub_id') or 'none'})"),
        build=build,
        stages=timm_stages,
        taps=info["taps"],
        preprocessing=preprocessing,
        load_weights=load,
        imagenet_identity=imagenet_identity,
        weights_help="imagenet (= the tag's pretrained weights, from the hub) | none | PATH",
        requires=("timm",),
        poolings=info["poolings"],
        num_prefix_tokens=info["num_prefix_tokens"],
        family=info["family"],
        default_pooling=info["pooling"][0],
        default_pooling_why=info["pooling"][1],
    )


def resolve(model_name: str) -> BackboneSpec:
    """The resolver of ``timm/<model_name>`` names."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        raise WeightsError("timm/ backbones need the package timm; pip install timm",
                           param="backbone")
    return timm_spec(model_name)


def search(pattern: str, limit: int = 10) -> tuple[list, int]:
    """``([(name, taps or error)], n_matches)`` of timm models with pretrained tags whose
    name matches ``pattern`` (fnmatch; ``*`` is added around a bare word); taps are
    computed (meta device, nothing downloaded) for the first ``limit`` only."""
    import timm

    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    names = timm.list_models(pattern, pretrained=True)
    out = []
    for model_name in names[:limit]:
        try:
            out.append((model_name, describe_model(_create(model_name, {}, meta=True))))
        except Exception as exc:  # noqa: BLE001 - shown as "not supported", the listing goes on
            out.append((model_name, f"not supported here: {str(exc).splitlines()[0]}"))
    return out, len(names)


register_resolver(PREFIX, resolve)
