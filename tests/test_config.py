"""EditConfig's parts: the inversion cache is keyed by exactly the settings an inversion depends on, the flat
settings translator that the CLI, the browser editor and sweep files share, and attention-swap layer selection."""
import dataclasses

import numpy as np
import pytest
import torch

from regiondrag.attention_swap import AttentionSwap
from regiondrag.config import REFERENCE, ConfigError, EditConfig
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.regions import PointPairs

PHOTO = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
REGIONS = [PointPairs([[20, 20]], [[36, 28]], radius=8)]
CHANGED = {"steps": 10, "start_t": 0.7, "end_t": 0.4, "noise_scale": 0.5, "seed": 7, "method": "cp_then_encode",
           "ip_scale": 0.0, "grid": "consistent", "paste_schedule": "single_step",
           "attention_swap": AttentionSwap(enabled=False), "point_fraction": 0.5, "max_side": 32}


def inversion_of(pipe: RegionDragPipeline, config: EditConfig):
    pipe.clear_cache()
    from PIL import Image
    work = pipe.working_photo(Image.fromarray(PHOTO), config.max_side)
    inv = pipe.invert(work, "", config, progress=False)
    return inv.latents, inv.noises, [t for step in sorted(inv.kv._kv) for kv in inv.kv._kv[step] for t in kv]


def test_every_field_is_covered():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(EditConfig)}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_a_setting_outside_config_inversion_leaves_the_inversion_as_it_is(models, name):
    """The cache reuses an inversion whenever config.inversion agrees: a setting left out of it that did change the
    inversion would silently reuse a stale one. So every unmarked setting must leave the inversion bit-identical,
    and every marked one is in the key."""
    pipe = RegionDragPipeline(models[0], models[1], lambda prompt: models[2])
    base = REFERENCE.replace(max_side=None, ip_scale=0.0)
    changed = base.replace(**{name: CHANGED[name]})
    if changed.inversion == base.inversion:
        for a, b in zip(inversion_of(pipe, base), inversion_of(pipe, changed)):
            assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), name
    else:
        assert name in dict(changed.inversion.items)


def test_an_edit_with_another_denoising_setting_reuses_the_cached_inversion(models):
    pipe = RegionDragPipeline(models[0], models[1], lambda prompt: models[2])
    pipe.edit(PHOTO, REGIONS, max_side=None, progress=False)
    cached = pipe.cached_inversion()
    pipe.edit(PHOTO, REGIONS, max_side=None, noise_scale=0.5, progress=False)
    assert pipe.cached_inversion() is cached
    pipe.edit(PHOTO, REGIONS, max_side=None, seed=3, progress=False)
    assert pipe.cached_inversion() is not cached


def test_flat_settings_are_typed_and_checked_once():
    config = REFERENCE.with_settings({"steps": 25.0, "start_t": "0.6", "seed": 3.0, "attention_swap": False,
                                      "max_side": 256.0})
    assert (config.steps, config.start_t, config.seed, config.max_side) == (25, 0.6, 3, 256)
    assert type(config.steps) is int and config.attention_swap == AttentionSwap(enabled=False)
    swap = REFERENCE.with_settings({"swap_layers": "up.*, mid.0, 3", "swap_steps": [0, 1]}).attention_swap
    assert swap == AttentionSwap(layers=frozenset({"up.*", "mid.0", 3}), steps=frozenset({0, 1}))
    for bad, field in (({"steps": 2.5}, "steps"), ({"steps": "ten"}, "steps"), ({"start_t": True}, "start_t"),
                       ({"strat_t": 0.5}, "strat_t"), ({"attention_swap": "maybe"}, "attention_swap")):
        with pytest.raises(ConfigError) as e:
            REFERENCE.with_settings(bad)
        assert e.value.field == field


def test_a_layer_pattern_swaps_the_same_layers_as_their_indices(models):
    """AttentionSwap(layers={"up.*"}) and the indices of the up layers: the same edit, bit for bit; and not the
    edit that swaps every layer."""
    pipe = RegionDragPipeline(models[0], models[1], lambda prompt: models[2])
    names = pipe.unet.self_attention_layer_names()
    up = frozenset(i for i, n in enumerate(names) if n.startswith("up."))
    assert 0 < len(up) < len(names)
    by_name = pipe.edit(PHOTO, REGIONS, max_side=None, progress=False, attention_swap=AttentionSwap(layers={"up.*"}))
    by_index = pipe.edit(PHOTO, REGIONS, max_side=None, progress=False, attention_swap=AttentionSwap(layers=up))
    everywhere = pipe.edit(PHOTO, REGIONS, max_side=None, progress=False)
    assert np.array_equal(np.asarray(by_name.image), np.asarray(by_index.image))
    assert not np.array_equal(np.asarray(by_name.image), np.asarray(everywhere.image))
