"""What every chapter recipe shares: a typed config with per-model steps and optimiser, and presets.

A chapter's ``Config`` subclasses :class:`ChapterConfig`; its defaults are the paper's settings
(each citing its source), and the module's ``PRESETS`` holds ``paper`` (the defaults), ``lab`` and
``smoke``, written as :func:`dataclasses.replace` of the paper's config.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from corrlib import __version__
from corrlib._check import check_choice
from corrlib.checkpoint import atomic_write_text
from corrlib.data import DATA_ENV, resolve_data_root
from corrlib.presets import PRESETS, check_preset
from corrlib.train import TrainConfig, pick_device, seed_everything
from corrlib.viz import use_style

__all__ = [
    "ChapterConfig",
    "ChapterRun",
    "TrainedModel",
    "TrainingConfig",
    "apply_overrides",
    "chapter_setup",
    "config_getter",
    "make_presets",
    "normalize_overrides",
    "optim",
    "overrides_tag",
    "pick",
]


def optim(optimizer: str = "adam", lr: float = 1e-3, **kwargs) -> dict:
    """One optimiser setting: the :class:`~corrlib.train.TrainConfig` fields it sets.

    Args:
        optimizer: the optimiser's name (``"adam"``, ``"sgd"``, ...; see ``TrainConfig``).
        lr: the peak learning rate.
        **kwargs: further ``TrainConfig`` fields (``momentum``, ``weight_decay``, ``schedule``,
            ``step_size``, ``gamma``, ``warmup_steps``, ...).

    Returns:
        ``{"optimizer": optimizer, "lr": lr, **kwargs}``.

    Example:
        >>> optim("sgd", 0.01, momentum=0.9)
        {'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9}
    """
    return {"optimizer": optimizer, "lr": lr, **kwargs}


@dataclass(frozen=True, kw_only=True)
class ChapterConfig:
    """Base of every chapter's typed, frozen settings; change one with :meth:`replace`."""

    #: Fields that do not change what a training run produces (evaluation settings, which variants
    #: run, figures): a checkpoint stays valid when they change. Every other field of a training
    #: chapter is recorded with its checkpoints (:attr:`corrlib.train.TrainConfig.recipe`) and
    #: compared when one is reused.
    EVAL_FIELDS: ClassVar[tuple[str, ...]] = ()
    #: Settings added after checkpoints of this chapter were written, with the value those runs
    #: had: ``{"recipe": {field: value}, "model": {key: value}}`` (fields of this config, keys
    #: of the model's ``config``; :attr:`corrlib.train.TrainConfig.legacy`). Such a checkpoint
    #: is still reused when the setting asks for that value. A new field of a training chapter's
    #: config goes here (``tests/recipes/test_run_settings.py`` keeps the list of fields).
    LEGACY_SETTINGS: ClassVar[dict] = {}

    def replace(self, **changes) -> ChapterConfig:
        """A copy with ``changes`` (``dataclasses.replace``); unknown fields raise ``TypeError``.

        Args:
            **changes: field names and their new values.

        Returns:
            A new config of the same class (this one is frozen and unchanged).
        """
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class TrainingConfig(ChapterConfig):
    """Settings every chapter that trains has: steps and optimiser per model, logging, checkpoints.

    ``steps`` and ``optim`` map a model (or variant) name to its value; ``"default"`` applies to
    every other name.
    """

    steps: dict = field(default_factory=lambda: {"default": 1})
    optim: dict = field(default_factory=lambda: {"default": optim()})
    log_every: int = 10
    ckpt_every: int = 0
    #: How many seeds an ablation is trained with (the notebook's ``seed``, ``seed + 1``, ...);
    #: a difference between variants is read as evidence only beyond two standard errors
    #: (:mod:`corrlib.stats`). Seeds change the initialisation and the batch order, not the data.
    seeds: int = 1

    def steps_for(self, name: str) -> int:
        """Optimisation steps of model ``name``.

        Args:
            name: a model or variant name; names without an entry use ``steps["default"]``.

        Returns:
            The number of steps, an int.
        """
        return int(self.steps.get(name, self.steps["default"]))

    def optim_for(self, name: str) -> dict:
        """Optimiser settings of model ``name`` (``TrainConfig`` fields).

        Args:
            name: a model or variant name; names without an entry use ``optim["default"]``.

        Returns:
            A new dict (a copy: changing it never alters the config), e.g. ``{"optimizer": "sgd",
            "lr": 0.01, "momentum": 0.9}``.
        """
        return dict(self.optim.get(name, self.optim["default"]))

    def run_settings(self) -> dict:
        """The settings recorded with a checkpoint: every field except the per-model ``steps``
        and ``optim`` (recorded as :class:`~corrlib.train.TrainConfig` fields), logging,
        ``seeds`` and :attr:`EVAL_FIELDS`."""
        skip = {"steps", "optim", "log_every", "ckpt_every", "seeds", *self.EVAL_FIELDS}
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }

    def train_config(
        self,
        name: str,
        *,
        seed: int,
        device="auto",
        steps: int | None = None,
        settings: dict | None = None,
    ) -> TrainConfig:
        """The :class:`~corrlib.train.TrainConfig` of model ``name`` (``steps`` overrides).

        Args:
            name: a model or variant name (its entries of ``steps`` and ``optim``, else
                ``"default"``).
            seed: the run's seed.
            device: ``"auto"`` or a torch device (string or :class:`torch.device`).
            steps: the number of steps (None: :meth:`steps_for`).
            settings: run settings that are not fields of this config (or override one), e.g.
                ``{"mining": 1.0}`` for a run without mining; recorded with the others.

        Returns:
            A :class:`~corrlib.train.TrainConfig` with this config's ``log_every`` and
            ``ckpt_every``, the optimiser settings of :meth:`optim_for`, and ``recipe`` =
            :meth:`run_settings` updated by ``settings`` (so a checkpoint trained with another
            batch size, data or loss weights is never reused).
        """
        return TrainConfig(
            steps=self.steps_for(name) if steps is None else steps,
            log_every=self.log_every,
            ckpt_every=self.ckpt_every,
            seed=seed,
            device=str(device),
            recipe={**self.run_settings(), **(settings or {})},
            legacy=copy.deepcopy(self.LEGACY_SETTINGS),
            **self.optim_for(name),
        )


def make_presets(paper: ChapterConfig, *, lab: dict, smoke: dict) -> dict[str, ChapterConfig]:
    """``{"paper": paper, "lab": paper.replace(**lab), "smoke": paper.replace(**smoke)}``.

    Args:
        paper: the chapter's :class:`ChapterConfig` subclass at the paper's settings (its
            defaults).
        lab: the fields the ``lab`` preset changes, by name.
        smoke: the fields the ``smoke`` preset changes, by name.

    Returns:
        ``{"paper": ..., "lab": ..., "smoke": ...}``: three configs of ``paper``'s class.
    """
    return {"paper": paper, "lab": paper.replace(**lab), "smoke": paper.replace(**smoke)}


#: ``CORRLIB_LAB_TRUNK``: which trunk a ``lab`` run uses in the chapters that have an ImageNet
#: setting (:class:`LabImageNet`): ``auto`` (default: ImageNet when its file is in the torch hub
#: cache), ``offline`` (always the offline trunk: a room where some machines have the file and
#: others not), or ``imagenet`` (require the file; an error names it when it is missing).
LAB_TRUNK_ENV = "CORRLIB_LAB_TRUNK"
LAB_TRUNK_CHOICES = ("auto", "offline", "imagenet")


@dataclass(frozen=True)
class LabImageNet:
    """A chapter's ``lab`` setting with ImageNet features, used when they are there.

    ``arch``: the torchvision architecture whose ImageNet file is looked for in the torch hub
    cache (the paper's backbone); ``overrides``: the lab config's changes then (a CPU-sized
    setting that keeps the lab within 10 minutes); ``note``: what that setting is, printed.
    """

    arch: str
    overrides: dict
    note: str

    def file(self) -> Path:
        """Where torch hub keeps the ImageNet file of :attr:`arch`."""
        from corrlib.models.backbones import imagenet_weights_path

        return imagenet_weights_path(self.arch)

    def fetch_command(self) -> str:
        """The one line that downloads the file into the torch hub cache (needs internet)."""
        call = f"torchvision.models.{self.arch}(weights='IMAGENET1K_V1')"
        return f'python -c "import torchvision; {call}"'

    @staticmethod
    def mode() -> str:
        """``$CORRLIB_LAB_TRUNK`` (default ``auto``), checked against :data:`LAB_TRUNK_CHOICES`."""
        mode = os.environ.get(LAB_TRUNK_ENV, "auto").strip().lower() or "auto"
        return check_choice(mode, LAB_TRUNK_ENV, LAB_TRUNK_CHOICES)

    def chosen(self) -> bool:
        """True when the ``lab`` preset uses ImageNet features (see :data:`LAB_TRUNK_ENV`)."""
        mode = self.mode()
        if mode == "offline":
            return False
        if mode == "imagenet" and not self.file().is_file():
            raise FileNotFoundError(
                f"{LAB_TRUNK_ENV}=imagenet, but the ImageNet file of {self.arch} is not in the "
                f"torch hub cache ({self.file().name}). Fetch it once with: "
                f"{self.fetch_command()}; or set {LAB_TRUNK_ENV}=auto."
            )
        return self.file().is_file()

    def describe(self, used: bool) -> str:
        """One line for the set-up cell: which trunk this ``lab`` run uses, and how to change it
        (no machine paths)."""
        if used:
            return (
                f"trunk: ImageNet {self.arch} (torchvision IMAGENET1K_V1, found in the torch hub "
                f"cache): {self.note}; {LAB_TRUNK_ENV}=offline uses the offline trunk instead"
            )
        why = (
            f"{LAB_TRUNK_ENV}=offline"
            if self.mode() == "offline"
            else f"no ImageNet {self.arch} file ({self.file().name}) in the torch hub cache"
        )
        return (
            f"trunk: the offline fallback ({why}). With internet, fetch it once with "
            f"{self.fetch_command()} and run again: the lab then uses ImageNet features "
            f"({self.note})"
        )


def config_getter(presets: dict, lab_imagenet: LabImageNet | None = None):
    """A chapter's ``config(preset)`` function over its ``PRESETS`` (see :func:`pick`).

    With ``lab_imagenet``, the ``lab`` config takes its overrides when the ImageNet file is in
    the torch hub cache (:meth:`LabImageNet.chosen`); the function's ``lab_imagenet`` attribute
    holds it.
    """

    def config(preset: str) -> ChapterConfig:
        """The chapter's config at ``preset`` (a deep copy; frozen: use ``cfg.replace(...)``)."""
        cfg = pick(presets, preset)
        if preset == "lab" and lab_imagenet is not None and lab_imagenet.chosen():
            cfg = cfg.replace(**copy.deepcopy(lab_imagenet.overrides))
        return cfg

    config.lab_imagenet = lab_imagenet
    return config


def pick(presets: dict, preset: str) -> ChapterConfig:
    """A copy of the config of ``preset`` (validated against :data:`corrlib.presets.PRESETS`).

    Deep-copied: changing a nested value (``cfg.steps["default"] = ...``) never alters the preset.

    Args:
        presets: a chapter's ``PRESETS`` (:func:`make_presets`).
        preset: ``"smoke"``, ``"lab"`` or ``"paper"``.

    Returns:
        A deep copy of ``presets[preset]``.
    """
    check_choice(check_preset(preset), "preset", PRESETS)
    return copy.deepcopy(presets[preset])


def export_on_main(export, path, *args, **kwargs) -> Path:
    """``export(path, *args, **kwargs)`` on rank 0 only (one writer under ``torchrun``); every
    rank waits for the file and gets its path."""
    from corrlib import distributed

    if distributed.is_main():
        path = export(path, *args, **kwargs)
    distributed.barrier()
    return Path(path)


@dataclass
class TrainedModel:
    """What a chapter's :func:`train_main` (``corrlib train``) returns.

    ``model`` in eval mode; ``history`` the Trainer's rows; ``seconds`` the call's wall time;
    ``checkpoint`` the resumable training checkpoint (the notebook's own file, so the notebook
    reuses it); ``exported`` the file ``corrlib eval --checkpoint`` takes (None when the model is
    not a correspondence method); ``method`` the registered method that evaluates it.
    """

    model: object
    history: list
    seconds: float
    checkpoint: Path
    exported: Path | None = None
    method: str | None = None


def _kind_error(name: str, old, new, want: str) -> ValueError:
    return ValueError(
        f"config_overrides: {name} is {old!r} ({type(old).__name__}); {new!r} "
        f"({type(new).__name__}) is not {want}."
    )


def _coerce(name: str, old, new, allows_none: bool):
    """``new`` as a value of the field ``name`` whose preset value is ``old``: numbers for
    numbers (ints stay ints; an int for a float becomes a float), a sequence for a tuple (as a
    tuple), a string for a string, a dict for a dict (returned as given: merged later), None only
    where the field's type allows it, anything where the preset value is None."""
    if new is None:
        if allows_none or old is None:
            return None
        raise _kind_error(name, old, new, "allowed: the field takes no None")
    if old is None:
        return _frozen(new)
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        raise _kind_error(name, old, new, "a bool")
    if isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        raise _kind_error(name, old, new, "an int")
    if isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        raise _kind_error(name, old, new, "a number")
    if isinstance(old, (tuple, list)):
        if isinstance(new, (tuple, list)):
            return _frozen(new)
        raise _kind_error(name, old, new, "a sequence")
    if isinstance(old, dict):
        if isinstance(new, dict):
            return _frozen(new)
        raise _kind_error(name, old, new, "a dict")
    if isinstance(new, type(old)):
        return new
    raise _kind_error(name, old, new, f"a {type(old).__name__}")


def _frozen(value):
    """A deep copy with lists (JSON's, papermill's) as tuples, as the configs keep sequences."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _merged(old, new):
    """``new`` merged into ``old``, dicts key by key at every depth (``{"optim": {"default":
    {"lr": 1e-4}}}`` changes one learning rate and keeps the optimiser, schedule, ...)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    return new


def normalize_overrides(cfg: ChapterConfig, overrides) -> dict:
    """Check ``overrides`` against ``cfg`` and return them normalised: ``{field: value}`` with
    each value of its field's kind (:func:`apply_overrides` says which), sequences as tuples, keys
    sorted. Equal changes give equal dicts, however they were written (``1`` or ``1.0`` for a
    float field, a list or a tuple), hence one checkpoint folder (:func:`overrides_tag`).

    Args:
        cfg: a chapter's config at a preset.
        overrides: ``{field: value}``, or a JSON object as a string (papermill's ``-p``); None,
            ``{}`` or ``""``: none.

    Raises:
        ValueError: for text that is not a JSON object, an unknown field (the config's fields
            are listed) or a value of another kind than the field's.
    """
    if isinstance(overrides, str):
        text = overrides.strip()
        try:
            overrides = json.loads(text) if text else {}
        except json.JSONDecodeError as err:
            raise ValueError(
                f"config_overrides {text!r} is not a JSON object ({err}); write it as "
                "'{\"field\": value}'."
            ) from None
    if not overrides:
        return {}
    if not isinstance(overrides, dict):
        raise ValueError(
            f"config_overrides must be a dict of config fields, got {type(overrides).__name__} "
            f"{overrides!r}."
        )
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    out = {}
    for name in sorted(overrides):
        if name not in fields:
            raise ValueError(
                f"config_overrides: {type(cfg).__module__.rsplit('.', 1)[-1]}'s Config has no "
                f"field {name!r}; its fields: {', '.join(sorted(fields))}."
            )
        allows_none = "None" in str(fields[name].type)
        out[name] = _coerce(name, getattr(cfg, name), overrides[name], allows_none)
    return out


def apply_overrides(cfg: ChapterConfig, overrides) -> ChapterConfig:
    """``cfg`` with some fields changed: a notebook's ``config_overrides`` parameter, or
    ``corrlib train --set FIELD=VALUE``.

    A value must be of its field's kind: an int for an int field, a number for a float, a
    sequence for a tuple, a string for a string, a dict for a dict, a bool for a bool; None only
    where the field takes None. A dict is merged into the preset's, key by key at every depth:
    ``{"optim": {"default": {"lr": 1e-4}}}`` changes that learning rate and keeps the optimiser,
    schedule and the other models' entries; ``{"steps": {"default": 50}}`` keeps other models'
    own steps.

    Args:
        cfg: a chapter's config at a preset.
        overrides: what :func:`normalize_overrides` takes.

    Returns:
        The new config (``cfg`` itself when there is nothing to change).

    Raises:
        ValueError: as :func:`normalize_overrides`.
    """
    changes = normalize_overrides(cfg, overrides)
    if not changes:
        return cfg
    return cfg.replace(**{k: _merged(getattr(cfg, k), v) for k, v in changes.items()})


def overrides_tag(overrides: dict) -> str:
    """The checkpoint-folder suffix of a run with normalised ``overrides``
    (:func:`normalize_overrides`): ``""`` without, else ``"+"`` and 8 hex digits of the SHA-256
    of the overrides as sorted JSON (equal overrides, equal folder; other overrides never share
    a run's checkpoints or its metrics file)."""
    if not overrides:
        return ""
    text = json.dumps(overrides, sort_keys=True, default=repr)
    return "+" + hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class ChapterRun:
    """What a notebook's set-up cell resolves once: config, data root, device, output folders.

    ``ckpt_dir`` is ``<out_dir>/checkpoints/<chapter>/<preset>/seed<seed>``: runs with another
    preset or seed never share a checkpoint.
    """

    chapter: str
    preset: str
    seed: int
    cfg: ChapterConfig
    root: Path
    device: torch.device
    out_dir: Path
    ckpt_dir: Path
    #: the lab's trunk line (chapters with a :class:`LabImageNet` setting at ``lab``), else ""
    trunk: str = ""
    #: the config fields this run changed (:func:`apply_overrides`), else empty
    overrides: dict = field(default_factory=dict)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds of the chapter's ablation: ``seed, seed + 1, ...`` (``cfg.seeds`` of them;
        one when the chapter's config has no ``seeds``)."""
        return tuple(self.seed + k for k in range(getattr(self.cfg, "seeds", 1)))

    def ckpt_dir_for(self, seed: int) -> Path:
        """``<out_dir>/checkpoints/<chapter>/<preset>/seed<seed>``: the checkpoints of one seed."""
        return self.ckpt_dir.parent / f"seed{seed}"

    @property
    def results_name(self) -> str:
        """The name of this run's metrics file (``corrlib.series.record_results``): the chapter,
        and the overrides' tag when there are some, so a sweep point never overwrites the
        preset's results."""
        return self.chapter + overrides_tag(self.overrides)

    def describe(self) -> str:
        """One line for the set-up cell's output (no machine paths).

        Returns:
            E.g. ``"corrlib 0.1.0 · 06_sfnet · preset: lab · seed: 0 · device: cpu · torch
            threads: 2"``.
        """
        line = (
            f"corrlib {__version__} · {self.chapter} · preset: {self.preset} · seed: {self.seed} · "
            f"device: {self.device} · torch threads: {torch.get_num_threads()}"
        )
        if self.overrides:
            changed = ", ".join(f"{k}={v!r}" for k, v in sorted(self.overrides.items()))
            line += f"\nconfig overrides: {changed}"
        return line + (f"\n{self.trunk}" if self.trunk else "")


#: The checkpoint folder (in place of ``lab``) of a ``lab`` run with ImageNet features.
LAB_IMAGENET_FOLDER = "lab-imagenet"


def preset_folder(chapter: str, preset: str) -> str:
    """The folder under ``<out_dir>/checkpoints/<chapter>/`` that a run of ``chapter`` at
    ``preset`` uses now: ``preset``, or :data:`LAB_IMAGENET_FOLDER` for a ``lab`` run that takes
    ImageNet features (the chapter's :class:`LabImageNet` setting is chosen: its file is in the
    torch hub cache, see :data:`LAB_TRUNK_ENV`)."""
    from corrlib.recipes import recipe_for  # the package imports this module

    check_preset(preset)
    lab_imagenet = getattr(getattr(recipe_for(chapter), "config", None), "lab_imagenet", None)
    if preset == "lab" and lab_imagenet is not None and lab_imagenet.chosen():
        return LAB_IMAGENET_FOLDER
    return preset


#: Where a notebook finds the shared data when neither ``data_root`` nor ``$CORRLIB_DATA`` is set.
NOTEBOOK_DATA_FALLBACK = Path("../../shared/data")


def _record_overrides(path: Path, overrides: dict) -> None:
    """Write ``overrides`` (normalised) to ``path`` once; an existing record must say the same."""
    text = json.dumps(overrides, indent=1, sort_keys=True, default=repr)
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(text):
            raise ValueError(
                f"{path} records other overrides than this run's ({text}); the folder belongs to "
                "another run: pass another out_dir."
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def chapter_setup(
    chapter: str,
    preset: str,
    *,
    data_root=None,
    device="auto",
    seed: int = 0,
    out_dir=None,
    overrides=None,
) -> ChapterRun:
    """Resolve a notebook's parameters once: validate the preset, seed, find the data and device.

    Args:
        chapter: the notebook's name (``"06_sfnet"``); its recipe's config at ``preset`` is used.
        preset: ``"smoke"``, ``"lab"`` or ``"paper"``.
        data_root: the folder with the benchmarks; None: ``$CORRLIB_DATA``, else
            ``../../shared/data`` when it exists (the course layout), else the error of
            :func:`corrlib.data.resolve_data_root`.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device string.
        seed: seeds python, numpy and torch (:func:`corrlib.train.seed_everything`).
        out_dir: where checkpoints and results go (None: ``../runs``).
        overrides: config fields to change (:func:`apply_overrides`; a notebook's
            ``config_overrides``). The run's checkpoints then go to ``<preset><tag>``
            (:func:`overrides_tag`), where ``overrides.json`` records them, and its results to
            the metrics file :attr:`ChapterRun.results_name`.

    Returns:
        A :class:`ChapterRun` (``cfg``, ``root``, ``device``, ``out_dir`` and ``ckpt_dir``
        resolved). The figure style of the series is set too (:func:`corrlib.viz.use_style`).
        A ``lab`` run of a chapter with an ImageNet setting (:class:`LabImageNet`) says which
        trunk it uses (``trunk``, printed by :meth:`ChapterRun.describe`) and keeps its
        checkpoints apart: ``<preset>`` is ``lab-imagenet`` in ``ckpt_dir`` then.
    """
    from corrlib.recipes import get_config, recipe_for  # the package imports this module

    cfg = get_config(chapter, check_preset(preset))
    lab_imagenet = getattr(getattr(recipe_for(chapter), "config", None), "lab_imagenet", None)
    preset_dir = preset_folder(chapter, preset)
    overrides = normalize_overrides(cfg, overrides)
    trunk = ""
    if preset == "lab" and lab_imagenet is not None:
        trunk = lab_imagenet.describe(preset_dir == LAB_IMAGENET_FOLDER)
    seed_everything(seed)
    if data_root is None and not os.environ.get(DATA_ENV) and NOTEBOOK_DATA_FALLBACK.is_dir():
        data_root = NOTEBOOK_DATA_FALLBACK
    root = resolve_data_root(data_root)
    out = Path(out_dir) if out_dir is not None else Path("../runs")
    ckpt_dir = out / "checkpoints" / chapter / preset_dir / f"seed{seed}"
    if overrides:
        cfg = apply_overrides(cfg, overrides)
        ckpt_dir = out / "checkpoints" / chapter / (preset_dir + overrides_tag(overrides))
        _record_overrides(ckpt_dir / "overrides.json", overrides)
        ckpt_dir = ckpt_dir / f"seed{seed}"
    use_style()
    return ChapterRun(
        chapter, preset, seed, cfg, root, pick_device(device), out, ckpt_dir, trunk, overrides
    )
