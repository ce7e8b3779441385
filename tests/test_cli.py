"""The ``srlib`` command: eval reproduces the published bicubic numbers, errors are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from srlib.checkpoint import load_checkpoint
from srlib.cli import main
from srlib.data import DatasetNotFoundError, find_dataset

# Published bicubic baselines (Y channel, shave = scale): e.g. DLSN Table 3, CSNLN Table 2.
PUBLISHED = {
    ("Set5", 2): (33.66, 0.9299),
    ("Set5", 3): (30.39, 0.8682),
    ("Set5", 4): (28.42, 0.8104),
    ("B100", 2): (29.56, 0.8431),
    ("B100", 3): (27.21, None),
    ("B100", 4): (25.96, None),
    ("Urban100", 2): (26.88, 0.8403),
    ("Urban100", 4): (23.14, None),
}



def _eval_bicubic(tmp_path, dataset, scale):
    out = tmp_path / f"{dataset}_x{scale}.json"
    status = main(["eval", "--model", "bicubic", "--scale", str(scale), "--dataset", dataset,
                   "--json", str(out), "--no-progress"])
    assert status == 0
    return json.loads(out.read_text())[dataset]


def _check(scores, dataset, scale):
    psnr, ssim = PUBLISHED[(dataset, scale)]
    assert abs(scores["psnr"] - psnr) <= 0.02, scores
    if ssim is not None:
        assert abs(scores["ssim"] - ssim) <= 0.001, scores


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_eval_bicubic_reproduces_published_set5(tmp_path, scale):
    scores = _eval_bicubic(tmp_path, "Set5", scale)
    assert scores["images"] == 5
    _check(scores, "Set5", scale)


@pytest.mark.slow
@pytest.mark.parametrize("dataset,scale", [("B100", 2), ("B100", 3), ("B100", 4), ("Urban100", 2), ("Urban100", 4)])
def test_eval_bicubic_reproduces_published_b100_urban100(tmp_path, dataset, scale):
    try:
        find_dataset(dataset)
    except DatasetNotFoundError:
        pytest.skip(f"{dataset} not found; set SRLIB_DATA to a folder holding it")
    scores = _eval_bicubic(tmp_path, dataset, scale)
    assert scores["images"] == 100
    _check(scores, dataset, scale)


def test_eval_writes_json_for_several_datasets(tmp_path):
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", "bicubic", "--scale", "4", "--dataset", "Set5", "--dataset", "Set14",
                 "--json", str(out), "--no-progress"]) == 0
    scores = json.loads(out.read_text())
    assert set(scores) == {"Set5", "Set14"}
    assert scores["Set14"]["images"] == 14
    assert set(scores["Set5"]) == {"psnr", "ssim", "images"}


def test_missing_dataset_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SRLIB_DATA", str(tmp_path))
    status = main(["eval", "--model", "bicubic", "--scale", "2", "--dataset", "Manga109",
                   "--data-root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error:") and "Manga109" in err and str(tmp_path) in err


def test_train_eval_upscale_round_trip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--scale", "2", "--out", str(run), "--steps", "4",
                 "--no-progress"]) == 0
    for name in ("checkpoint.pt", "metrics.json", "comparison.png"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"Set5", "Set14"}

    out = tmp_path / "set5.json"
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--scale", "2", "--dataset", "Set5",
                 "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["Set5"]["images"] == 5

    # A checkpoint of another scale: one line, exit status 2.
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--scale", "3", "--dataset", "Set5",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "x2" in err and "x3" in err

    # Upscale any image without ground truth.
    import torch

    from srlib.data import load_image, save_image

    image = torch.randint(0, 256, (3, 21, 17), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    save_image(image, tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "--checkpoint", str(run / "checkpoint.pt"),
                 "-o", str(tmp_path / "out.png")]) == 0
    assert tuple(load_image(tmp_path / "out.png").shape) == (3, 42, 34)
    # Refuses to overwrite.
    assert main(["upscale", str(tmp_path / "in.png"), "--model", "bicubic", "--scale", "2",
                 "-o", str(tmp_path / "out.png")]) == 2

    # Export a slim copy: smaller, same outputs, refuses to overwrite without --force.
    slim = tmp_path / "slim.pt"
    capsys.readouterr()
    assert main(["export", str(run / "checkpoint.pt"), "-o", str(slim)]) == 0
    assert "dropped optimizer_state" in capsys.readouterr().out
    assert slim.stat().st_size < (run / "checkpoint.pt").stat().st_size
    assert main(["upscale", str(tmp_path / "in.png"), "--checkpoint", str(slim), "-o", str(tmp_path / "slim.png")]) == 0
    assert torch.equal(load_image(tmp_path / "slim.png"), load_image(tmp_path / "out.png"))
    assert main(["export", str(run / "checkpoint.pt"), "-o", str(slim)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(run / "checkpoint.pt"), "-o", str(slim), "--force", "--half"]) == 0


def test_upscale_corrupt_image_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["upscale", str(bad), "--model", "bicubic", "--scale", "2", "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and not (tmp_path / "o.png").exists()


def test_module_entry_point_and_data_command():
    proc = subprocess.run([sys.executable, "-m", "srlib", "data"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Set5" in proc.stdout and "T91" in proc.stdout


def test_models_command_reports_parameters_and_flops(capsys):
    assert main(["models", "--scale", "2", "--option", "n_feats=32", "--option", "n_blocks=4", "--lr-size", "64"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("edsr_baseline"))
    from srlib.models import build_model, count_flops, count_parameters

    model = build_model("edsr_baseline", 2, n_feats=32, n_blocks=4)
    assert f"{count_parameters(model):,}" in row
    assert f"{count_flops(model, lr_size=(64, 64)) / 1e9:.2f}" in row


# -- plugins ---------------------------------------------------------------------------------------


@pytest.fixture()
def fresh_process(scratch_registries):
    """Returns a function that forgets the plugins loaded so far, as a new process would (see conftest.py)."""
    return scratch_registries


def test_train_eval_upscale_a_model_registered_by_a_plugin(tmp_path, capsys, fresh_process, write_model_plugin):
    plugin = write_model_plugin(tmp_path / "plugins" / "cli_plugin_net.py", "cli_plugin_net")
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--model", "cli_plugin_net", "--plugin", str(plugin),
                 "--out", str(run), "--steps", "2", "--val-tile", "24", "--no-progress"]) == 0
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["model_name"] == "cli_plugin_net" and payload["model_options"] == {"width": 3}
    assert payload["plugins"] == payload["config"]["plugins"] == [str(plugin.resolve())]
    assert payload["config"]["val_tile"] == 24  # --val-tile wins over the model's preset (40)
    assert set(json.loads((run / "metrics.json").read_text())["datasets"]) == {"Set5"}

    # A new process: the checkpoint names its plugin, but loading it never imports code on its
    # own: without --plugin one clear error names the file; with --plugin it evaluates.
    fresh_process()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--scale", "2", "--dataset", "Set5",
                 "--max-images", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert str(plugin.resolve()) in err and "not loaded" in err and "--plugin" in err
    scores = tmp_path / "scores.json"
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--scale", "2", "--dataset", "Set5",
                 "--max-images", "1", "--json", str(scores), "--no-progress", "--plugin", str(plugin)]) == 0
    assert json.loads(scores.read_text())["Set5"]["images"] == 1

    # The plugin file moved: the error says it is missing; --plugin with its new place works.
    moved = tmp_path / "moved" / "cli_plugin_net.py"
    moved.parent.mkdir()
    shutil.move(plugin, moved)
    fresh_process()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--scale", "2", "--dataset", "Set5",
                 "--max-images", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(plugin.resolve()) in err and "put it back" in err and "--plugin" in err
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--scale", "2", "--dataset", "Set5",
                 "--max-images", "1", "--no-progress", "--plugin", str(moved)]) == 0

    import torch

    from srlib.data import load_image, save_image

    save_image(torch.zeros(3, 9, 7, dtype=torch.uint8), tmp_path / "in.png")
    fresh_process()
    assert main(["upscale", str(tmp_path / "in.png"), "--checkpoint", str(run / "checkpoint.pt"),
                 "-o", str(tmp_path / "out.png"), "--plugin", str(moved)]) == 0
    assert tuple(load_image(tmp_path / "out.png").shape) == (3, 18, 14)


def test_srlib_plugins_environment_and_whole_image_validation(tmp_path, monkeypatch, fresh_process,
                                                               write_model_plugin):
    plugin = write_model_plugin(tmp_path / "cli_plugin_net.py", "cli_plugin_net")
    monkeypatch.setenv("SRLIB_PLUGINS", str(plugin))
    run = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--model", "cli_plugin_net", "--out", str(run), "--steps", "1",
                 "--val-tile", "0", "--no-progress"]) == 0
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["plugins"] == [str(plugin.resolve())]
    assert payload["config"]["val_tile"] is None  # 0: whole images, although the preset tiles (40)


def test_bad_model_or_plugin_is_one_clear_error(tmp_path, capsys, fresh_process):
    for argv, expected in (
        (["--model", "no_such_net"], ["no_such_net", "edsr_baseline", "--plugin"]),
        (["--model", "bicubic"], ["bicubic", "no parameters"]),
        (["--plugin", str(tmp_path / "missing.py")], ["missing.py", "does not exist"]),
        (["--val-tile", "-4"], ["--val-tile", "-4"]),
    ):
        capsys.readouterr()
        status = main(["train", "--preset", "smoke", "--out", str(tmp_path / "run"), "--steps", "1",
                       "--no-progress", *argv])
        err = capsys.readouterr().err
        assert status == 2, argv
        assert err.startswith("error:") and err.count("\n") == 1, err
        assert all(word in err for word in expected), (argv, err)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    import torch

    from srlib.data import save_image

    save_image(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "in.png")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('not finished')\n")
    assert main(["upscale", str(tmp_path / "in.png"), "--model", "bicubic", "--scale", "2",
                 "-o", str(tmp_path / "o.png"), "--plugin", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "broken.py failed to import (RuntimeError: not finished)" in err
    assert not (tmp_path / "o.png").exists()


# -- degradations (BD, DN) -------------------------------------------------------------------------


def test_eval_bd_reproduces_dlsn_table_4_bicubic_row_on_set5(tmp_path):
    out = tmp_path / "bd.json"
    assert main(["eval", "--model", "bicubic", "--scale", "3", "--degradation", "bd", "--dataset", "Set5",
                 "--json", str(out), "--no-progress"]) == 0
    scores = json.loads(out.read_text())["Set5"]
    assert abs(scores["psnr"] - 28.78) <= 0.02 and abs(scores["ssim"] - 0.8308) <= 0.001, scores


def test_eval_and_train_parse_the_degradation_flags():
    from srlib.cli import _degradation, build_parser, train_config_from_args
    from srlib.data.degrade import Degradation

    parser = build_parser()
    base = ["eval", "--model", "bicubic", "--scale", "3", "--dataset", "Set5"]
    args = parser.parse_args(base)
    assert args.degradation is None and args.noise is None and _degradation(args) == Degradation("bicubic")
    args = parser.parse_args([*base, "--degradation", "dn", "--noise", "15"])
    assert args.degradation == "dn" and args.noise == 15.0 and _degradation(args).key == "dn_s15"
    assert _degradation(parser.parse_args([*base, "--degradation", "bd"])) == Degradation("bd")
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--degradation", "gaussian"])

    train = ["train", "--preset", "smoke", "--out", "unused"]
    config = train_config_from_args(parser.parse_args(train))
    assert (config.degradation, config.noise_sigma) == ("bicubic", None)
    config = train_config_from_args(parser.parse_args([*train, "--scale", "3", "--degradation", "bd"]))
    assert (config.degradation, config.noise_sigma) == ("bd", None) and config.to_dict()["degradation"] == "bd"
    config = train_config_from_args(parser.parse_args([*train, "--degradation", "dn", "--noise", "10"]))
    assert (config.degradation, config.noise_sigma) == ("dn", 10.0)
    assert config.degradation_spec() == Degradation("dn", 10.0)


def test_eval_of_a_checkpoint_defaults_to_the_degradation_it_was_trained_with(tmp_path):
    """A BD-trained checkpoint is scored on BD input unless --degradation says otherwise."""
    from srlib.checkpoint import checkpoint_payload, save_checkpoint
    from srlib.cli import _checkpoint_degradation
    from srlib.models import build_model
    from srlib.train import preset_config

    model = build_model("edsr_baseline", 3, n_feats=8, n_blocks=1)
    config = preset_config("smoke", scale=3, degradation="bd").to_dict()
    path = save_checkpoint(tmp_path / "bd.pt", checkpoint_payload(model, config=config))
    assert _checkpoint_degradation(path) == ("bd", None)
    plain = save_checkpoint(tmp_path / "plain.pt", checkpoint_payload(model))
    assert _checkpoint_degradation(plain) == ("bicubic", None)


@pytest.mark.parametrize("command", ["eval", "train"])
@pytest.mark.parametrize("flags,expected", [
    (["--scale", "2", "--degradation", "bd"], ["x3 only", "x2"]),
    (["--scale", "3", "--degradation", "dn", "--noise", "-1"], ["--noise", "-1"]),
    (["--scale", "3", "--degradation", "dn"], ["--noise SIGMA"]),
    (["--scale", "3", "--noise", "5"], ["--noise 5", "--degradation dn"]),
])
def test_bad_degradation_flags_are_one_clear_error(tmp_path, capsys, command, flags, expected):
    if command == "eval":
        argv = ["eval", "--model", "bicubic", "--dataset", "Set5", "--no-progress", *flags]
    else:
        argv = ["train", "--preset", "smoke", "--out", str(tmp_path / "run"), "--no-progress", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert all(word in err for word in expected), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_degradation_is_in_the_config_but_not_in_the_architecture(tmp_path):
    from srlib.train import (
        TrainConfig,
        TrainingError,
        _check_resume_compatible,
        preset_config,
        same_training_config,
    )

    bicubic = preset_config("smoke", scale=3)
    blurred = preset_config("smoke", scale=3, degradation="bd")
    old = bicubic.to_dict()
    del old["degradation"], old["noise_sigma"]  # a configuration saved before the fields existed
    assert TrainConfig.from_dict(old) == bicubic
    assert same_training_config(old, bicubic) and not same_training_config(old, blurred)
    assert not same_training_config(preset_config("smoke", degradation="dn", noise_sigma=10).to_dict(),
                                    preset_config("smoke", degradation="dn", noise_sigma=15))
    _check_resume_compatible(old, bicubic, tmp_path / "checkpoint.pt")
    _check_resume_compatible(blurred.to_dict(), blurred, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingError, match="degradation='bd'.*degradation='bicubic'"):
        _check_resume_compatible(blurred.to_dict(), bicubic, tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingError, match="noise_sigma=10.0.*noise_sigma=15"):
        _check_resume_compatible(preset_config("smoke", degradation="dn", noise_sigma=10.0).to_dict(),
                                 preset_config("smoke", degradation="dn", noise_sigma=15.0),
                                 tmp_path / "checkpoint.pt")
