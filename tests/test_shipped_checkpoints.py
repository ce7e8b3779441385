"""The trained checkpoints shipped in data/checkpoints: intact, loadable, small and really trained."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from srlib.checkpoint import load_checkpoint, model_from_checkpoint
from srlib.data import find_dataset
from srlib.data.degrade import make_lr_pair
from srlib.data.io import to_float, to_uint8
from srlib.evaluate import super_resolve
from srlib.imresize import imresize
from srlib.metrics import psnr_y
from srlib.models import build_model, takes_references

FOLDER = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
# file -> (model name, scale): what each shipped file must hold.
SHIPPED = {
    "csnln_x2.pt": ("csnln", 2),
    "edsr_baseline_x2_matched.pt": ("edsr_baseline", 2),
    "nlsn_x2.pt": ("nlsn", 2),
    "dlsn_x2.pt": ("dlsn", 2),
    "dlsn_bd_x3.pt": ("dlsn", 3),
    "amrsr_x4.pt": ("amrsr", 4),
    "amrsr_single_x4.pt": ("amrsr", 4),
}
# The reference-SR files are scored on a reference group, not on a Set5 crop.
REFERENCE_SR = {"amrsr_x4.pt", "amrsr_single_x4.pt"}


def test_every_shipped_file_is_listed_with_its_checksum():
    listed = {}
    for line in (FOLDER / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    assert set(listed) == set(SHIPPED) == {p.name for p in FOLDER.glob("*.pt")}
    for name, digest in listed.items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, f"{name} does not match SHA256SUMS"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_is_slim_and_rebuilds_its_model(name):
    path = FOLDER / name
    assert path.stat().st_size < 5 * 1000**2  # the course promises files under 5 MB
    payload = load_checkpoint(path)  # weights_only=True inside
    assert "optimizer_state" not in payload
    model_name, scale = SHIPPED[name]
    assert payload["model_name"] == model_name and payload["scale"] == scale
    assert payload["step"] == payload["config"]["steps"]  # a finished run, not a snapshot
    model = model_from_checkpoint(payload, expected_model=model_name, expected_scale=scale)
    assert not model.training


@pytest.mark.parametrize("name", sorted(set(SHIPPED) - REFERENCE_SR))
def test_shipped_checkpoint_beats_bicubic_on_a_set5_crop(name):
    # A 48x48 LR crop of Set5 "butterfly": small enough for every model's attention on a CPU,
    # every shipped model gains more than 1 dB on it (an untrained one loses about 13 dB).
    # Each model is given the LR images it was trained on (its configuration's degradation).
    model_name, scale = SHIPPED[name]
    model = model_from_checkpoint(FOLDER / name, expected_model=model_name, expected_scale=scale)
    degradation = load_checkpoint(FOLDER / name)["config"].get("degradation", "bicubic")
    hr, lr = make_lr_pair(find_dataset("Set5") / "butterfly.png", scale, degradation)
    top, left = min(40, lr.shape[-2] - 48), min(100, lr.shape[-1] - 48)
    lr = to_float(lr)[None, :, top : top + 48, left : left + 48]  # (1, 3, 48, 48) float32 in [0, 1]
    hr = hr[None, :, scale * top : scale * (top + 48), scale * left : scale * (left + 48)]  # (1, 3, 48 s, 48 s) uint8
    sr = to_uint8(super_resolve(model, lr))  # quantised as the evaluation does
    bicubic = to_uint8(imresize(lr, scale=scale))
    gain = (psnr_y(sr, hr, scale) - psnr_y(bicubic, hr, scale)).item()
    assert gain > 0.5, f"{name}: only {gain:+.2f} dB over bicubic on the crop"


@pytest.mark.parametrize("name", sorted(REFERENCE_SR))
def test_shipped_reference_sr_checkpoint_beats_bicubic_on_a_multiview_group(name):
    """The x4 reference model (with its group's nearest reference) and its baseline gain > 0.5 dB on group 000."""
    from srlib.evaluate import evaluate_references

    model = model_from_checkpoint(FOLDER / name, expected_model="amrsr", expected_scale=4)
    ours = evaluate_references(model, "MultiViewRef_mini", 4, n_refs=1, max_groups=1, progress=False)
    bicubic = evaluate_references(build_model("bicubic", 4), "MultiViewRef_mini", 4, max_groups=1, progress=False)
    gain = ours["psnr"] - bicubic["psnr"]
    assert gain > 0.5, f"{name}: only {gain:+.2f} dB over bicubic on MultiViewRef_mini group 000"


# Outputs of every shipped model on one fixed input, recorded with the srlib that trained them
# (before the attention registry renamed the attention layers and options; dlsn_x2 when it was
# trained, after the registry); the checkpoints
# are loaded through the documented upgrade (srlib.models.csnln.upgrade_csnln_checkpoint,
# srlib.models.nlsn.upgrade_nlsn_checkpoint) and must give the same outputs.
RECORDED = Path(__file__).resolve().parent / "data" / "shipped_checkpoint_outputs.pt"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_checkpoint_gives_the_outputs_recorded_before_the_registry(name):
    """Each shipped checkpoint, loaded today, reproduces its recorded output within 1e-6."""
    import torch

    recorded = torch.load(RECORDED, weights_only=True)
    model_name, scale = SHIPPED[name]
    model = model_from_checkpoint(FOLDER / name, expected_model=model_name, expected_scale=scale)
    with torch.no_grad():
        if takes_references(model):  # with one fixed HR reference (2, 3, 60, 72)
            out = model(recorded["lr"], [recorded["reference"]])
        else:
            out = model(recorded["lr"])  # (2, 3, 14 s, 17 s) from a (2, 3, 14, 17) input
    torch.testing.assert_close(
        out, recorded[name.removesuffix(".pt")], atol=1e-6, rtol=0,
        msg=lambda m: f"{name} no longer gives its recorded output: {m}",
    )
