"""Several LoRAs at once, in our format and in the public Wan LoRA key formats.

The files are built here with the key layouts of published Wan2.1 LoRAs (the I2V step-distillation
LoRAs use `diffusion_model.blocks.N.self_attn.q.lora_down.weight` / `lora_up` / `.alpha`; others use
`lora_A`/`lora_B`; musubi/kohya writes `lora_unet_blocks_N_self_attn_q.lora_down.weight`), loaded
through `load_pipeline`, and each adapted layer's output is compared with `scale * alpha/rank * up @ down`.
"""

from __future__ import annotations

import pytest
import torch
from frameprompt.errors import IncompatibleModelError, ModelNotFoundError
from frameprompt.loading import LoraSpec, load_pipeline, parse_lora_arg
from frameprompt.testing import TINY_TRANSFORMER_CLIP, tiny_pipeline_dir
from safetensors.torch import save_file

RANK, ALPHA = 4, 2.0
# original Wan module -> diffusers module, inside every block
WAN_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_model_dir(tmp_path_factory):
    return tiny_pipeline_dir(tmp_path_factory.mktemp("clip_model") / "model", clip=True)


def _shapes() -> dict[str, tuple[int, int]]:
    """(in, out) features of each diffusers module in a block of the tiny CLIP model."""
    dim = TINY_TRANSFORMER_CLIP["num_attention_heads"] * TINY_TRANSFORMER_CLIP["attention_head_dim"]
    ffn = TINY_TRANSFORMER_CLIP["ffn_dim"]
    return {m: ((dim, ffn) if m == "ffn.net.0.proj" else (ffn, dim) if m == "ffn.net.2" else (dim, dim)) for m in WAN_TO_DIFFUSERS.values()}  # fmt: skip


def wan_lora(path, style: str, seed: int) -> dict[str, torch.Tensor]:
    """Write a LoRA in an original/kohya key layout; return the expected weight delta per module."""
    g = torch.Generator().manual_seed(seed)
    tensors, expected = {}, {}
    for block in range(TINY_TRANSFORMER_CLIP["num_layers"]):
        for wan, ours in WAN_TO_DIFFUSERS.items():
            fan_in, fan_out = _shapes()[ours]
            down, up = torch.randn(RANK, fan_in, generator=g), torch.randn(fan_out, RANK, generator=g)
            if style == "musubi":
                key = "lora_unet_" + f"blocks.{block}.{wan}".replace(".", "_")
                names = (f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha")
            else:
                key = f"diffusion_model.blocks.{block}.{wan}"
                a, b = ("lora_A", "lora_B") if style == "lora_A" else ("lora_down", "lora_up")
                names = (f"{key}.{a}.weight", f"{key}.{b}.weight", f"{key}.alpha")
            tensors.update({names[0]: down, names[1]: up, names[2]: torch.tensor(ALPHA)})
            expected[f"blocks.{block}.{ours}"] = ALPHA / RANK * up @ down
    save_file(tensors, str(path))
    return expected


def our_lora(pipe_dir, out_dir, seed: int) -> dict[str, torch.Tensor]:
    """A LoRA in our trainer's format (rank 4, alpha 8) with random B; its expected deltas."""
    from frameprompt.training.lora import add_lora, save_lora

    pipe = load_pipeline(pipe_dir, device="cpu")
    add_lora(pipe.transformer, rank=RANK, alpha=8.0)
    g = torch.Generator().manual_seed(seed)
    expected = {}
    for name, module in pipe.transformer.named_modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            module.lora_B["default"].weight.data = torch.randn(
                module.lora_B["default"].weight.shape, generator=g
            )
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            expected[name] = 8.0 / RANK * b @ a
    return {"file": save_lora(pipe.transformer, out_dir), "deltas": expected}


def measured_delta(pipe, module_name: str) -> torch.Tensor:
    """The adapted layer's effective weight change, read through its forward."""
    layer = pipe.transformer.get_submodule(module_name)
    eye = torch.eye(layer.base_layer.in_features)
    with torch.no_grad():
        return (layer(eye) - layer.base_layer(eye)).T


@pytest.mark.parametrize("style", ["lora_down", "lora_A", "musubi"])
def test_wan_lora_key_formats_convert_to_the_same_deltas(clip_model_dir, tmp_path, style):
    file = tmp_path / f"wan_{style}.safetensors"
    expected = wan_lora(file, style, seed=1)
    pipe = load_pipeline(clip_model_dir, device="cpu", loras=[LoraSpec(file, 1.0)])
    assert set(expected) <= {n for n, m in pipe.transformer.named_modules() if hasattr(m, "base_layer")}
    for name, delta in expected.items():
        torch.testing.assert_close(measured_delta(pipe, name), delta, atol=1e-4, rtol=1e-4)


def test_two_loras_combine_with_their_own_strengths(clip_model_dir, tmp_path):
    character = our_lora(clip_model_dir, tmp_path / "character", seed=2)
    distill_file = tmp_path / "distill" / "Wan21_I2V_StepDistill_lora.safetensors"
    distill_file.parent.mkdir()
    distill = wan_lora(distill_file, "lora_down", seed=3)
    pipe = load_pipeline(
        clip_model_dir,
        device="cpu",
        loras=[LoraSpec(character["file"], 0.5), LoraSpec(distill_file, 1.25)],
    )
    for name in ("blocks.0.attn1.to_q", "blocks.1.ffn.net.2"):
        want = 0.5 * character["deltas"][name] + 1.25 * distill[name]
        torch.testing.assert_close(measured_delta(pipe, name), want, atol=1e-4, rtol=1e-4)
    # an adapter only in the distillation LoRA
    torch.testing.assert_close(
        measured_delta(pipe, "blocks.0.attn2.add_k_proj"), 1.25 * distill["blocks.0.attn2.add_k_proj"], atol=1e-4, rtol=1e-4
    )  # fmt: skip


def test_our_lora_keeps_its_alpha(clip_model_dir, tmp_path):
    """Saved with alpha 8 at rank 4: loaded back at strength 1 it must act with alpha/rank = 2."""
    character = our_lora(clip_model_dir, tmp_path / "character", seed=4)
    pipe = load_pipeline(clip_model_dir, device="cpu", loras=[LoraSpec(character["file"], 1.0)])
    name = "blocks.0.attn1.to_k"
    torch.testing.assert_close(measured_delta(pipe, name), character["deltas"][name], atol=1e-4, rtol=1e-4)


def test_same_file_names_from_two_folders_get_two_adapters(clip_model_dir, tmp_path):
    files = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        files.append(tmp_path / str(i) / "lora.safetensors")
        wan_lora(files[-1], "lora_A", seed=10 + i)
    pipe = load_pipeline(clip_model_dir, device="cpu", loras=[LoraSpec(f, 1.0) for f in files])
    assert set(pipe.get_active_adapters()) == {"lora", "lora_2"}


def test_parse_lora_arg():
    assert parse_lora_arg("a/b.safetensors") == LoraSpec(parse_lora_arg("a/b.safetensors").path, 1.0)
    spec = parse_lora_arg("a/b.safetensors:0.75")
    assert spec.path.name == "b.safetensors" and spec.scale == 0.75
    assert parse_lora_arg("C:/loras/x.safetensors").path.name == "x.safetensors"
    assert parse_lora_arg("weird:name.safetensors").scale == 1.0


def test_a_lora_for_another_model_is_refused_with_a_hint(clip_model_dir, tmp_path):
    file = tmp_path / "big.safetensors"
    save_file(
        {
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(RANK, 1536),
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(1536, RANK),
        },
        str(file),
    )
    with pytest.raises(IncompatibleModelError) as error:
        load_pipeline(clip_model_dir, device="cpu", loras=[LoraSpec(file, 1.0)])
    assert "big.safetensors" in str(error.value) and error.value.hint
    with pytest.raises(ModelNotFoundError):
        load_pipeline(clip_model_dir, device="cpu", loras=[LoraSpec(tmp_path / "missing.safetensors", 1.0)])


def test_generate_cli_combines_two_loras(clip_model_dir, tmp_path):
    from frameprompt.cli import main
    from frameprompt.media import write_frames
    from frameprompt.testing import demo_inputs

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    wan_lora(a, "lora_down", seed=5)
    wan_lora(b, "musubi", seed=6)
    reference, poses = demo_inputs(4, 32)
    reference.save(tmp_path / "ref.png")
    write_frames(poses, tmp_path / "skeleton")
    rc = main(
        ["generate", "--model", str(clip_model_dir), "--reference", str(tmp_path / "ref.png"),
         "--pose", str(tmp_path / "skeleton"), "--out", str(tmp_path / "out"), "--steps", "2",
         "--lora", f"{a}:0.5", "--lora", str(b), "--guidance", "1.0"]
    )  # fmt: skip
    assert rc == 0
    assert len(list((tmp_path / "out" / "frames").iterdir())) == 4
