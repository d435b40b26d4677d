"""Chapter 08: full training and benchmarking, the series' last step.

This recipe trains nothing itself: it finds the models the earlier chapters exported (in the same
output folder, where ``corrlib series`` and ``corrlib train`` put them), evaluates them beside the
hand-crafted baselines on every benchmark that is present, each under its own protocol, and says
which benchmark is missing and how to get it. It also describes every chapter's ``paper`` preset
(data, backbone, size, optimiser, schedule) from the configs themselves, with their sources, and
the time a ``paper`` run takes from the step times measured in the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from corrlib.data import DatasetNotFoundError
from corrlib.eval import evaluate_keypoints, evaluate_tss, get_method, load_dataset
from corrlib.recipes._common import (
    LAB_IMAGENET_FOLDER,
    ChapterConfig,
    config_getter,
    make_presets,
    preset_folder,
)

__all__ = [
    "BENCHMARKS",
    "CHAPTER",
    "EXPORTED",
    "PAPER_SOURCES",
    "PRESETS",
    "BenchmarkCell",
    "Config",
    "baseline_methods",
    "check_rank_loss_scale",
    "config",
    "evaluate_all",
    "exported_models",
    "lab_step_times",
    "learned_methods",
    "paper_preset_rows",
    "results_markdown",
    "steps_text",
]

CHAPTER = "08_full_training"

#: The benchmarks, in table order: (column label, dataset name for :func:`corrlib.eval.load_dataset`
#: or ``"tss"``, split, protocol, metric, the full benchmark's pair count).
BENCHMARKS = (
    ("PF-WILLOW", "pf-willow", "test", "pf-willow", "PCK@0.1", 900),
    ("PF-PASCAL test", "pf-pascal", "test", "pf-pascal", "PCK@0.1", 299),
    ("PF-PASCAL leak-free", "pf-pascal", "test-leakfree", "pf-pascal", "PCK@0.1", 204),
    ("SPair-71k", "spair-71k", "test", "spair-71k", "PCK@0.1", 12234),
    ("TSS", "tss", None, "tss kit", "PCK@0.05", 400),
)

#: The models the chapters export, as (chapter, file in the chapter's checkpoint folder of one
#: seed, registered method, row label). SCNet's ``lab`` models trained on PF-WILLOW folds (each
#: scored in chapter 04 on the fold it never saw), so only its ``paper`` model, trained on
#: PF-PASCAL, is benchmarked here.
EXPORTED = (
    ("01_patch", "mccnn-fast.pt", "mccnn-fast", "MC-CNN fast (01)"),
    ("01_patch", "deepdesc.pt", "deepdesc", "DeepDesc (01)"),
    ("03_ucn", "hard-negatives+st.pt", "ucn", "UCN (03)"),
    ("04_scnet", "AG.scnet.pt", "scnet-ag", "SCNet-AG (04)"),
    ("05_rtn", "full.rtn.pt", "rtn", "RTN (05)"),
    ("06_sfnet", "full.pt", "sfnet", "SFNet (06)"),
    ("07_multiscale", "multi-scale.msconv.pt", "msconv", "multi-scale trunk (07)"),
    ("07_multiscale", "flow-head.msconv.pt", "msconv-flow", "flow head (07)"),
)

#: Where each chapter's ``paper`` preset comes from (the values themselves are read from the
#: configs, so this table cannot drift from them).
PAPER_SOURCES = {
    "01_patch": "Zbontar & LeCun JMLR 2016 (MC-CNN, KITTI 2012; official main.lua options), "
    "Zagoruyko & Komodakis CVPR 2015 and Simo-Serra et al. ICCV 2015 (Brown: train on one "
    "scene, FPR95 on the other two)",
    "02_stn": "Jaderberg et al. NeurIPS 2015, Sec. 4.1 (distorted MNIST)",
    "03_ucn": "Choy et al. NeurIPS 2016 (CUB-2011 keypoints on ImageNet GoogLeNet to inception4a, "
    "per a re-implementation citing the supplementary; PASCAL and KITTI training not reproduced; "
    "optimiser and size are our choices)",
    "04_scnet": "Han et al. ICCV 2017, Sec. 4-5; the authors' code where the text is silent",
    "05_rtn": "Kim et al. NeurIPS 2018 and the authors' MATLAB code (init_RTNs.m)",
    "06_sfnet": "Lee et al. CVPR 2019, Sec. 4 and the authors' code (VOC masks, ResNet-101)",
    "07_multiscale": "Ufer et al. 2019, abstract only: a reconstruction, not the paper's setting",
}


@dataclass(frozen=True, kw_only=True)
class Config(ChapterConfig):
    """Chapter 08's settings; the defaults (``paper``) evaluate every benchmark in full.

    ``handcrafted``: the baselines (registered names); ``max_side``: their resolution (None:
    original); ``willow_limit``/``pascal_limit``/``spair_limit``/``tss_limit``: pairs evaluated
    (None: all; a limited run is never set beside a published number); ``tss_subsets``;
    ``ddp_chapter``/``ddp_preset``: the model the two-process demonstration trains;
    ``patch_max_side``: the resolution of chapter 01's patch networks (None: the original images,
    as chapter 01 evaluates them; they describe every pixel, about 27 s per TSS pair on a 2-core
    CPU at the original size).
    """

    EVAL_FIELDS: ClassVar[tuple[str, ...]] = ()

    handcrafted: tuple = ("identity", "daisy", "sift")
    max_side: int | None = None
    willow_limit: int | None = None
    pascal_limit: int | None = None
    spair_limit: int | None = None
    tss_subsets: tuple = ("FG3DCar", "JODS", "PASCAL")
    tss_limit: int | None = None
    ddp_chapter: str = "02_stn"
    ddp_preset: str = "smoke"
    patch_max_side: int | None = None


PRESETS = make_presets(
    Config(),
    # every pair of what is present (PF-WILLOW's 450, TSS's 3 here), the baselines and the patch
    # networks at 160 px
    lab=dict(max_side=160, patch_max_side=160),
    smoke=dict(max_side=64, patch_max_side=64, willow_limit=4, pascal_limit=4, spair_limit=4,
               tss_subsets=("JODS",), tss_limit=1),
)  # fmt: skip

#: ``config(preset)``: the chapter's :class:`Config` at a preset (a deep copy; frozen).
config = config_getter(PRESETS)


# ------------------------------------------------------------------------------ paper presets


def _fmt_size(cfg) -> str:
    for name in ("input_size", "size", "patch_size"):
        v = getattr(cfg, name, None)
        if isinstance(v, (tuple, list)):
            return f"{v[1]} x {v[0]}"
        if isinstance(v, int):
            return f"{v} x {v} patches"
    return "-"


def _fmt_trunk(cfg) -> str:
    arch = getattr(cfg, "trunk", None) or getattr(cfg, "arch", None)
    if arch is None:
        if hasattr(cfg, "trunk_widths"):
            return f"trained from scratch (widths {list(cfg.trunk_widths)})"
        return "trained from scratch"
    weights = getattr(cfg, "trunk_weights", "")
    tap = (
        getattr(cfg, "tap", None) or getattr(cfg, "trunk_tap", None) or getattr(cfg, "levels", None)
    )
    tap = f" {list(tap) if isinstance(tap, (tuple, list)) else tap}" if tap else ""
    return f"{arch}{tap} ({weights})" if weights else f"{arch}{tap}"


def _fmt_data(cfg) -> str:
    described = getattr(cfg, "data_description", None)
    if isinstance(described, str):
        return described
    for name in ("data", "source", "train_data"):
        v = getattr(cfg, name, None)
        if isinstance(v, str):
            return v
    return "-"


def steps_text(cfg) -> str:
    """A config's steps per model in words: its ``steps_description`` where it has one (steps
    that depend on the data, as MC-CNN's epochs), else ``"name N, ..."`` of ``steps``."""
    described = getattr(cfg, "steps_description", None)
    if isinstance(described, str):
        return described
    steps = getattr(cfg, "steps", None)
    return ", ".join(f"{k} {v:,}" for k, v in steps.items()) if steps else "-"


def paper_preset_rows(chapters) -> list[dict]:
    """One row per chapter: the ``paper`` preset's data, backbone, size, optimiser and schedule
    (read from the config) and :data:`PAPER_SOURCES`' source.

    Args:
        chapters: ``{chapter: its paper Config}``.
    """
    rows = []
    for chapter, cfg in chapters.items():
        optim = cfg.optim_for("default") if hasattr(cfg, "optim_for") else None
        opt = (
            f"{optim['optimizer']} lr {optim['lr']:g}, {optim.get('schedule', 'constant')}"
            if optim
            else "-"
        )
        rows.append(
            {
                "chapter": chapter,
                "data": _fmt_data(cfg),
                "backbone": _fmt_trunk(cfg),
                "image size": _fmt_size(cfg),
                "optimiser": opt,
                "steps": steps_text(cfg),
                "batch": str(getattr(cfg, "batch_size", 1)),
                "source": PAPER_SOURCES.get(chapter, "-"),
            }
        )
    return rows


def lab_step_times(out_dir, preset: str, seed: int = 0) -> dict[str, float]:
    """Seconds per training step measured in the chapters' checkpoints of ``preset`` under
    ``out_dir`` (the Trainer records training time and steps): ``{chapter: s/step}``, the median
    over the chapter's checkpoints; chapters without checkpoints are left out."""
    import statistics

    from corrlib.train import CKPT_FORMAT, load_checkpoint

    out: dict[str, float] = {}
    base = Path(out_dir) / "checkpoints"
    for chapter_dir in sorted(base.glob("*")) if base.is_dir() else []:
        # one setting's runs only: the folder the chapter uses now, else the other lab folder
        for folder in _folders(chapter_dir.name, preset):
            rates = []
            seed_dir = chapter_dir / folder / f"seed{seed}"
            for ckpt in sorted((*seed_dir.glob("*.ckpt"), *seed_dir.glob("*.pt"))):
                try:
                    state = load_checkpoint(ckpt)
                except (ValueError, OSError):
                    continue
                if state.get("format") != CKPT_FORMAT:  # an exported model, not a training run
                    continue
                if state.get("step") and state.get("seconds"):
                    rates.append(float(state["seconds"]) / int(state["step"]))
            if rates:
                out[chapter_dir.name] = statistics.median(rates)
                break
    return out


def _folders(chapter: str, preset: str) -> list[str]:
    """The checkpoint folders of ``chapter`` at ``preset`` to look in, in order: the one its
    run uses now (:func:`preset_folder`), then, at ``lab``, the other lab folder, so a model
    trained before the ImageNet file was fetched (or after it was removed) is still found."""
    from corrlib.recipes import chapters  # the package imports this module

    if preset != "lab" or chapter not in chapters():  # a stray folder: read as it is named
        return [preset]
    try:
        first = preset_folder(chapter, preset)
    except FileNotFoundError:  # CORRLIB_LAB_TRUNK=imagenet without the file: that run's folder
        first = LAB_IMAGENET_FOLDER
    return [first, preset if first == LAB_IMAGENET_FOLDER else LAB_IMAGENET_FOLDER]


# ------------------------------------------------------------------------------ benchmarking


def exported_models(out_dir, preset: str, seed: int = 0, lab_imagenet: dict | None = None):
    """The models of :data:`EXPORTED` found under ``<out_dir>/checkpoints``: ``{row label:
    (method name, file)}``.

    ``lab_imagenet``: ``{chapter: True}`` for chapters whose ``lab`` ran with ImageNet features
    (their checkpoints are under ``lab-imagenet``): only that folder is read. None (default):
    first the folder each chapter's ``lab`` uses now, the rule its notebook follows
    (:func:`preset_folder`: the ImageNet file is in the torch hub cache), so a series run finds
    the models its chapters just trained; else the other lab folder. A model from
    ``lab-imagenet`` gets `` (ImageNet lab)`` after its label, so the table says which ran."""
    found = {}
    for chapter, name, method, label in EXPORTED:
        if lab_imagenet is None:
            folders = _folders(chapter, preset)
        elif preset == "lab" and lab_imagenet.get(chapter):
            folders = [LAB_IMAGENET_FOLDER]
        else:
            folders = [preset]
        for folder in folders:
            path = Path(out_dir) / "checkpoints" / chapter / folder / f"seed{seed}" / name
            if path.is_file():
                suffix = " (ImageNet lab)" if folder == LAB_IMAGENET_FOLDER else ""
                found[label + suffix] = (method, path)
                break
    return found


@dataclass
class BenchmarkCell:
    """One method on one benchmark: ``value`` (None when not run), ``pairs`` scored, or
    ``missing``: why it was not run (the benchmark's absence, with how to get it)."""

    value: float | None = None
    pairs: int = 0
    seconds: float = 0.0
    missing: str = ""
    result: object = None  # the KeypointResult or TSSResult


#: How each absent benchmark is fetched (``download=True`` needs internet; see corrlib.data).
_HOW_TO_GET = {
    "pf-willow": "PFWillow(root, download=True)",
    "pf-pascal": "PFPascal(root, download=True)",
    "spair-71k": "SPair71k(root, download=True)",
    "tss": "TSS(root, download=True)",
}


def _missing(name: str, err: Exception, root) -> str:
    """Why a benchmark was not run, on one line and without machine paths."""
    first = str(err).splitlines()[0].replace(str(root), "<data root>").rstrip(":. ")
    return f"{first}; {_HOW_TO_GET[name]} fetches it (needs internet)"


def evaluate_all(methods: dict, root, cfg: Config, *, progress: bool = False):
    """Every method on every benchmark of :data:`BENCHMARKS` that is present.

    Args:
        methods: ``{row label: CorrespondenceMethod}``.
        root: the data root.
        cfg: the chapter's config (limits, TSS subsets).

    Returns:
        ``{row label: {benchmark label: BenchmarkCell}}``; an absent benchmark's cells carry
        ``missing`` (the same reason in every row) and no value.
    """
    table: dict = {label: {} for label in methods}
    for bench, name, split, protocol, _metric, _ in BENCHMARKS:
        if name == "tss":
            run = lambda m: evaluate_tss(  # noqa: E731
                m, root, subsets=cfg.tss_subsets, limit=cfg.tss_limit, progress=progress
            )
        else:
            limit = {
                "pf-willow": cfg.willow_limit,
                "pf-pascal": cfg.pascal_limit,
                "spair-71k": cfg.spair_limit,
            }[name]
            try:
                dataset = load_dataset(name, root, split)
            except (DatasetNotFoundError, FileNotFoundError) as e:
                for label in methods:
                    table[label][bench] = BenchmarkCell(missing=_missing(name, e, root))
                continue
            run = lambda m, d=dataset, p=protocol, n=limit: evaluate_keypoints(  # noqa: E731
                m, d, p, limit=n, progress=progress
            )
        for label, method in methods.items():
            try:
                res = run(method)
            except DatasetNotFoundError as e:  # TSS is found by evaluate_tss itself
                table[label][bench] = BenchmarkCell(missing=_missing(name, e, root))
                continue
            if name == "tss":
                cell = BenchmarkCell(res.mean_accuracy, len(res.rows) // 2, res.seconds, "", res)
            else:
                cell = BenchmarkCell(res.pck(0.1), res.n_pairs, res.seconds, "", res)
            table[label][bench] = cell
    return table


def results_markdown(table: dict) -> str:
    """The benchmark table as markdown: one row per method, one column per benchmark (its
    protocol and pairs in the header); absent benchmarks are listed under the table."""
    benches = [b for b in BENCHMARKS if any(not r[b[0]].missing for r in table.values())]
    absent = [b for b in BENCHMARKS if b not in benches]
    head = ["method"]
    for bench, _, _, protocol, metric, full in benches:
        pairs = max(r[bench].pairs for r in table.values())
        scope = "all" if pairs >= full else f"{pairs} of {full}"
        head.append(f"{bench} {metric} ({protocol}; {scope} pairs)")
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(benches) + "|"]
    for label, row in table.items():
        cells = ["-" if row[b[0]].value is None else f"{row[b[0]].value:.3f}" for b in benches]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if absent:
        lines.append("")
    for bench, *_ in absent:
        reason = next(iter(table.values()))[bench].missing
        lines.append(f"* {bench}: not present here ({reason}).")
    return "\n".join(lines)


#: Chapter 01's patch networks: evaluated at ``Config.patch_max_side``.
PATCH_METHODS = ("mccnn-fast", "deepdesc")


def learned_methods(found: dict, cfg: Config) -> dict:
    """The exported models of :func:`exported_models` as methods: ``{row label: method}``, each
    at the resolution its chapter recorded in the file, except the patch networks at
    ``cfg.patch_max_side`` (the method's name says which)."""
    out = {}
    for label, (name, path) in found.items():
        kw = {"checkpoint": path}
        if name in PATCH_METHODS and cfg.patch_max_side is not None:
            kw["max_side"] = cfg.patch_max_side
        out[label] = get_method(name, **kw)
    return out


def baseline_methods(cfg: Config) -> dict:
    """The hand-crafted baselines of ``cfg`` at its resolution: ``{label: method}``."""
    out = {}
    for name in cfg.handcrafted:
        kw = {} if name == "identity" or cfg.max_side is None else {"max_side": cfg.max_side}
        m = get_method(name, **kw)
        out[m.name] = m
    return out


# ---------------------------------------------------------------------------------- exercises


def check_rank_loss_scale(fn) -> str:
    """``fn(count, counts) -> scale``: the factor by which a rank multiplies its loss (a mean
    over ``count`` elements) so that DistributedDataParallel's average over the ranks of the
    scaled losses' gradients is the gradient of the mean over all ``sum(counts)`` elements.

    Returns:
        ``"pass: ..."``, ``"wrong: ..."`` or ``"not attempted yet: ..."``.
    """
    from corrlib.exercises import as_number, run_student

    cases = [(3, [3, 5]), (5, [3, 5]), (1, [1, 4, 7]), (7, [1, 4, 7]), (4, [4, 4, 4, 4])]
    for count, counts in cases:
        got, err = run_student(fn, count, list(counts))
        if err:
            return err
        value, problem = as_number(got)
        if problem:
            return problem
        want = count * len(counts) / sum(counts)
        if abs(value - want) > 1e-9 * max(1.0, abs(want)):
            if abs(value - count / sum(counts)) < 1e-9:
                return (
                    f"wrong: for count {count} of {counts} you return count / total = {value:g}; "
                    "DDP then divides by the number of ranks once more: multiply by it."
                )
            return f"wrong: for count {count} of counts {counts} expected {want:g}, got {value:g}."
    return "pass: each rank weighs its mean by its share of the elements, times the world size."
