import pytest
import torch

from models import ImageModel, ModelEntry, Registry, catalog, default_registry
from models.registry import NoParams, UnknownModelError
from models.resample import Identity


def test_duplicate_names_refused():
    reg = Registry()
    entry = ModelEntry("x", "passthrough", "", NoParams, lambda _: ImageModel("x", Identity(), 1, 3, True))
    reg.register(entry)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(entry)


def test_unknown_name_suggests():
    with pytest.raises(UnknownModelError, match="did you mean 'lanczos'"):
        default_registry().get("lanczoss")


def test_registries_are_independent():
    a, b = default_registry(), default_registry()
    a.register(ModelEntry("extra", "t", "", NoParams, lambda _: None))
    assert "extra" in a.names() and "extra" not in b.names()


def _buildable_without_params() -> list[str]:
    reg = default_registry()  # `checkpoint` needs a uri: tests/models/test_checkpoint.py runs it
    fixed_size = {
        name for name, *_ in catalog.ZEROSHOT_ENTRIES
    }  # one input size per prior: tests/models/test_zeroshot.py runs them
    return [
        n
        for n in reg.names()
        if n not in fixed_size
        and not any(f.is_required() for f in reg.get(n).params.model_fields.values())
        and reg.get(n).task != "generation"  # noise in, images out: tests/models/test_{ddpm_generation,gan,vae}.py
        and reg.get(n).task != "captioning"  # images in, text out: tests/models/test_caption_digits.py
    ]


@pytest.mark.parametrize("name", _buildable_without_params())
def test_every_model_runs_a_forward_pass(name):
    model = default_registry().build(name)
    x = torch.rand(2, model.channels + model.needs_mask, 12, 10)  # inpainting models: + the mask channel
    with torch.inference_mode():
        y = model.module(x)
    assert y.shape == (2, model.channels, *model.output_size(12, 10))
    assert torch.isfinite(y).all()
    assert model.weights_sha256 == (
        default_registry().get(name).weights.sha256 if default_registry().get(name).weights else None
    )


def test_scale_param_validated():
    with pytest.raises(Exception, match="greater than 0"):
        default_registry().build("bicubic", {"scale": 0})


def test_output_scale_known_before_the_model_is_built():
    reg = default_registry()
    assert reg.get("realesrgan-x4plus").output_scale({}) == 4
    assert reg.get("bicubic").output_scale({"scale": 3}) == 3
    assert reg.get("identity").output_scale({}) == 1
    assert reg.get("darkroom-denoise").output_scale({}) == 1
    assert reg.get("checkpoint").output_scale({"uri": "/nowhere.pth"}) is None  # spandrel reads it from the file
