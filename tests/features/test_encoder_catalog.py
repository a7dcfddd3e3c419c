"""The encoder registry without torch (issue 19): the built-in configs are data (``_catalog``), their builders
lazy references, so naming, listing and reading encoders never imports a model library; building one does.
What the configs promise about the models is tested where the models are built (test_every_encoder.py,
test_encoders_timm.py, test_layouts_trident.py), through these same lazy builders.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from slidescope.features.encoders import ImportRef, create_encoder, get_encoder_config, list_encoders
from slidescope.features.encoders import _catalog, _registry, register_encoder

MODEL_STACK = ("torch", "timm", "transformers", "open_clip", "numpy")


def test_listing_and_reading_configs_imports_no_model_stack() -> None:
    code = (
        "import sys\n"
        "from slidescope.features import get_encoder_config, list_encoders, EncoderConfig\n"
        "names = list_encoders()\n"
        "configs = [get_encoder_config(n) for n in names]\n"
        "assert all(isinstance(c, EncoderConfig) for c in configs) and 'uni' in names\n"
        f"print(','.join(m for m in {MODEL_STACK!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_every_builtin_is_registered_from_the_catalog_with_a_builder_that_imports() -> None:
    names = list_encoders()
    for config, ref in _catalog.BUILTINS:
        assert config.name in names
        registered, builder = _registry._REGISTRY[config.name]
        assert registered is config
        assert isinstance(builder, _registry.LazyBuilder) and builder.ref == ref
        assert callable(ref.load())  # the family module has the builder the catalog names
    assert len({c.name for c, _ in _catalog.BUILTINS}) == len(_catalog.BUILTINS)


def test_a_builder_given_as_a_string_is_imported_when_built() -> None:
    list_encoders()
    config = dataclasses.replace(get_encoder_config("he-descriptor"), name="lazy-descriptor")
    register_encoder(config, "slidescope.features.encoders.he_descriptor:HEDescriptor")
    try:
        assert get_encoder_config("lazy-descriptor") is config
        tiles = torch.randint(
            0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        out = create_encoder("lazy-descriptor", device="cpu")(tiles)
        torch.testing.assert_close(out, create_encoder("he-descriptor", device="cpu")(tiles))
    finally:
        _registry._REGISTRY.pop("lazy-descriptor", None)


def test_import_refs() -> None:
    assert ImportRef("collections:OrderedDict").load() is __import__("collections").OrderedDict
    assert ImportRef("os:path.join").load() is __import__("os").path.join
    for bad in ("collections", "collections:", ":OrderedDict"):
        with pytest.raises(ValueError, match="package.module:attribute"):
            ImportRef(bad)
    virchow = get_encoder_config("virchow2")
    assert isinstance(virchow.kwargs["mlp_layer"], ImportRef)
    # provenance names the class itself, as when the config held it
    assert virchow.to_dict()["kwargs"]["act_layer"] == "SiLU"
