"""lora: LoRA (Hu et al., 2021), DoRA (Liu et al., 2024), PiSSA (Meng et al., 2024) and QLoRA's NF4
(Dettmers et al., 2023) for any PyTorch model."""

from lora.adapter_config import read_adapter_config
from lora.adapter_io import load_adapter, lora_state_dict, save_adapter
from lora.adapters import delete_adapter, list_adapters, set_adapter
from lora.combine import add_weighted_adapter
from lora.dora import dora_forward, dora_magnitude_init, dora_scale, dora_unmerge_weight, dora_weight, weight_norm
from lora.embedding import LoRAEmbedding
from lora.files import atomic_write
from lora.init import INIT_METHODS, gaussian_init, lora_init, pissa_init, pissa_quantization_error
from lora.inject import (
    active_adapters,
    apply_lora,
    disable_lora,
    lora_embeddings,
    lora_layers,
    mark_only_lora_trainable,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from lora.layer import LoRAAdapter, LoRALinear, lora_scaling
from lora.nf4 import (
    NF4Weight,
    bits_per_parameter,
    block_absmax,
    dequantize_nf4,
    double_dequantize,
    double_quantize,
    nbytes,
    nf4_codebook,
    pack_nibbles,
    quantize_nf4,
    unpack_nibbles,
)
from lora.nf4_linear import LinearNF4, model_weight_bytes, quantize_model
from lora.params import count_parameters, lora_plus_param_groups, trainable_summary
from lora.qmerge import merge_and_requantize
from lora.safetensors_io import load_file, save_file
from lora.targets import layer_rank_alpha, resolve_rank_alpha, select_layers
from lora.tied import tied_weight_groups, tied_with, untie_weight

__all__ = ["atomic_write", "load_file", "save_file"]
__all__ += ["LoRALinear", "lora_scaling", "apply_lora", "disable_lora", "lora_layers", "mark_only_lora_trainable",
            "merge_and_unload", "merge_lora", "unmerge_lora", "count_parameters", "lora_plus_param_groups",
            "trainable_summary", "load_adapter", "lora_state_dict", "read_adapter_config", "save_adapter"]
__all__ += ["LoRAAdapter", "active_adapters", "add_weighted_adapter", "delete_adapter", "list_adapters", "set_adapter"]
__all__ += ["NF4Weight", "bits_per_parameter", "block_absmax", "dequantize_nf4", "double_dequantize", "double_quantize",
            "nbytes", "nf4_codebook", "pack_nibbles", "quantize_nf4", "unpack_nibbles", "LinearNF4",
            "model_weight_bytes", "quantize_model", "merge_and_requantize"]
__all__ += ["dora_forward", "dora_magnitude_init", "dora_scale", "dora_unmerge_weight", "dora_weight", "weight_norm",
            "LoRAEmbedding", "lora_embeddings", "INIT_METHODS", "gaussian_init", "lora_init", "pissa_init",
            "pissa_quantization_error", "layer_rank_alpha", "resolve_rank_alpha", "select_layers",
            "tied_weight_groups", "tied_with", "untie_weight"]
