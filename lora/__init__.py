"""lora: LoRA (Hu et al., 2021) and QLoRA's NF4 (Dettmers et al., 2023) for any PyTorch model."""

from lora.safetensors_io import atomic_write, load_file, save_file

__all__ = ["atomic_write", "load_file", "save_file"]
