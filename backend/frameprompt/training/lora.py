"""LoRA adapters on the Wan transformer, as in the paper: q, k, v, o and both FFN linears.

Files are written in diffusers' format (`transformer.`-prefixed keys, the adapter config in the
safetensors metadata), so `load_lora_weights` of diffusers' Wan pipelines, `frameprompt generate
--lora` and `frameprompt serve` all load them, also together with other LoRAs (`loading.load_loras`).
"""

from __future__ import annotations

import os
from pathlib import Path

from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
from peft import LoraConfig, get_peft_model_state_dict

# attn1 (self) and attn2 (text/image cross) q, k, v, o, plus ffn.net.0.proj and ffn.net.2 in every block.
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
LORA_FILE = "pytorch_lora_weights.safetensors"


def add_lora(
    transformer: WanTransformer3DModel, rank: int = 128, alpha: float = 128, name: str = "default"
) -> None:
    """Attach a fresh trainable LoRA adapter (B initialised to zero, so the model is unchanged)."""
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=LORA_TARGET_MODULES)
    transformer.add_adapter(config, adapter_name=name)


def save_lora(
    transformer: WanTransformer3DModel, directory: str | os.PathLike, name: str = "default"
) -> Path:
    """Write the adapter to `directory/pytorch_lora_weights.safetensors` and return that path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(transformer, adapter_name=name)
    # The adapter's config (rank, alpha, targets) goes into the file's metadata: without it diffusers'
    # loader assumes alpha == rank and a LoRA trained with another alpha loads at the wrong strength.
    WanImageToVideoPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=transformer.peft_config[name].to_dict(),
        weight_name=LORA_FILE,
    )
    return directory / LORA_FILE
