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


def test_srlib_train_and_super_resolve_refuse_a_reference_model_clearly(tmp_path):
    from srlib.evaluate import super_resolve
    from srlib.train import TrainingError, preset_config, train

    with pytest.raises(ValueError, match="reference-based model"):
        super_resolve(build_model("amrsr", 4), torch.rand(1, 3, 8, 8))
    with pytest.raises(TrainingError, match="reference-based model"):
        train(preset_config("smoke", model="amrsr", scale=4), tmp_path / "run")
