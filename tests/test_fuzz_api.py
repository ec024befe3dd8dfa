"""The Python API's boundary: EditConfig refuses any setting out of range with a
ConfigError naming it, and RegionDragPipeline.edit refuses bad regions, mappings and masks
with the documented RegionError before any model runs."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regiondrag.attention_swap import AttentionSwap
from regiondrag.config import MAX_STEPS, REFERENCE, ConfigError, EditConfig
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.regions import RegionError
from sampling import TRAIN_TIMESTEPS

anything = st.one_of(st.integers(-10, 2**65), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.none(), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2))
FIELDS = {"steps": st.one_of(st.integers(0, 1200), anything), "start_t": st.one_of(st.floats(-0.5, 1.5), anything),
          "end_t": anything, "noise_scale": anything, "seed": anything, "method": anything, "ip_scale": anything,
          "grid": st.one_of(st.sampled_from(["reference", "consistent"]), anything), "paste_schedule": anything,
          "point_fraction": anything, "max_side": anything}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=4), st.data())
def test_fuzz_edit_config_is_valid_or_a_config_error(fields, data):
    changes = {name: data.draw(FIELDS[name]) for name in fields}
    try:
        config = REFERENCE.replace(**changes)
    except ConfigError as e:
        assert e.field in changes and "\n" not in str(e)
        return
    grid = config.timestep_grid()  # a config that constructs has a usable grid
    assert grid.inversion and grid.denoising
    assert all(0 <= t < TRAIN_TIMESTEPS for step in grid.inversion + grid.denoising for t in step)
    assert 2 <= config.steps <= MAX_STEPS and 0 < config.point_fraction <= 1 and math.isfinite(config.end_t)


@pytest.mark.parametrize("swap, fragment", [
    (AttentionSwap(steps=frozenset({10})), "attention_swap.steps"),
    (AttentionSwap(steps=frozenset({-1})), "attention_swap.steps"),
    (AttentionSwap(layers=[1.5]), "attention_swap.layers"),
    (AttentionSwap(layers=[" "]), "attention_swap.layers"),
    ("all", "must be an AttentionSwap")])
def test_attention_swap_selections_are_checked(swap, fragment):
    with pytest.raises(ConfigError, match=fragment):
        EditConfig(attention_swap=swap)


def test_attention_swap_layers_are_checked_against_the_unet():
    names = [f"layer{i}" for i in range(16)]
    config = EditConfig(attention_swap=AttentionSwap(layers=frozenset({15})))
    assert config.resolve_attention_swap(names).layers == {15}
    with pytest.raises(ConfigError, match=r"layer index 15 is not one of this UNet's self-attention layers 0 \.\.\. 14"):
        config.resolve_attention_swap(names[:15])
    with pytest.raises(ConfigError, match=r"'up\.\*' names none of this UNet's self-attention layers"):
        EditConfig(attention_swap=AttentionSwap(layers={"up.*"})).resolve_attention_swap(names)


@pytest.fixture(scope="module")
def pipe(tiny_sd_folder):
    return RegionDragPipeline.from_pretrained(str(tiny_sd_folder), device="cpu")


PHOTO = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(regions="regions.json"), RegionError, "regions must be a list of region pairs"),
    (dict(mapping=(np.array([[-1, 0]]), np.array([[1, 1]]))), RegionError, "is outside the 8x6 latent grid"),
    (dict(mapping=(np.array([[0, 0]]), np.array([[1, 1]])), mask=np.zeros((48, 64))), RegionError,
     "the editable mask is empty"),
    (dict(mapping=(np.array([[0, 0]]), np.array([[1, 1]])), attention_swap=AttentionSwap(layers=frozenset({99}))),
     ConfigError, "attention_swap.layers"),
    (dict(mapping=(np.array([[0, 0]]), np.array([[1, 1]])), start_t=1.0), ConfigError, "start_t=1 with steps=20"),
])
def test_edit_refuses_bad_api_input_with_the_documented_error(pipe, monkeypatch, kwargs, error, fragment):
    def no_model(*args, **kwargs):
        raise AssertionError("the model ran on bad input")

    monkeypatch.setattr(pipe, "invert", no_model)
    with pytest.raises(error, match=fragment):
        pipe.edit(PHOTO, max_side=None, progress=False, **kwargs)
