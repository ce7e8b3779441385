"""The compact AMRSR generator (srlib.models.amrsr): shapes, the baseline, the reference maps, the extractors."""

from __future__ import annotations

import pytest
import torch

from srlib.imresize import imresize
from srlib.models import available_models, build_model, count_parameters, model_kind
from srlib.models.amrsr import TextureExtractor


def _inputs(seed=0, lr_size=(12, 14), ref_sizes=((48, 60), (50, 44))):
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(2, 3, *lr_size, generator=g)
    return lr, [torch.rand(2, 3, *s, generator=g) for s in ref_sizes]


def test_registered_as_a_reference_model_at_x4():
    assert model_kind("amrsr") == "reference" and "amrsr" in available_models("reference")
    assert "amrsr" not in available_models("single_image")
    with pytest.raises(ValueError, match="supports scales x4"):
        build_model("amrsr", 2)


@pytest.mark.parametrize("extractor", ["learned", "patches"])
def test_any_size_and_references_of_other_sizes(extractor):
    lr, references = _inputs()
    model = build_model("amrsr", 4, extractor=extractor)
    sr, details = model(lr, references, return_details=True)
    assert sr.shape == (2, 3, 48, 56)
    o3, o2, o1 = details["maps"]
    assert o3.shape[-2:] == (12, 14) and o2.shape[-2:] == (24, 28) and o1.shape[-2:] == (48, 56)
    assert details["match"].weight.shape == (2, 1, 12, 14)


def test_the_baseline_is_the_same_generator_without_references():
    reference_model = build_model("amrsr", 4)
    baseline = build_model("amrsr", 4, use_references=False)
    names = {k for k in baseline.state_dict()}
    assert not any(k.startswith("extractor") for k in names)
    assert count_parameters(baseline) < count_parameters(reference_model)
    lr, references = _inputs()
    assert baseline(lr).shape == (2, 3, 48, 56)
    with pytest.raises(ValueError, match="single-image baseline"):
        baseline(lr, references)
    with pytest.raises(ValueError, match="pass references"):
        reference_model(lr)


def test_a_reference_equal_to_the_target_transfers_the_target_itself():
    """Fixed patches, reference = HR target: every inner position matches itself and O_1 is the HR image."""
    g = torch.Generator().manual_seed(1)
    hr = imresize(torch.rand(1, 3, 12, 12, generator=g), scale=4).clamp(0, 1)  # smooth (1, 3, 48, 48)
    hr = hr + 0.05 * torch.rand(hr.shape, generator=g)  # and textured, so that patches are distinct
    lr = imresize(hr, scale=0.25)  # (1, 3, 12, 12)
    model = build_model("amrsr", 4, extractor="patches")
    _, details = model(lr, [hr], return_details=True)
    match = details["match"]
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(match.weight[inner], torch.ones_like(match.weight[inner]), rtol=0, atol=1e-4)
    o1 = details["maps"][2] / torch.nn.functional.interpolate(match.weight, scale_factor=4)  # undo the W gate
    torch.testing.assert_close(o1[..., 12:-12, 12:-12], hr[..., 12:-12, 12:-12], rtol=0, atol=1e-4)


def test_gradients_reach_the_learned_extractor_and_the_generator():
    lr, references = _inputs(lr_size=(8, 8), ref_sizes=((32, 32),))
    model = build_model("amrsr", 4)
    model(lr, references).square().mean().backward()
    assert model.extractor.level1[0].weight.grad.abs().sum() > 0
    assert model.head[0].weight.grad.abs().sum() > 0


def test_vgg19_extractor_reads_a_weights_file(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path / "vgg19.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)  # random weights, the right layout
    extractor = TextureExtractor("vgg19", vgg_weights=str(path))
    levels = extractor(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in levels] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert not any(p.requires_grad for p in extractor.parameters())


def test_vgg19_without_weights_is_a_clear_error():
    with pytest.raises(ValueError, match="needs vgg_weights"):
        TextureExtractor("vgg19")


def test_super_resolve_refuses_a_reference_model_clearly():
    from srlib.evaluate import super_resolve

    with pytest.raises(ValueError, match="reference-based model"):
        super_resolve(build_model("amrsr", 4), torch.rand(1, 3, 8, 8))


def _tiny_reference_checkpoint(tmp_path):
    from srlib.checkpoint import checkpoint_payload, save_checkpoint

    torch.manual_seed(0)
    model = build_model("amrsr", 4, extractor="patches", n_feats=8, n_blocks=(1, 1, 1), head_blocks=1)
    return model, save_checkpoint(tmp_path / "amrsr.pt", checkpoint_payload(model))


def test_evaluate_references_scores_groups_with_k_references_and_the_wrong_scene_control(tmp_path):
    from srlib.evaluate import evaluate_references

    model, _ = _tiny_reference_checkpoint(tmp_path)
    one = evaluate_references(model, "MultiViewRef_mini", 4, n_refs=1, progress=False)
    assert one["n_refs"] == 1 and [g["scene"] for g in one["groups"]] == ["fountain-P11", "Herz-Jesus-P8", "llff_fern"]
    assert one["psnr"] == pytest.approx(sum(g["psnr"] for g in one["groups"]) / 3)
    two = evaluate_references(model, "MultiViewRef_mini", 4, n_refs=2, progress=False)
    wrong = evaluate_references(model, "MultiViewRef_mini", 4, n_refs=1, progress=False, wrong_scene=True)
    assert two["groups"] != one["groups"] and wrong["groups"] != one["groups"] and wrong["wrong_scene"]
    baseline = build_model("amrsr", 4, use_references=False, n_feats=8, n_blocks=(1, 1, 1), head_blocks=1)
    assert len(evaluate_references(baseline, "MultiViewRef_mini", 4, progress=False)["groups"]) == 3
    with pytest.raises(ValueError, match="n_refs=6"):
        evaluate_references(model, "MultiViewRef_mini", 4, n_refs=6, progress=False)


def test_cli_eval_and_upscale_with_references(tmp_path, capsys):
    import json

    from srlib.cli import main
    from srlib.data import find_reference_dataset, load_image, save_image

    _, checkpoint = _tiny_reference_checkpoint(tmp_path)
    out = tmp_path / "scores.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--scale", "4", "--dataset", "MultiViewRef_mini",
                 "--n-refs", "1", "--n-refs", "2", "--no-progress", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert set(scores) == {"MultiViewRef_mini refs=1", "MultiViewRef_mini refs=2"}
    assert "mean" in capsys.readouterr().out
    folder = find_reference_dataset("MultiViewRef_mini")
    target = load_image(folder / "000_0.png")[:, :48, :64]
    save_image(target, tmp_path / "t.png")
    assert main(["upscale", str(tmp_path / "t.png"), "--checkpoint", str(checkpoint), "--reference",
                 str(folder / "000_1.png"), "-o", str(tmp_path / "sr.png")]) == 0
    assert load_image(tmp_path / "sr.png").shape == (3, 192, 256)
    assert main(["upscale", str(tmp_path / "t.png"), "--checkpoint", str(checkpoint), "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "pass one or more --reference" in capsys.readouterr().err


def test_bad_references_get_one_clear_error_and_other_sizes_are_fine():
    """Zero references are refused (no silent single-image fallback); gray / RGBA tensors and tiny crops are errors."""
    lr, references = _inputs(lr_size=(8, 8))
    model = build_model("amrsr", 4, extractor="patches")
    with pytest.raises(ValueError, match="pass references"):
        model(lr, [])
    for bad in (references[0][:, :1], torch.cat([references[0], references[0][:, :1]], 1), references[0][..., :8, :]):
        with pytest.raises(ValueError, match=r"RGB batch \(N, 3, H_m, W_m\) like lr with H_m, W_m >= 12"):
            model(lr, [bad])
    wide = torch.rand(2, 3, 20, 100)  # another size and aspect than the target: fine
    assert model(lr, [wide, references[1]]).shape == (2, 3, 32, 32)


def test_cli_upscale_reads_gray_and_rgba_reference_files_as_rgb(tmp_path):
    import warnings

    import numpy as np
    from PIL import Image

    from srlib.cli import main

    _, checkpoint = _tiny_reference_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    Image.fromarray(rng.integers(0, 256, (40, 52), dtype=np.uint8), "L").save(tmp_path / "gray.png")
    rgba = rng.integers(0, 256, (44, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["upscale", str(tmp_path / "t.png"), "--checkpoint", str(checkpoint), "--reference",
                     str(tmp_path / "gray.png"), "--reference", str(tmp_path / "rgba.png"), "-o",
                     str(tmp_path / "sr.png")]) == 0
    assert any("alpha" in str(w.message) for w in caught)  # the RGBA file's transparency is dropped, said so


def test_cli_eval_against_a_baseline_adds_bicubic_the_baseline_and_paired_gains(tmp_path, capsys):
    import json

    from srlib.checkpoint import checkpoint_payload, save_checkpoint
    from srlib.cli import main

    _, checkpoint = _tiny_reference_checkpoint(tmp_path)
    torch.manual_seed(1)
    single = build_model("amrsr", 4, n_feats=8, n_blocks=(1, 1, 1), head_blocks=1, use_references=False)
    baseline = save_checkpoint(tmp_path / "single.pt", checkpoint_payload(single))
    out = tmp_path / "table.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--baseline", str(baseline), "--scale", "4", "--dataset",
                 "MultiViewRef_mini", "--n-refs", "1", "--wrong-scene", "--no-progress", "--json", str(out)]) == 0
    table = json.loads(out.read_text())["comparison"]["MultiViewRef_mini"]
    assert list(table) == ["bicubic", "baseline", "amrsr.pt refs=1", "amrsr.pt refs=1 wrong-scene"]
    assert table["baseline"]["gain_over_baseline"] is None
    gain = table["amrsr.pt refs=1"]["gain_over_baseline"]
    assert gain["low"] <= gain["mean"] <= gain["high"] and gain["groups"] == 3
    assert gain["mean"] == pytest.approx(table["amrsr.pt refs=1"]["psnr"] - table["baseline"]["psnr"])
    assert "95% bootstrap interval" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(checkpoint), "--baseline", str(checkpoint), "--scale", "4", "--dataset",
                 "MultiViewRef_mini", "--no-progress"]) == 2
    assert "is a reference-based model; give a single-image checkpoint" in capsys.readouterr().err
