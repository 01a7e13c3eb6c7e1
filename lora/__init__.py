"""lora: LoRA (Hu et al., 2021), DoRA (Liu et al., 2024), PiSSA (Meng et al., 2024) and QLoRA's NF4
(Dettmers et al., 2023) for any PyTorch model.

The public names, each imported from the module that defines it:

    settings        LoraConfig (lora.config)
    layers          LoRALinear (lora.layer), LoRAEmbedding (lora.embedding), LoRAAdapter (lora.adapter)
    into a model    apply_lora, plan_lora (lora.inject); lora_layers, lora_modules, mark_only_lora_trainable
                    (lora.model_layers)
    out of it       merge_lora, unmerge_lora, merge_and_unload, disable_lora (lora.merge)
    many adapters   set_adapter, delete_adapter, list_adapters (lora.switching); add_weighted_adapter (lora.combine)
    files           save_adapter, load_adapter, lora_state_dict (lora.io.adapter_io)
    counting        count_parameters, trainable_summary, lora_plus_param_groups (lora.params)
    QLoRA           quantize_nf4, dequantize_nf4, LinearNF4, quantize_model, merge_and_requantize (lora.quant)
"""

from lora.adapter import LoRAAdapter, lora_scaling
from lora.combine import add_weighted_adapter
from lora.config import LoraConfig
from lora.embedding import LoRAEmbedding
from lora.inject import apply_lora, plan_lora
from lora.io.adapter_io import load_adapter, lora_state_dict, save_adapter
from lora.layer import LoRALinear
from lora.merge import disable_lora, merge_and_unload, merge_lora, unmerge_lora
from lora.model_layers import active_adapters, lora_embeddings, lora_layers, lora_modules, mark_only_lora_trainable
from lora.params import count_parameters, lora_plus_param_groups, trainable_summary
from lora.quant.nf4 import NF4Weight, bits_per_parameter, dequantize_nf4, nbytes, nf4_codebook, quantize_nf4
from lora.quant.nf4_linear import LinearNF4, model_weight_bytes, quantize_model
from lora.quant.requantize import merge_and_requantize
from lora.switching import delete_adapter, list_adapters, set_adapter
from lora.tied import untie_weight

__all__ = [
    "LoraConfig", "LoRALinear", "LoRAEmbedding", "LoRAAdapter", "lora_scaling",
    "apply_lora", "plan_lora", "lora_layers", "lora_embeddings", "lora_modules", "active_adapters",
    "mark_only_lora_trainable", "merge_lora", "unmerge_lora", "merge_and_unload", "disable_lora",
    "set_adapter", "delete_adapter", "list_adapters", "add_weighted_adapter",
    "save_adapter", "load_adapter", "lora_state_dict", "count_parameters", "trainable_summary",
    "lora_plus_param_groups", "NF4Weight", "bits_per_parameter", "dequantize_nf4", "nbytes", "nf4_codebook",
    "quantize_nf4", "LinearNF4", "model_weight_bytes", "quantize_model", "merge_and_requantize", "untie_weight",
]
