"""Seconds per Urban100 x2 image (1 thread) and training steps/s (2 threads) of the shipped compact CSNLN and NLSN.

Usage: ``PYTHONPATH=<srlib tree> python docs/results/models_time.py`` with ``SRLIB_DATA`` holding Urban100; prints
one JSON line per model (``seconds_per_image``, ``flops_per_tile_or_image`` from ``srlib.models.count_flops``,
``train_seconds_30_steps``) and then all of them.  The checkpoints come from this checkout's ``data/checkpoints``,
the code from whatever ``srlib`` the path gives, so two trees can be compared on the same weights.
"""
import json
import tempfile
import time
from pathlib import Path

import torch

import srlib
from srlib.checkpoint import load_checkpoint, model_from_checkpoint
from srlib.data import bicubic_degrade, crop_to_multiple, find_dataset, load_image
from srlib.evaluate import super_resolve
from srlib.models import count_flops
from srlib.train import preset_config, train

CKPT = Path(__file__).resolve().parents[2] / "data" / "checkpoints"
results = {"srlib": srlib.__file__}
urban = find_dataset("Urban100")  # SRLIB_DATA
images = sorted(Path(urban).rglob("*.png"))[:1]
for name in ("csnln", "nlsn"):
    tile = preset_config("quick", model=name).val_tile  # the preset's tile policy: CSNLN 48 px, NLSN whole images
    model = model_from_checkpoint(load_checkpoint(CKPT / f"{name}_x2.pt")).eval()
    torch.set_num_threads(1)
    per_image = []
    for path in images:
        hr = crop_to_multiple(load_image(path), 2)  # uint8 (3, H, W)
        lr = bicubic_degrade(hr, 2).float().div(255)[None]  # float32 (1, 3, H/2, W/2) in [0, 1]
        start = time.perf_counter()
        super_resolve(model, lr, tile=tile)
        per_image.append(time.perf_counter() - start)
    flops = count_flops(model, (tile, tile) if tile else tuple(lr.shape[-2:]))  # per tile, or per whole image
    torch.set_num_threads(2)
    config = preset_config("quick", model=name, scale=2, steps=30, val_every=0, checkpoint_every=0,
                           checkpoint_minutes=0, log_every=10, final_sets=("Set5",), seed=0)
    with tempfile.TemporaryDirectory() as out:
        run = train(config, Path(out), progress=False, write_report=False)
    results[name] = {"tile": tile, "images": [p.name for p in images], "lr_shape_last": tuple(lr.shape),
                     "seconds_per_image": per_image, "flops_per_tile_or_image": flops,
                     "train_seconds_30_steps": run["train_seconds"], "batch": config.batch_size,
                     "lr_patch": config.lr_patch}
    print(name, json.dumps(results[name]), flush=True)
print(json.dumps(results))
