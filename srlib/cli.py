"""The ``srlib`` command: find data, evaluate, train and upscale.

Sub-commands::

    srlib data     [--data-root DIR] [--download NAME --root DIR]
    srlib eval     (--model bicubic | --checkpoint PATH) --scale S --dataset NAME [--dataset NAME ...] [--json FILE]
    srlib train    --preset quick|full --model NAME --scale S --out DIR [--resume]
    srlib upscale  IMAGE (--checkpoint PATH | --model bicubic --scale S) -o OUT.png
    srlib models   [--scale S] [--option KEY=VALUE ...]
    srlib export   CHECKPOINT -o SLIM.pt [--half]
    srlib bench    attention [--quick] [--cases NAME ...] [--sizes S ...] [--sweep S ...] [--out DIR]

Every error that comes from bad input (a missing dataset, a checkpoint of
another model or scale, a corrupt image) is printed as one line starting with
``error:`` and the command exits with status 2; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


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
    _add_data_root(p)

    p = sub.add_parser("train", help="train a model; writes checkpoint.pt, metrics.json, comparison.png")
    p.add_argument("--preset", default="quick", choices=["quick", "full", "smoke"], help="training budget")
    p.add_argument("--model", default="edsr_baseline", choices=[m for m in available_models() if m != "bicubic"])
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--steps", type=int, default=None, help="override the preset's number of steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr-patch", type=int, default=None, metavar="PX", help="LR training patch size in pixels")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, mps")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --option n_feats=48 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_data_root(p)

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

    p = sub.add_parser("export", help="write a slim copy of a training checkpoint (no optimizer state) for sharing")
    p.add_argument("checkpoint", help="a checkpoint.pt written by `srlib train`")
    p.add_argument("-o", "--output", required=True, metavar="SLIM.pt")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--force", action="store_true", help="overwrite SLIM.pt if it exists")

    from .bench import add_attention_arguments

    p = sub.add_parser("bench", help="benchmarks: forward time and peak memory of the attention modules")
    benchmarks = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    add_attention_arguments(benchmarks.add_parser(
        "attention", help="time (ms) and peak memory (MiB) of dense, region, sparse and cross-scale attention; "
                          "writes attention_bench.json and attention_bench.png"))
    return parser


def _parse_option(text: str):
    if "=" not in text:
        raise ValueError(f"--option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def _load_model(args, device):
    from .checkpoint import model_from_checkpoint
    from .models import build_model

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
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    missing = [r["name"] for r in report if not r["found"]]
    if missing:
        print(f"\n{len(missing)} of {len(DATASETS)} datasets missing; point SRLIB_DATA or --data-root at a folder holding them.")
    return 0


def _cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .utils import pick_device

    device = pick_device(args.device)
    model = _load_model(args, device)
    scores = evaluate(
        model, args.dataset, args.scale, roots=_roots(args), device=device, tile=args.tile,
        tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
        progress=not args.no_progress, max_images=args.max_images,
    )
    name = args.checkpoint or args.model
    print(f"\n{name}  x{args.scale}  (Y channel, shave {args.scale})")
    print(f"{'dataset':<10} {'PSNR (dB)':>10} {'SSIM':>8} {'images':>7}")
    for ds, s in scores.items():
        print(f"{ds:<10} {s['psnr']:>10.2f} {s['ssim']:>8.4f} {s['images']:>7}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scores, indent=2) + "\n")
    return 0


def _cmd_train(args) -> int:
    from .train import preset_config, train

    options = dict(_parse_option(o) for o in args.option)
    overrides = dict(
        model=args.model, scale=args.scale, steps=args.steps, batch_size=args.batch_size, lr_patch=args.lr_patch,
        learning_rate=args.learning_rate, seed=args.seed, num_workers=args.num_workers,
        device=args.device, data_roots=_roots(args),
    )
    config = preset_config(args.preset, **overrides)
    if options:
        config.model_options = {**config.model_options, **options}
    result = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    metrics = result.get("metrics")
    print(f"\nsaved {result['checkpoint']} after {result['step']} steps ({result['train_seconds']:.0f} s of training)")
    if metrics:
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
    print("FLOPs of one forward pass, counted by torch.utils.flop_counter (2 per multiply-add); "
          "n/a: the attention's memory guard refused a map that large on this machine.")
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
    sr = upscale_image(model, image, device=device, tile=args.tile, tile_overlap=args.tile_overlap,
                       self_ensemble=args.self_ensemble)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(sr, out)
    print(f"{args.image} {tuple(image.shape[-2:])} -> {out} {tuple(sr.shape[-2:])}")
    return 0


def _cmd_export(args) -> int:
    from .checkpoint import export_checkpoint

    if Path(args.output).exists() and not args.force:
        raise ValueError(f"{args.output} already exists; pass --force to overwrite it or choose another name")
    report = export_checkpoint(args.checkpoint, args.output, half=args.half)
    dropped = ", ".join(report["dropped"]) or "nothing"
    print(f"wrote {report['path']} ({report['bytes'] / 2**20:.2f} MiB, from {report['source_bytes'] / 2**20:.2f} MiB; "
          f"dropped {dropped})")
    return 0


def _cmd_bench(args) -> int:
    from .bench import attention_command

    return attention_command(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``srlib`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"data": _cmd_data, "eval": _cmd_eval, "train": _cmd_train, "upscale": _cmd_upscale,
                "models": _cmd_models, "export": _cmd_export, "bench": _cmd_bench}
    from .checkpoint import CheckpointError
    from .data import DatasetNotFoundError, ImageReadError
    from .train import TrainingError

    try:
        return handlers[args.command](args)
    except (DatasetNotFoundError, ImageReadError, CheckpointError, TrainingError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
