"""lora: LoRA (Hu et al., 2021), DoRA (Liu et al., 2024), PiSSA (Meng et al., 2024) and QLoRA's NF4
(Dettmers et al., 2023) for any PyTorch model.

The public names, each imported here from the module that defines it:

    settings        LoraConfig (lora.config)
    layers          LoRALinear (lora.layer), LoRAEmbedding (lora.embedding), LoRAAdapter (lora.adapter)
    into a model    apply_lora, plan_lora (lora.inject); lora_layers, lora_modules, mark_only_lora_trainable
                    (lora.model_layers)
    out of it       merge_lora, unmerge_lora, merge_and_unload, disable_lora (lora.merge)
    many adapters   set_adapter, delete_adapter, list_adapters (lora.switching); add_weighted_adapter (lora.combine)
    variants        lora.dora's functions, lora.init's initialisations
    files           save_adapter, load_adapter, lora_state_dict (lora.io.adapter_io); save_file, load_file
    counting        count_parameters, trainable_summary, lora_plus_param_groups (lora.params)
    QLoRA           lora.quant: quantize_nf4, dequantize_nf4, LinearNF4, quantize_model, merge_and_requantize
"""

from lora.adapter import LoRAAdapter, lora_scaling
from lora.combine import add_weighted_adapter
from lora.config import LoraConfig, read_adapter_config
from lora.dora import dora_forward, dora_magnitude_init, dora_scale, dora_unmerge_weight, dora_weight, weight_norm
from lora.embedding import LoRAEmbedding
from lora.init import INIT_METHODS, gaussian_init, lora_init, pissa_init
from lora.inject import apply_lora, plan_lora
from lora.io.adapter_io import load_adapter, lora_state_dict, save_adapter
from lora.io.files import atomic_write
from lora.io.safetensors_io import load_file, save_file
from lora.layer import LoRALinear
from lora.merge import disable_lora, merge_and_unload, merge_lora, unmerge_lora
from lora.model_layers import active_adapters, lora_embeddings, lora_layers, lora_modules, mark_only_lora_trainable
from lora.params import count_parameters, lora_plus_param_groups, trainable_summary
from lora.quant.double_quant import double_dequantize, double_quantize
from lora.quant.nf4 import (
    NF4Weight,
    bits_per_parameter,
    block_absmax,
    dequantize_nf4,
    nbytes,
    nf4_codebook,
    pack_nibbles,
    quantize_nf4,
    unpack_nibbles,
)
from lora.quant.nf4_linear import LinearNF4, model_weight_bytes, quantize_model
from lora.quant.qpissa import pissa_quantization_error
from lora.quant.requantize import merge_and_requantize
from lora.switching import delete_adapter, list_adapters, set_adapter
from lora.targets import select_layers
from lora.tied import tied_weight_groups, tied_with, untie_weight

__all__ = [
    "LoraConfig", "read_adapter_config", "LoRALinear", "LoRAEmbedding", "LoRAAdapter", "lora_scaling",
    "apply_lora", "plan_lora", "select_layers", "lora_layers", "lora_embeddings", "lora_modules", "active_adapters",
    "mark_only_lora_trainable", "merge_lora", "unmerge_lora", "merge_and_unload", "disable_lora",
    "set_adapter", "delete_adapter", "list_adapters", "add_weighted_adapter",
    "dora_forward", "dora_magnitude_init", "dora_scale", "dora_unmerge_weight", "dora_weight", "weight_norm",
    "INIT_METHODS", "gaussian_init", "lora_init", "pissa_init", "pissa_quantization_error",
    "save_adapter", "load_adapter", "lora_state_dict", "atomic_write", "load_file", "save_file",
    "count_parameters", "trainable_summary", "lora_plus_param_groups",
    "NF4Weight", "bits_per_parameter", "block_absmax", "dequantize_nf4", "double_dequantize", "double_quantize",
    "nbytes", "nf4_codebook", "pack_nibbles", "quantize_nf4", "unpack_nibbles",
    "LinearNF4", "model_weight_bytes", "quantize_model", "merge_and_requantize",
    "tied_weight_groups", "tied_with", "untie_weight",
]
