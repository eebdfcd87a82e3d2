"""Loading from local folders: every layout a user has, and a clear error for each bad input."""

import json

import numpy as np
import pytest
import torch
from frameprompt.errors import CorruptWeightsError, IncompatibleModelError, ModelNotFoundError
from frameprompt.inference.pipeline import FramePromptPipeline
from frameprompt.loading import load_lora, load_pipeline
from frameprompt.testing import TINY_TRANSFORMER_CLIP, demo_inputs, tiny_components, tiny_wan_i2v_dir
from frameprompt.training.lora import LORA_TARGET_MODULES, add_lora, save_lora
from safetensors.torch import save_file


def _frames(pipe, n=4, steps=2):
    pipe.set_progress_bar_config(disable=True)
    ref, poses = demo_inputs(n, 32)
    return pipe(
        ref, poses, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np"
    ).frames


def test_saved_frameprompt_pipeline_loads_in_float32_on_cpu(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir)
    assert isinstance(pipe, FramePromptPipeline)
    assert pipe.transformer.dtype == torch.float32 and pipe.device.type == "cpu"
    assert _frames(pipe).shape == (1, 4, 32, 32, 3)


def test_dtype_can_be_overridden(tiny_model_dir):
    pipe = load_pipeline(tiny_model_dir, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32


def test_diffusers_wan_i2v_layout_loads(tmp_path):
    path = tiny_wan_i2v_dir(tmp_path / "Wan2.1-I2V")
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "WanImageToVideoPipeline"
    pipe = load_pipeline(path)
    assert pipe.image_encoder is not None and pipe.transformer.config.in_channels == 36
    assert _frames(pipe).shape == (1, 4, 32, 32, 3)


# diffusers' converter maps original Wan names to diffusers names; this is its inverse, applied in order,
# to write a tiny checkpoint in the original (Fun-InP) layout.
_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn2", "cross_attn"),
    ("attn1", "self_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("norm2", "norm__swap"),
    ("norm3", "norm2"),
    ("norm__swap", "norm3"),
    ("proj_out", "head.head"),
]


def _to_original(key):
    if key == "scale_shift_table":
        return "head.modulation"
    for new, old in _TO_ORIGINAL:
        key = key.replace(new, old)
    return key.replace("scale_shift_table", "modulation")


def test_original_fun_inp_layout_loads_with_an_explicit_config(tmp_path):
    parts = tiny_components(clip=True)
    reference = parts["transformer"]
    path = tmp_path / "Wan2.1-Fun-1.3B-InP"
    path.mkdir()
    state = {_to_original(k): v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(path / "diffusion_pytorch_model.safetensors"))
    cfg = TINY_TRANSFORMER_CLIP
    (path / "config.json").write_text(
        json.dumps(
            {
                "_class_name": "WanModel",
                "model_type": "i2v",
                "in_dim": 36,
                "out_dim": 16,
                "dim": cfg["num_attention_heads"] * cfg["attention_head_dim"],
                "num_heads": cfg["num_attention_heads"],
                "ffn_dim": cfg["ffn_dim"],
                "num_layers": cfg["num_layers"],
                "freq_dim": cfg["freq_dim"],
                "eps": 1e-6,
            }
        )
    )
    parts["vae"].save_pretrained(path / "vae")
    parts["image_encoder"].save_pretrained(path / "image_encoder")
    parts["image_processor"].save_pretrained(path / "image_processor")
    pipe = load_pipeline(path)
    assert pipe.transformer.config.in_channels == 36  # not misread as T2V
    for name, tensor in reference.state_dict().items():
        assert torch.equal(pipe.transformer.state_dict()[name], tensor), name


def test_missing_folder_says_what_to_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match="Wan2.1-I2V-14B-480P-Diffusers"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a Wan2.1 checkpoint"):
        load_pipeline(tmp_path / "empty")


def test_t2v_checkpoint_is_refused(tmp_path):
    parts = tiny_components()
    from diffusers import WanTransformer3DModel

    parts["transformer"] = WanTransformer3DModel(**{**parts["transformer"].config, "in_channels": 16})
    FramePromptPipeline(**parts).save_pretrained(tmp_path / "t2v")
    with pytest.raises(IncompatibleModelError, match="text-to-video"):
        load_pipeline(tmp_path / "t2v")


def test_corrupt_safetensors_is_named(tmp_path):
    path = tiny_wan_i2v_dir(tmp_path / "model")
    weights = next((path / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptWeightsError, match="transformer"):
        load_pipeline(path)


def test_lora_covers_attention_and_ffn_and_round_trips(tiny_model_dir, tmp_path):
    pipe = load_pipeline(tiny_model_dir)
    transformer = pipe.transformer
    add_lora(transformer, rank=4, alpha=4)
    wrapped = {name for name, module in transformer.named_modules() if hasattr(module, "lora_A")}
    for block in range(transformer.config.num_layers):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                assert f"blocks.{block}.{attn}.{proj}" in wrapped
        assert f"blocks.{block}.ffn.net.0.proj" in wrapped and f"blocks.{block}.ffn.net.2" in wrapped
    assert len(wrapped) == transformer.config.num_layers * (2 * 4 + 2) and len(LORA_TARGET_MODULES) == 6
    torch.manual_seed(1)
    for name, param in transformer.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    trained = _frames(pipe)
    lora_file = save_lora(transformer, tmp_path / "lora")

    fresh = load_pipeline(tiny_model_dir)
    base = _frames(fresh)
    load_lora(fresh, lora_file)
    np.testing.assert_allclose(_frames(fresh), trained, atol=1e-5)
    assert not np.allclose(base, trained, atol=1e-3)
    again = load_pipeline(tiny_model_dir, lora=lora_file)
    np.testing.assert_allclose(_frames(again), trained, atol=1e-5)


def test_lora_for_another_base_is_refused(tiny_model_dir, tmp_path):
    from diffusers import WanTransformer3DModel

    other = WanTransformer3DModel(**{**tiny_components()["transformer"].config, "attention_head_dim": 6})
    add_lora(other, rank=4, alpha=4)
    lora_file = save_lora(other, tmp_path / "other")
    with pytest.raises(IncompatibleModelError, match="does not fit"):
        load_pipeline(tiny_model_dir, lora=lora_file)
