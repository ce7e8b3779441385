"""The ``srlib`` command: find data, evaluate, train and upscale.

Sub-commands::

    srlib data     [--data-root DIR] [--download NAME --root DIR]
    srlib eval     (--model bicubic | --checkpoint PATH) --scale S --dataset NAME [--dataset NAME ...] [--json FILE]
                   [--degradation bicubic|bd|dn [--noise SIGMA]] [--plugin FILE.py ...]
    srlib train    --preset quick|full --model NAME --scale S --out DIR [--resume] [--val-tile PX]
                   [--stop-after STEP] [--checkpoint-minutes MIN]
                   [--degradation bicubic|bd|dn [--noise SIGMA]] [--plugin FILE.py ...]
                   (several processes: torchrun --nproc_per_node=K -m srlib train ...)
    srlib upscale  IMAGE (--checkpoint PATH | --model bicubic --scale S) -o OUT.png [--plugin FILE.py ...]
    srlib models   [--scale S] [--option KEY=VALUE ...]
    srlib export   CHECKPOINT -o SLIM.pt [--half]
    srlib convert  official-csnln|official-nlsn FILE -o OUT.pt [--scale S]
    srlib bench    attention [--quick] [--case NAME ...] [--module FILE.py:Class ...] [--sizes S ...] [--sweep S ...] [--out DIR]
    srlib assignments release [NOTEBOOK ...] --out DIR
    srlib assignments grade   SUBMISSION.ipynb [--source NOTEBOOK] [--json FILE]

Every error that comes from bad input (a missing dataset, a checkpoint of
another model or scale, a corrupt image) is printed as one line starting with
``error:`` and the command exits with status 2; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "train_config_from_args"]


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        action="append",
        default=None,
        metavar="DIR",
        help="folder holding datasets (repeatable or ':'-separated); searched before $SRLIB_DATA and data/",
    )


def _roots(args) -> list[str] | None:
    if not args.data_root:
        return None
    roots: list[str] = []
    for item in args.data_root:
        roots.extend(r for r in item.split(os.pathsep) if r)
    return roots


def _add_degradation(p: argparse.ArgumentParser, default: str | None, default_text: str = "bicubic") -> None:
    p.add_argument("--degradation", choices=["bicubic", "bd", "dn"], default=default,
                   help=f"how LR images are made (default: {default_text}): bicubic, bd = Gaussian blur sigma 1.6 "
                        "then one pixel per block (x3 only), dn = bicubic plus Gaussian noise (needs --noise)")
    p.add_argument("--noise", type=float, default=None, metavar="SIGMA",
                   help="DN noise standard deviation on the 0-255 scale (>= 0), with --degradation dn")


def _degradation(args):
    """The :class:`srlib.data.degrade.Degradation` of ``--degradation`` / ``--noise`` (bicubic when neither)."""
    from .data.degrade import Degradation

    name = args.degradation or "bicubic"
    if args.noise is not None and name != "dn":
        raise ValueError(f"--noise {args.noise:g} goes with --degradation dn, not {name}")
    if name == "dn" and args.noise is None:
        raise ValueError("--degradation dn needs --noise SIGMA, the noise level on the 0-255 scale (e.g. --noise 15)")
    if args.noise is not None and not args.noise >= 0:
        raise ValueError(f"--noise must be a noise level >= 0 on the 0-255 scale, got {args.noise:g}")
    return Degradation(name, args.noise)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``srlib`` command (all sub-commands)."""
    from .models import available_models

    parser = argparse.ArgumentParser(prog="srlib", description="Non-local attention for single-image super-resolution.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="list which datasets are found where, and how to get the missing ones")
    _add_data_root(p)
    p.add_argument("--download", metavar="NAME", help="download a dataset from its public URL (needs network)")
    p.add_argument("--root", metavar="DIR", help="where --download installs the dataset")
    p.add_argument("--no-verify", action="store_true",
                   help="install a download that has no published SHA-256 (Urban100); you trust the server")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")

    p = sub.add_parser("eval", help="PSNR/SSIM on the Y channel (shave = scale) of benchmark sets")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=["bicubic"], help="a parameter-free model")
    which.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.pt written by `srlib train`")
    p.add_argument("--scale", type=int, required=True, help="upscaling factor, e.g. 2")
    p.add_argument("--dataset", action="append", required=True, metavar="NAME", help="repeatable: Set5, Set14, B100, ...")
    p.add_argument("--json", metavar="FILE", help='write {"NAME": {"psnr": dB, "ssim": x, "images": n}}')
    p.add_argument("--tile", type=int, default=None, metavar="PX", help="tiled inference with LR tiles of at most PX")
    p.add_argument("--tile-overlap", type=int, default=16, metavar="PX", help="LR overlap between tiles (default 16)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.add_argument("--max-images", type=int, default=None, help="score only the first N images of each set")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--n-refs", type=int, action="append", default=None, metavar="K",
                   help="reference-SR sets (MultiViewRef, ...): references per group, repeatable to compare "
                        "(default: all)")
    p.add_argument("--wrong-scene", action="store_true",
                   help="reference-SR sets: also score the control, each target given another scene's references")
    p.add_argument("--baseline", metavar="PATH",
                   help="reference-SR sets: a single-image checkpoint (e.g. the same generator without "
                        "references); adds bicubic and it to the table, and each row's mean per-group PSNR gain "
                        "over it with a 95%% bootstrap interval")
    _add_degradation(p, default=None, default_text="the one a --checkpoint was trained with, else bicubic")
    _add_data_root(p)
    _add_plugin(p)

    p = sub.add_parser("train", help="train a model; writes checkpoint.pt, metrics.json, comparison.png")
    p.add_argument("--preset", default="quick", choices=["quick", "full", "smoke"], help="training budget")
    # No argparse choices: a plugin (--plugin, loaded after parsing) may register the model; the
    # name is checked once the plugins are loaded (srlib.train.preset_config).
    p.add_argument("--model", default="edsr_baseline", metavar="NAME",
                   help=f"registered model: {', '.join(m for m in available_models() if m != 'bicubic')}, "
                        "or one a --plugin file registers (default edsr_baseline)")
    p.add_argument("--scale", type=int, default=None, help="default 2, or the model's preset (amrsr: 4)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop with a checkpoint once this step is reached, without the report (continue later "
                        "with --resume); the run's schedule still spans --steps")
    p.add_argument("--checkpoint-minutes", type=float, default=None, metavar="MIN",
                   help="also save checkpoint.pt every MIN minutes of wall clock (default 5; 0: only every "
                        "checkpoint_every steps)")
    p.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the training steps on a CPU with bf16 instructions (AVX512-BF16, "
                        "AMX), about 2x faster; weights and evaluation stay float32 (default: the preset's, on "
                        "for edsr_baseline --preset quick)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="patches per step; under torchrun the global batch, split evenly over the processes")
    p.add_argument("--lr-patch", type=int, default=None, metavar="PX", help="LR training patch size in pixels")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --option n_feats=48 (repeatable)")
    p.add_argument("--val-tile", type=int, default=None, metavar="PX",
                   help="validate and score the final report in LR tiles of at most PX "
                        "(default: the model's preset; 0: whole images)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--references", type=int, default=None, metavar="K",
                   help="reference crops per training sample, for a reference-based model (default: its preset)")
    p.add_argument("--train-scene", action="append", default=None, metavar="NAME_OR_DIR",
                   help="a multi-view training scene of a reference-based model (repeatable; default: "
                        "srlib.data.reference.TRAIN_SCENES)")
    p.add_argument("--reference-size", type=int, default=None, metavar="PX",
                   help="side of a training reference crop in HR pixels (default: the HR patch side)")
    _add_degradation(p, default=None)
    _add_data_root(p)
    _add_plugin(p)

    p = sub.add_parser("models", help="registered models with their parameters and FLOPs per LR size")
    p.add_argument("--scale", type=int, action="append", default=None, help="repeatable (default: 2, 3, 4)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option for every model that takes it, e.g. --option n_feats=32")
    p.add_argument("--lr-size", type=int, action="append", default=None, metavar="PX",
                   help="square LR input size for the FLOP count (repeatable; default 64, 128, 256)")

    p = sub.add_parser("upscale", help="super-resolve any image (no ground truth needed)")
    p.add_argument("image", help="input image (PNG, JPEG, ...)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=["bicubic"])
    which.add_argument("--checkpoint", metavar="PATH")
    p.add_argument("--scale", type=int, default=None, help="needed with --model bicubic; checked against a checkpoint")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png")
    p.add_argument("--tile", type=int, default=None, metavar="PX")
    p.add_argument("--tile-overlap", type=int, default=16, metavar="PX")
    p.add_argument("--self-ensemble", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="overwrite OUT.png if it exists")
    p.add_argument("--reference", action="append", default=None, metavar="REF.png",
                   help="an HR reference image for a reference-based model (repeatable)")
    _add_plugin(p)

    p = sub.add_parser("export", help="write a slim copy of a training checkpoint (no optimizer state) for sharing")
    p.add_argument("checkpoint", help="a checkpoint.pt written by `srlib train`")
    p.add_argument("-o", "--output", required=True, metavar="SLIM.pt")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--force", action="store_true", help="overwrite SLIM.pt if it exists")

    p = sub.add_parser("convert", help="turn the authors' released CSNLN / NLSN weights into an srlib checkpoint")
    p.add_argument("layout", choices=["official-csnln", "official-nlsn"], help="which official code saved FILE")
    p.add_argument("file", metavar="FILE", help="the released state dict, e.g. model_x2.pt")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt")
    p.add_argument("--scale", type=int, default=None, help="checked against the weights (inferred when left out)")
    p.add_argument("--force", action="store_true", help="overwrite OUT.pt if it exists")

    p = sub.add_parser("bench", help="benchmarks: forward time and peak memory of the attention modules")
    benchmarks = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    add_attention_arguments(benchmarks.add_parser(
        "attention", help="time (ms) and peak memory (MiB) of every registered attention (and --module classes); "
                          "writes attention_bench.json and attention_bench.png"))

    p = sub.add_parser("assignments", help="classroom assignments: student versions of the notebooks, grading "
                                           "(docs/teaching.md)")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    q = tasks.add_parser("release", help="write student versions: solutions blanked, hidden tests removed, "
                                         "revealing outputs cleared")
    q.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="solution notebooks (default: all of notebooks/)")
    q.add_argument("--out", required=True, metavar="DIR", help="folder for the student versions")
    q = tasks.add_parser("grade", help="run a submission in quick mode with the hidden tests put back; "
                                       "print and write its grade")
    q.add_argument("submission", metavar="SUBMISSION.ipynb")
    q.add_argument("--source", metavar="NOTEBOOK", help="the solution notebook (default: the course notebook "
                                                         "of the same name)")
    q.add_argument("--json", metavar="FILE", help="write {score, max_score, exercises: [...]} as JSON")
    q.add_argument("--timeout", type=int, default=600, metavar="S", help="seconds a cell may run (default 600)")
    return parser


def add_attention_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``srlib bench attention`` to an ``argparse`` parser (see :func:`attention_command`)."""
    from .bench import (
        CALIBRATION_CASES,
        DEFAULT_REPEATS,
        DEFAULT_SIZES,
        DEFAULT_SWEEP_SIZES,
        DEFAULT_WARMUP,
        attention_cases,
    )

    parser.add_argument("--case", action="append", default=None, metavar="NAME",
                        help=f"a case to measure (repeatable; default: every registered case): "
                             f"{', '.join(attention_cases())}; calibration: {', '.join(CALIBRATION_CASES)}")
    parser.add_argument("--cases", nargs="+", default=None, metavar="NAME", help="deprecated: use --case NAME (repeatable)")
    parser.add_argument("--module", action="append", default=None, metavar="FILE.py:Class",
                        help="also measure a module class that is not part of srlib (FILE.py:Class or "
                             "package.module:Class, built as Class(channels)); repeatable")
    parser.add_argument("--sizes", nargs="+", type=int, default=None, metavar="S",
                        help=f"map sides S of the table (default {' '.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--sweep", nargs="*", type=int, default=None, metavar="S",
                        help=f"map sides of the scaling plot (default {' '.join(map(str, DEFAULT_SWEEP_SIZES))}; "
                             "none: no sweep)")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed passes, median reported (default {DEFAULT_REPEATS})")
    parser.add_argument("--max-seconds", type=float, default=None, metavar="SEC",
                        help="stop timing a (case, size) once its timed passes have taken SEC seconds (at least "
                             "one pass; default: every repeat)")
    parser.add_argument("--warmup", type=int, default=None, help=f"untimed passes first (default {DEFAULT_WARMUP})")
    parser.add_argument("--channels", type=int, default=64, help="channels C of the (1, C, S, S) input (default 64)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--region-grid", nargs=2, type=int, default=None, metavar=("ROWS", "COLS"),
                        help="grid of the attentions with a regions option (default: as registered, 2 2)")
    parser.add_argument("--max-attention-bytes", type=float, default=None, metavar="BYTES",
                        help="memory-guard limit of the guarded attentions (default: half the free memory; inf: off)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SEC",
                        help="CPU: stop one measurement after SEC seconds (default 1800)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default 0)")
    parser.add_argument("--out", default=".", metavar="DIR",
                        help="folder for attention_bench.json and attention_bench.png (default: .)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: checks that it runs, nothing more")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _parse_option(text: str):
    if "=" not in text:
        raise ValueError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _add_plugin(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=None,
        metavar="FILE.py",
        help="Python file registering attention modules or models, loaded first (repeatable; "
             "also $SRLIB_PLUGINS, os.pathsep-separated)",
    )


def _plugins(args) -> list[str]:
    """Load the plugin files of ``$SRLIB_PLUGINS``, then of ``--plugin``; returns their absolute paths."""
    from .plugins import load_plugins, plugins_from_environment

    return load_plugins([*plugins_from_environment(), *(args.plugin or [])])


def _checkpoint_degradation(path) -> tuple[str, float | None]:
    """The degradation a checkpoint's training run used (``config``), ``("bicubic", None)`` when it records none."""
    from .checkpoint import load_checkpoint

    config = load_checkpoint(path).get("config") or {}
    return config.get("degradation") or "bicubic", config.get("noise_sigma")


def _load_model(args, device):
    from .checkpoint import model_from_checkpoint
    from .models import build_model

    _plugins(args)  # before the checkpoint: a copy of a moved plugin file stands in for the recorded one
    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint, expected_scale=args.scale, device=device)
    if args.scale is None:
        raise ValueError("--model bicubic needs --scale")
    return build_model(args.model, args.scale).to(device)


def _cmd_data(args) -> int:
    from .data import DATASETS, dataset_report, download_dataset

    if args.download:
        if not args.root:
            raise ValueError("--download needs --root DIR (where to install the dataset)")
        path = download_dataset(args.download, args.root, verify=not args.no_verify)
        print(f"installed {args.download} in {path}")
        return 0
    from .data import data_roots

    roots = data_roots(_roots(args))
    print("dataset roots searched, in order:")
    for r in roots:
        print(f"  {r}")
    report = dataset_report(_roots(args))
    print()
    print(f"{'dataset':<10} {'images':>7} {'expected':>8}  where")
    for row in report:
        if row["found"]:
            print(f"{row['name']:<10} {row['images']:>7} {row['expected']:>8}  {row['path']}")
        else:
            print(f"{row['name']:<10} {'-':>7} {row['expected']:>8}  MISSING: srlib data --download {row['name']} --root DIR"
                  f"  ({row['url']})")
    from .data import REFERENCE_DATASETS, reference_dataset_report

    print(f"\n{'reference-SR set':<18} {'kind':<5} {'found':>9} {'expected':>8}  where")
    for row in reference_dataset_report(_roots(args)):
        found = f"{row['count']} {row['unit']}" if row["found"] else "-"
        where = row["path"] if row["found"] else (f"MISSING (no download): put it in "
                                                  f"DIR/{REFERENCE_DATASETS[row['name']].folder}, then SRLIB_DATA=DIR")
        print(f"{row['name']:<18} {row['kind']:<5} {found:>9} {row['expected']:>8}  {where}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    missing = [r["name"] for r in report if not r["found"]]
    if missing:
        print(f"\n{len(missing)} of {len(DATASETS)} datasets missing; point SRLIB_DATA or --data-root at a folder holding them.")
    return 0


def _cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .utils import pick_device

    from .data import REFERENCE_DATASETS

    reference_sets = {name.lower() for name in REFERENCE_DATASETS}
    if any(d.lower() in reference_sets for d in args.dataset):
        return _eval_references(args)
    if args.degradation is None and args.noise is None and args.checkpoint:
        args.degradation, args.noise = _checkpoint_degradation(args.checkpoint)  # the one the model was trained on
    degradation = _degradation(args)
    degradation.check_scale(args.scale)  # before loading anything
    device = pick_device(args.device)
    model = _load_model(args, device)
    scores = evaluate(
        model, args.dataset, args.scale, roots=_roots(args), device=device, tile=args.tile,
        tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
        progress=not args.no_progress, max_images=args.max_images, degradation=degradation,
    )
    name = args.checkpoint or args.model
    print(f"\n{name}  x{args.scale}  {degradation.key} LR  (Y channel, shave {args.scale})")
    print(f"{'dataset':<10} {'PSNR (dB)':>10} {'SSIM':>8} {'images':>7}")
    for ds, s in scores.items():
        print(f"{ds:<10} {s['psnr']:>10.2f} {s['ssim']:>8.4f} {s['images']:>7}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


def _eval_references(args) -> int:
    """``srlib eval`` on reference-SR group sets: PSNR/SSIM per group and mean, per number of references."""
    from .data import REFERENCE_DATASETS
    from .evaluate import evaluate_references
    from .utils import pick_device

    reference_sets = {name.lower() for name in REFERENCE_DATASETS}
    others = [d for d in args.dataset if d.lower() not in reference_sets]
    if others:
        raise ValueError(f"score reference-SR sets and single-image sets in separate calls: {', '.join(others)}")
    if args.degradation not in (None, "bicubic") or args.noise is not None:
        raise ValueError("reference-SR sets are made with bicubic LR images only")
    device = pick_device(args.device)
    model = _load_model(args, device)
    baseline = None
    if args.baseline:
        from .checkpoint import model_from_checkpoint
        from .models import build_model, takes_references

        baseline = model_from_checkpoint(args.baseline, expected_scale=args.scale, device=device)
        if takes_references(baseline):
            raise ValueError(f"--baseline {args.baseline} is a reference-based model; give a single-image "
                             "checkpoint (e.g. trained with --option use_references=false)")
    results, comparisons = {}, {}
    for dataset in args.dataset:
        def score(net, n_refs=None, wrong_scene=False, dataset=dataset):
            return evaluate_references(net, dataset, args.scale, n_refs=n_refs, roots=_roots(args), device=device,
                                       progress=not args.no_progress, max_groups=args.max_images,
                                       wrong_scene=wrong_scene)

        runs = [(f"refs={n or 'all'}" + (" wrong-scene" if wrong else ""), n, wrong)
                for n in args.n_refs or [None] for wrong in ((False, True) if args.wrong_scene else (False,))]
        own = {}
        for tag, n_refs, wrong in runs:
            result = own[tag] = score(model, n_refs, wrong)
            label = f"{result['dataset']} {tag}"
            results[label] = result
            print(f"\n{args.checkpoint or args.model}  x{args.scale}  {label}  (Y channel, shave {args.scale})")
            print(f"{'group':<10} {'scene':<20} {'PSNR (dB)':>10} {'SSIM':>8}")
            for group in result["groups"]:
                print(f"{group['name']:<10} {str(group['scene']):<20} {group['psnr']:>10.2f} {group['ssim']:>8.4f}")
            print(f"{'mean':<31} {result['psnr']:>10.2f} {result['ssim']:>8.4f}")
        if baseline is not None:
            comparisons[dataset] = _compare_to_baseline(
                {"bicubic": score(build_model("bicubic", args.scale)), "baseline": score(baseline),
                 **{f"{Path(args.checkpoint or args.model).name} {tag}": result for tag, result in own.items()}},
                dataset, args)
    if comparisons:
        results["comparison"] = comparisons
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _compare_to_baseline(rows: dict, dataset: str, args) -> dict:
    """Print and return the table of ``srlib eval --baseline``: mean PSNR/SSIM and the paired gain over the baseline."""
    from .evaluate import paired_gain

    print(f"\n{dataset} x{args.scale}: mean over groups (Y, shave {args.scale}); gain = mean per-group PSNR gain "
          f"over --baseline, [95% bootstrap interval over groups], wins = groups with a positive gain")
    print(f"{'':<48} {'PSNR (dB)':>10} {'SSIM':>8} {'gain (dB)':>10} {'95% interval':>17} {'wins':>7}")
    table = {}
    for name, result in rows.items():
        gain = paired_gain(result, rows["baseline"]) if name != "baseline" else None
        table[name] = {"psnr": result["psnr"], "ssim": result["ssim"], "gain_over_baseline": gain}
        extra = (f"{gain['mean']:>+10.2f} [{gain['low']:>+6.2f}, {gain['high']:>+6.2f}] {gain['wins']:>3}/{gain['groups']:<3}"
                 if gain else "")
        print(f"{name[-48:]:<48} {result['psnr']:>10.2f} {result['ssim']:>8.4f} {extra}")
    return table


def train_config_from_args(args, plugins: list[str] | None = None):
    """The :class:`srlib.train.TrainConfig` that ``srlib train`` builds from its parsed arguments.

    Args:
        args: the namespace ``build_parser().parse_args(["train", ...])`` returns.
        plugins: absolute paths of the plug-in files already loaded (recorded in the config).

    Raises:
        ValueError: a negative ``--val-tile``, a malformed ``--option``, an unknown preset,
            ``--noise`` without ``--degradation dn`` (or the reverse), a negative ``--noise``,
            a degradation not defined at ``--scale`` (BD: x3 only).
    """
    from .train import preset_config

    options = dict(_parse_option(o) for o in args.option)
    if args.val_tile is not None and args.val_tile < 0:
        raise ValueError(f"--val-tile must be a number of LR pixels > 0, or 0 for whole images; got {args.val_tile}")
    degradation = _degradation(args)
    overrides = dict(
        model=args.model, scale=args.scale, steps=args.steps, batch_size=args.batch_size, lr_patch=args.lr_patch,
        learning_rate=args.learning_rate, seed=args.seed, num_workers=args.num_workers,
        device=args.device, data_roots=_roots(args), val_tile=args.val_tile or None, plugins=plugins or None,
        degradation=degradation.name, noise_sigma=degradation.noise_sigma,
        references=args.references, train_scenes=tuple(args.train_scene) if args.train_scene else None,
        reference_size=args.reference_size, checkpoint_minutes=args.checkpoint_minutes, cpu_bf16=args.cpu_bf16,
    )
    config = preset_config(args.preset, **overrides)
    degradation.check_scale(config.scale)
    if args.val_tile == 0:
        config.val_tile = None  # whole images, even where the model's preset tiles
    if options:
        config.model_options = {**config.model_options, **options}
    return config


def _cmd_train(args) -> int:
    from .train import train

    # Plug-ins are loaded before the model name is checked, and recorded in the checkpoint.
    config = train_config_from_args(args, plugins=_plugins(args))
    if args.stop_after is not None and args.stop_after < 1:
        raise ValueError(f"--stop-after must be a step >= 1, got {args.stop_after}")
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after)
    if result["rank"] != 0:
        return 0  # under torchrun, rank 0 reports for every process
    metrics = result.get("metrics")
    processes = f" on {result['world_size']} processes" if result["world_size"] > 1 else ""
    print(f"\nsaved {result['checkpoint']} after {result['step']} steps{processes} "
          f"({result['train_seconds']:.0f} s of training)")
    if metrics and "takes_references" in metrics:
        print(f"{'dataset':<14} {'refs':>9} {'model dB':>9} {'bicubic dB':>11} {'gain dB':>8} {'model SSIM':>11}")
        for ds, row in metrics["datasets"].items():
            base = row["bicubic"]["psnr"]
            for key, label in (("model_1_ref", "1"), ("model_all_refs", "all"), ("wrong_scene", "all, wrong")):
                if key in row:
                    print(f"{ds:<14} {label:>9} {row[key]['psnr']:>9.2f} {base:>11.2f} {row[key]['psnr'] - base:>+8.2f} "
                          f"{row[key]['ssim']:>11.4f}")
        print(f"wrote {Path(args.out) / 'metrics.json'}")
    elif metrics:
        print(f"{'dataset':<8} {'model dB':>9} {'bicubic dB':>11} {'gain dB':>8} {'model SSIM':>11} {'bicubic SSIM':>13}")
        for ds, row in metrics["datasets"].items():
            print(f"{ds:<8} {row['model']['psnr']:>9.2f} {row['bicubic']['psnr']:>11.2f} {row['gain_db']:>+8.2f} "
                  f"{row['model']['ssim']:>11.4f} {row['bicubic']['ssim']:>13.4f}")
        print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'comparison.png'}")
    return 0


def _cmd_models(args) -> int:
    from .models import (
        available_models,
        build_model,
        count_parameters,
        model_options,
        model_summary,
    )

    options = dict(_parse_option(o) for o in args.option)
    sizes = tuple((px, px) for px in (args.lr_size or [64, 128, 256]))
    print(f"{'model':<15} {'scale':>5} {'params':>10}  " + "  ".join(f"GFLOPs@{h}x{w}" for h, w in sizes))
    for name in available_models():
        accepted = model_options(name)
        own = {k: v for k, v in options.items() if k in accepted}
        for scale in args.scale or [2, 3, 4]:
            try:
                model = build_model(name, scale, **own)
            except ValueError:
                continue  # scale not supported by this model
            cells = []
            for h, w in sizes:
                width = len(f"GFLOPs@{h}x{w}")
                try:
                    gflops = model_summary(model, lr_sizes=((h, w),))[0]["gflops"]
                    cells.append(f"{gflops:>{width}.2f}")
                except MemoryError:  # an attention model refusing a map too large for this machine
                    cells.append(f"{'n/a':>{width}}")
            print(f"{name:<15} {scale:>5} {count_parameters(model):>10,}  {'  '.join(cells)}")
    print("FLOPs of one forward pass, counted by torch.utils.flop_counter (2 per multiply-add); reference models "
          "with one reference of the HR size; n/a: the attention's memory guard refused a map that large on this "
          "machine.")
    return 0


def _cmd_upscale(args) -> int:
    from .data import load_image, save_image
    from .evaluate import upscale_image
    from .utils import pick_device

    out = Path(args.output)
    if out.exists() and not args.force:
        raise ValueError(f"{out} already exists; pass --force to overwrite it or choose another -o")
    device = pick_device(args.device)
    image = load_image(args.image)
    model = _load_model(args, device)
    from .models import takes_references

    if takes_references(model) or args.reference:
        sr = _upscale_with_references(model, image, args.reference or [], device)
    else:
        sr = upscale_image(model, image, device=device, tile=args.tile, tile_overlap=args.tile_overlap,
                           self_ensemble=args.self_ensemble)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(sr, out)
    print(f"{args.image} {tuple(image.shape[-2:])} -> {out} {tuple(sr.shape[-2:])}")
    return 0


def _upscale_with_references(model, image, reference_files, device):
    """``srlib upscale --reference``: a reference model's output for one image, uint8 ``(3, s h, s w)``."""
    import torch

    from .data import load_image, to_float, to_uint8

    from .models import takes_references

    if not takes_references(model):
        raise ValueError(f"--reference was given but {getattr(model, 'model_name', 'this model')} is a single-image "
                         "model; drop --reference or use a reference-based checkpoint")
    if not reference_files:
        raise ValueError(f"{model.model_name} is a reference-based model: pass one or more --reference REF.png")
    references = [to_float(load_image(f)).unsqueeze(0).to(device) for f in reference_files]  # (1, 3, H_m, W_m)
    model.eval()
    with torch.no_grad():
        sr = model(to_float(image).unsqueeze(0).to(device), references).clamp(0, 1)  # (1, 3, s h, s w)
    return to_uint8(sr[0].cpu())


def _cmd_export(args) -> int:
    from .checkpoint import export_checkpoint

    if Path(args.output).exists() and not args.force:
        raise ValueError(f"{args.output} already exists; pass --force to overwrite it or choose another name")
    report = export_checkpoint(args.checkpoint, args.output, half=args.half)
    dropped = ", ".join(report["dropped"]) or "nothing"
    print(f"wrote {report['path']} ({report['bytes'] / 2**20:.2f} MiB, from {report['source_bytes'] / 2**20:.2f} MiB; "
          f"dropped {dropped})")
    return 0


def attention_command(args) -> int:
    """Run ``srlib bench attention`` from parsed arguments: measure, print the table, write the files; returns 0.

    ``--case`` and the deprecated ``--cases`` add up (a note on stderr for the
    latter); neither given: every registered case.

    Raises:
        ValueError, RuntimeError: bad arguments (see :func:`srlib.bench.run_attention_benchmark`),
            or ``--out`` naming a file (checked before measuring).
    """
    from .bench import format_attention_report, run_attention_benchmark, save_attention_benchmark

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose a folder for the benchmark outputs")
    if args.cases:
        print("note: --cases NAME ... is deprecated; use --case NAME (repeatable)", file=sys.stderr)
    cases = [*(args.case or []), *(args.cases or [])] or None
    result = run_attention_benchmark(
        cases=cases, sizes=args.sizes, sweep_sizes=args.sweep, modules=args.module, channels=args.channels,
        repeats=args.repeats, warmup=args.warmup, device=args.device, threads=args.threads,
        max_seconds=args.max_seconds,
        region_grid=None if args.region_grid is None else tuple(args.region_grid),
        max_attention_bytes=args.max_attention_bytes, seed=args.seed, timeout_s=args.timeout,
        quick=True if args.quick else None, progress=not args.no_progress,
    )
    print(format_attention_report(result))
    paths = save_attention_benchmark(result, out)
    print(f"\nwrote {paths['json']} and {paths['png']}")
    return 0


def _cmd_convert(args) -> int:
    from .convert import convert_official_checkpoint

    if Path(args.output).exists() and not args.force:
        raise ValueError(f"{args.output} already exists; pass --force to overwrite it or choose another name")
    report = convert_official_checkpoint(args.layout, args.file, args.output, scale=args.scale)
    print(f"wrote {report['path']}: {report['model_name']} x{report['scale']}, {report['tensors']} tensors from "
          f"{args.file} (rgb_range {report['rgb_range']}; dropped {', '.join(report['dropped'])})")
    return 0


def _cmd_bench(args) -> int:
    return attention_command(args)


def _cmd_assignments(args) -> int:
    from .assignments.release import course_notebooks, release

    if args.task == "release":
        notebooks = args.notebooks or course_notebooks()
        written = release(notebooks, args.out)
        count = sum(1 for path in written if path.suffix == ".ipynb")
        print(f"wrote {count} student notebook(s) to {args.out}: "
              + ", ".join(path.name for path in written if path.suffix == ".ipynb"))
        return 0
    from .assignments.grade import format_report, grade_notebook

    report = grade_notebook(args.submission, source=args.source, timeout=args.timeout)
    print(format_report(report))
    if args.json:
        from .utils import atomic_write

        with atomic_write(args.json, "w") as handle:
            handle.write(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``srlib`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"data": _cmd_data, "eval": _cmd_eval, "train": _cmd_train, "upscale": _cmd_upscale,
                "models": _cmd_models, "export": _cmd_export, "bench": _cmd_bench,
                "convert": _cmd_convert, "assignments": _cmd_assignments}
    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError, ImageReadError
    from .train import TrainingError

    try:
        return handlers[args.command](args)
    except (DatasetNotFoundError, ImageReadError, CheckpointError, TrainingError, ValueError, RuntimeError,
            FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    # A failed run can stay alive in reference cycles through its error's traceback (the frames hold
    # the run, its DDP wrapper, its process group's objects). Collect them here: left to the
    # interpreter's exit, a torchrun process that had reported its error aborted now and then
    # ("terminate called without an active exception", exit status -6 instead of 2: 13 of 180 runs
    # of the failing-rank test in tests/test_train_distributed.py; 0 of 200 with this collection).
    gc.collect()
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
