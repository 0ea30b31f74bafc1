"""The schema of ``params.yaml``: every key the pipeline reads, its type and its range.

:func:`validate_params` checks a loaded parameter mapping (after ``--set`` and profile
overrides) against :class:`ParamsSchema` and raises :class:`ParamsError` with one line per
problem, each naming the dotted key: an unknown key (a misspelling, or a knob no code reads),
a missing key, a wrong type (``abc`` where a number belongs, a bare string where a list
belongs), a value out of range or not among the accepted choices, NaN or infinity.

Every key here is read by some stage (``tests/test_faults_params.py`` checks that each one
appears in the code), so a parameter in the file always changes what a run does. Choices that
live in modules importing torch or OpenCV (backbone names, cache dtypes, classical models) are
repeated here as plain tuples so that validation stays cheap; the test compares them with the
registries. Layer names are not checked: they depend on the loaded backbone (the extraction
stage reports unknown ones).

Types are strict (no ``"12"`` for an integer, no ``true`` for a number), except that a float
may be written as a YAML 1.1 string such as ``1e-3`` (PyYAML reads an exponent without a dot as
a string); :func:`validate_params` returns such values as floats.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from dissect.backbone_spec import CUSTOM, check_layers, parse_factory
from dissect.device import check_device_name
from dissect.errors import DataError

#: registered backbones (``dissect.backbones.BACKBONES``)
BACKBONE_NAMES = ("vgg16", "resnet18", "resnet50", "efficientnet_lite0")
#: activation cache dtypes (``dissect.cache.DTYPES``)
CACHE_DTYPES = ("float16", "float32")
#: classical saliency models (``dissect.models.classical.CLASSICAL_MODELS``)
CLASSICAL_NAMES = ("itti", "gbvs", "bms", "spectral_residual", "fine_grained")
#: the 12 region categories (``dissect.categories.NAMES``)
CATEGORY_NAMES = ("person head", "person part", "animal head", "animal part", "object", "text",
                  "symbol", "vehicle", "food", "drink", "plant", "other")


class ParamsError(DataError):
    """Parameters refused by the schema: ``problems`` holds ``(dotted key, message)`` pairs, and
    the message has one line per problem."""

    def __init__(self, source: str | Path | None, problems: list[tuple[str, str]]):
        self.problems = problems
        if len(problems) == 1:
            text = "{}: {}".format(*problems[0])
        else:
            text = f"{len(problems)} invalid parameters:" + "".join(
                f"\n  {key}: {msg}" for key, msg in problems)
        super().__init__(source, text)

    @property
    def keys(self) -> list[str]:
        """The dotted keys refused."""
        return [key for key, _ in self.problems]


# ------------------------------------------------------------------------------- value types
def _number(value: Any) -> Any:
    """Accept a YAML 1.1 float string (``1e-3``) as the number it means; anything else is left
    to the strict float check (so ``abc``, ``true`` and ``nan`` are refused there)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _distinct(values: list) -> list:
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"lists {', '.join(twice)} more than once: {values!r}")
    return values


def _k_value(value: Any) -> int | str:
    """A number of fine-tuned trunk stages: an integer ≥ 0 or ``"all"``."""
    if value == "all" and isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"must be an integer ≥ 0 or 'all', got {value!r}")


def _name_list(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(f"must be a list, e.g. [{value}], not the string {value!r}")
    return value


Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]
Fraction = Annotated[Number, Field(gt=0, lt=1)]
Count = Annotated[StrictInt, Field(ge=1)]
Seed = Annotated[StrictInt, Field(ge=0)]
Text = Annotated[StrictStr, Field(min_length=1)]
PathText = Text
KValue = Annotated[int | str, PlainValidator(_k_value)]
Seeds = Annotated[list[Seed], Field(min_length=1), AfterValidator(_distinct)]


def names(item: Any) -> Any:
    """A non-empty list of distinct ``item`` values; a bare string is refused."""
    return Annotated[list[item], BeforeValidator(_name_list), Field(min_length=1),
                     AfterValidator(_distinct)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


# ---------------------------------------------------------------------------------- sections
class DataParams(_Section):
    osie: PathText
    regions: PathText
    scenes: PathText
    split_file: PathText
    n_heldout: Count
    split_seed: Seed
    drop_first: StrictBool
    max_images: Count | None  # null = all images


class BackboneParams(_Section):
    """A built-in backbone (``name`` of :data:`BACKBONE_NAMES`, ``layers`` a list of its layer
    names), or ``name: custom``: the network ``factory`` (``"package.module:function"``)
    returns, ``layers`` the dotted module paths to hook (a list, or a mapping {layer name: module
    path}), ``weights: null`` (the factory's; ``checkpoint`` optionally loads a state dict into
    it) and ``mean``/``std`` (null = ImageNet's, or the factory's own ``Backbone``'s).
    :mod:`dissect.backbone_spec` checks the spellings; the import and the module paths are
    checked when the backbone is built (:func:`dissect.backbones.load_custom_backbone`)."""

    name: Literal[(CUSTOM, *BACKBONE_NAMES)]
    factory: Text | None
    weights: Literal["imagenet", "random"] | None
    checkpoint: PathText | None
    layers: Annotated[Any, PlainValidator(check_layers)]
    mean: Annotated[list[Number], Field(min_length=3, max_length=3)] | None
    std: Annotated[list[Positive], Field(min_length=3, max_length=3)] | None

    @model_validator(mode="after")
    def _custom_keys(self) -> BackboneParams:
        if self.name == CUSTOM:
            if self.factory is None:
                raise ValueError("backbone.factory: required with backbone.name: custom: "
                                 "'package.module:function', a function returning the "
                                 "torch.nn.Module (or a dissect Backbone) to dissect")
            try:
                parse_factory(self.factory)
            except ValueError as exc:
                raise ValueError(f"backbone.factory: {exc}") from None
            if self.weights is not None:
                raise ValueError(f"backbone.weights: must be null with backbone.name: custom "
                                 f"(the factory's network comes with its weights; "
                                 f"backbone.checkpoint may load a state dict into it), got "
                                 f"{self.weights!r}")
            return self
        if self.factory is not None:
            raise ValueError(f"backbone.factory: must be null unless backbone.name is custom, "
                             f"got {self.factory!r}")
        for key in ("mean", "std"):
            if getattr(self, key) is not None:
                raise ValueError(f"backbone.{key}: must be null unless backbone.name is custom "
                                 f"(the built-in backbones use the ImageNet mean and std)")
        if isinstance(self.layers, dict):
            raise ValueError(f"backbone.layers: a mapping {{layer name: module path}} is for "
                             f"backbone.name: custom; {self.name} takes a list of its layer "
                             f"names, got {self.layers!r}")
        return self._weights_and_checkpoint()

    def _weights_and_checkpoint(self) -> BackboneParams:
        if self.weights is None and self.checkpoint is None:
            raise ValueError("backbone.checkpoint: must name a file when backbone.weights is "
                             "null (the weights are read from it)")
        if self.weights == "random" and self.checkpoint is not None:
            raise ValueError("backbone.checkpoint: must be null with backbone.weights: random")
        return self


class ExtractParams(_Section):
    batch_size: Count
    dtype: Literal[CACHE_DTYPES]


class TrainParams(_Section):
    ks: names(KValue)
    epochs: Count
    lr: Positive
    trunk_lr: Positive
    weight_decay: NonNegative
    batch_size: Count
    patience: Count
    val_fraction: Fraction
    val_seed: Seed
    seeds: Seeds
    threads: Count
    optimizer: Literal["adam", "adamw", "sgd"]
    lr_schedule: Literal["cosine", "step"] | None
    step_size: Count
    gamma: Positive
    min_delta: NonNegative


class GtParams(_Section):
    sigma_deg: Positive
    px_per_degree: Positive


class StatsParams(_Section):
    top_k: Count
    threshold: Number
    n_null: Annotated[StrictInt, Field(ge=0)]
    n_boot: Annotated[StrictInt, Field(ge=0)]
    seed: Seed
    null_type: Literal["labels", "images"]
    ci_level: Fraction
    ci_method: Literal["basic", "BCa", "percentile"]
    n_null_boot: Annotated[StrictInt, Field(ge=0)]


class PopoutParams(_Section):
    n_per_dimension: Count
    seed: Seed
    models: names(Literal[CLASSICAL_NAMES])


class SceneParams(_Section):
    tuned_stages: KValue
    hidden: Annotated[list[Count], Field(min_length=2, max_length=2)]
    dropout: Annotated[Number, Field(ge=0, lt=1)]
    weight_decay: NonNegative
    monitor: Literal["accuracy", "balanced_accuracy", "loss"]
    min_images: Count
    epochs: Count
    lr: Positive
    batch_size: Count
    patience: Count
    seeds: Seeds


class FiguresParams(_Section):
    overlay_categories: names(Literal[CATEGORY_NAMES])
    task_map_category: Literal[CATEGORY_NAMES]


class DaskParams(_Section):
    scheduler: Text | None  # null = local threads, else a dask.distributed address
    chunk_images: Count


class BaselinesParams(_Section):
    gold_train_images: Count  # training images the gold standard's h, w are fitted on (LOSO)
    centre_bias_bins: Annotated[StrictInt, Field(ge=2)]


class DeepGazeParams(_Section):
    layers: names(Text)  # candidate layers, shallow to deep (each alone, each with the deeper)
    input_scale: Annotated[Number, Field(gt=0, le=1)]
    grid_stride: Count
    dtype: Literal[CACHE_DTYPES]
    epochs: Count
    lr: Positive
    l1: NonNegative
    batch_size: Count
    patience: Count
    step_size: Count
    gamma: Positive
    seed: Seed
    top_units: Count  # "what the readout picked": the units of the largest weights
    n_null: Count  # random unit sets for the picked units' permutation null


def _input_size(value: Any) -> Any:
    """ML-Net's input ``[rows, cols]``: two multiples of 8 (the output stride), each ≥ 80 (the
    prior grid has ``side / 80`` cells)."""
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"must be [rows, cols], two integers, got {value!r}")
    if any(v < 80 or v % 8 for v in value):
        raise ValueError(f"rows and cols must be multiples of 8 and at least 80, got {value}")
    return value


class MLNetParams(_Section):
    input_size: Annotated[list, PlainValidator(_input_size)]  # [rows, cols] of the letterbox
    trunk: Literal["frozen", "finetuned"]  # finetuned: the whole network (the reference)
    optimizer: Literal["sgd", "adam"]  # sgd: Nesterov momentum, the reference's
    lr: Positive
    momentum: Fraction  # sgd only
    decay: NonNegative  # Keras' per-update decay: lr / (1 + decay · updates)
    batch_size: Count
    epochs: Count
    patience: Count  # early stopping on the validation loss (best epoch kept)
    seed: Seed


class ImplicitParams(_Section):
    layers: names(Text)  # mid to late; each in backbone.layers; the first is the scorecard's
    classes: Count | None  # null = every output of the network; n = the first n
    chunk_size: Count  # classes per batched backward pass
    variance_norm: Literal["per_map", "global"]  # V̂: min–max per channel map | whole tensor
    gradcam_layer: Text  # the scorecard's and pop-out's Grad-CAM layer
    blur_radius: NonNegative  # Table 2: σ = blur_radius × width / blur_reference_width
    blur_reference_width: Count


EVALUATE_MODELS = ("uniform", "centre_bias", "gold_standard", *CLASSICAL_NAMES, "readouts",
                   "deepgaze", "mlnet", "implicit_saliency", "gradcam")


class EvaluateParams(_Section):
    models: names(Literal[EVALUATE_MODELS])
    conventions: Literal["dissect", "mit"]
    density_train_images: Count  # training images a map-only model's density is fitted on
    auc_borji_splits: Count
    seed: Seed


class SiteParams(_Section):
    top_k: Count  # units per category and layer that get a unit page
    n_images: Count  # top held-out images on a unit page
    min_regions: Count  # defined regions a category needs to be a unit's best category
    thumb_width: Annotated[StrictInt, Field(ge=32, le=1024)]  # pixels
    unit_page_seeds: list[Seed]  # fine-tuned readouts: training seeds whose units get pages
    units: list[Text]  # extra unit pages, "model/layer/unit" (e.g. pt/block12/288)
    example_images: Annotated[StrictInt, Field(ge=0)]  # model pages: the first n held-out images


class ParamsSchema(_Section):
    """A whole ``params.yaml``. Every key is required except ``progress`` (the CLI's ``-q``)."""

    work: PathText
    results: PathText
    progress: StrictBool = True
    #: torch device of extraction, training and scoring: auto (CUDA if available, else CPU),
    #: cpu, cuda, cuda:N or mps (dissect.device.resolve_device)
    device: Annotated[StrictStr, AfterValidator(check_device_name)]
    data: DataParams
    backbone: BackboneParams
    extract: ExtractParams
    train: TrainParams
    gt: GtParams
    stats: StatsParams
    popout: PopoutParams
    scene: SceneParams
    figures: FiguresParams
    dask: DaskParams
    baselines: BaselinesParams
    deepgaze: DeepGazeParams
    mlnet: MLNetParams
    implicit: ImplicitParams
    evaluate: EvaluateParams
    site: SiteParams


def leaf_keys(model: type[BaseModel] = ParamsSchema, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (``"stats.threshold"``, ``"work"``, …)."""
    out = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += leaf_keys(sub, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


# ------------------------------------------------------------------------------- validation
def _key(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _siblings(loc: tuple) -> list[str]:
    model: Any = ParamsSchema
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _problem(err: dict, overridden: set[str]) -> tuple[str, str]:
    loc = tuple(err["loc"])
    key = _key(loc)
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        text = "unknown key (no code reads it)"
        close = difflib.get_close_matches(str(loc[-1]), _siblings(loc), n=1)
        if close:
            text += f"; did you mean {_key((*loc[:-1], close[0]))}?"
    elif kind == "missing":
        text = "missing"
    else:
        msg = msg.removeprefix("Value error, ")
        if msg.startswith(f"{key}.") or msg.startswith(f"{key}:"):  # a section's own check
            key, _, msg = msg.partition(": ")
            return key, msg
        if kind in ("model_type", "dict_type"):
            msg = "must be a mapping of keys to values"
        text = msg[:1].lower() + msg[1:]
        if kind != "value_error":  # the schema's own messages show the value already
            text += f", got {err.get('input')!r}"
    if any(key == k or key.startswith(k + ".") or key.startswith(k + "[")
           for k in overridden):
        text += " (set by an override)"
    return key, text


def validate_params(data: Any, source: str | Path | None = None,
                    overridden: set[str] | None = None) -> dict:
    """Check ``data`` against :class:`ParamsSchema`; return it with YAML 1.1 float strings
    (``1e-3``) turned into floats and nothing else changed (same keys, same order, no defaults
    added). ``overridden``: the dotted keys set by overrides (named so in the message).

    Raises :class:`ParamsError` naming ``source`` and one line per refused key.
    """
    try:
        clean = ParamsSchema.model_validate(data)
    except ValidationError as exc:
        seen: dict[str, str] = {}
        for err in exc.errors():
            key, text = _problem(err, overridden or set())
            seen.setdefault(key, text)  # one line per key
        raise ParamsError(source, list(seen.items())) from None
    return _coerced(data, clean.model_dump())


def _coerced(raw: Any, clean: Any) -> Any:
    """``raw`` with every leaf that validation changed (a float string) replaced."""
    if isinstance(raw, dict) and isinstance(clean, dict):
        return {k: _coerced(v, clean[k]) if k in clean else v for k, v in raw.items()}
    if isinstance(raw, list) and isinstance(clean, list) and len(raw) == len(clean):
        return [_coerced(r, c) for r, c in zip(raw, clean, strict=True)]
    return clean if isinstance(raw, str) and not isinstance(clean, str) else raw
