"""LinearNF4: a frozen linear layer whose weight is stored in NF4 (QLoRA §3), and quantize_model.

QLoRA = a LinearNF4 base under a LoRALinear: the 4-bit weight is dequantised for each forward pass,
gradients flow through it to the input and to the float adapters, and the weight itself never trains.

Shape legend:
    d_in   in_features      d_out  out_features      ...  any leading dimensions (batch, time)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from lora.base_layer import LoRALayer
from lora.quant.nf4 import NF4Weight, bits_per_parameter, dequantize_nf4, quantize_nf4
from lora.quant.nf4_checks import check_blocksize, check_nf4_weight, check_scales
from lora.targets import select_layers, set_module, user_targets

_FIELDS = ("packed", "absmax", "absmax_q", "absmax_scale", "absmax_mean")  # NF4Weight tensors, stored as buffers


# Note: Why backward dequantises again
# F.linear saves its weight for backward, because the input gradient is grad_out · W. Called on the
# dequantised W, it would keep a float copy of every quantised matrix alive from its forward to its
# backward, so at the start of backward all of them are in memory at once and QLoRA's training peak
# would exceed plain LoRA's. _LinearDequantized keeps a reference to the layer instead (its 4-bit
# buffers) and dequantises W a second time in backward: a little more compute for the memory that
# QLoRA exists to save. bitsandbytes' 4-bit matmul makes the same trade.


class _LinearDequantized(torch.autograd.Function):
    """y = x dequant(W)ᵀ + b, saving the quantised layer rather than dequant(W) for backward."""

    @staticmethod
    def forward(ctx, x, layer, dtype, bias):
        ctx.layer, ctx.dtype = layer, dtype
        return F.linear(x, layer.dequantize_weight(dtype), bias)

    @staticmethod
    def backward(ctx, grad_out):
        # W is frozen: only the input (and a bias that was unfrozen by hand) can need a gradient
        grad_x = grad_out @ ctx.layer.dequantize_weight(ctx.dtype) if ctx.needs_input_grad[0] else None  # (..., d_in)
        grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.needs_input_grad[3] else None
        return grad_x, None, None, grad_bias


class LinearNF4(nn.Module):
    """x ↦ x dequant(W)ᵀ + b with W stored as NF4 codes and scales; nothing here trains.

    The quantised tensors are buffers named weight_packed, weight_absmax (or weight_absmax_q,
    weight_absmax_scale, weight_absmax_mean with double quantisation), so .to(device) moves them and
    state_dict saves them; weight_blocksizes (int64: the NF4 and the double-quantisation blocksize)
    goes with them, because codes quantised in blocks of 64 read in blocks of 96 would give a wrong
    weight everywhere and no error. No float copy of W is kept. The bias stays in float, frozen.

    Args:
        weight_q: an NF4Weight of shape (d_out, d_in), from quantize_nf4.
        bias: (d_out,) float tensor or None.
        compute_dtype: dtype to dequantise to and compute in; None follows the input (and autocast).
    Raises:
        ValueError: weight_q is not 2-D or is inconsistent, or the bias does not have d_out entries.
    """

    def __init__(self, weight_q, bias=None, compute_dtype=None):
        super().__init__()
        check_nf4_weight(weight_q)
        if len(weight_q.shape) != 2:
            raise ValueError(f"LinearNF4 needs a 2-D (d_out, d_in) weight, got shape {tuple(weight_q.shape)}")
        self.out_features, self.in_features = weight_q.shape
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias shape {tuple(bias.shape)} does not match out_features={self.out_features}")
        for field in _FIELDS:
            self.register_buffer(f"weight_{field}", getattr(weight_q, field))
        self.register_buffer("weight_blocksizes", torch.tensor([weight_q.blocksize, weight_q.dq_blocksize],
                                                               dtype=torch.int64, device=weight_q.packed.device))
        self.weight_dtype, self.blocksize, self.dq_blocksize = weight_q.dtype, weight_q.blocksize, weight_q.dq_blocksize
        self.compute_dtype = compute_dtype
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear, blocksize=64, double_quant=True, compute_dtype=None):
        """Quantise an nn.Linear's weight (on its device); the bias is copied in float."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        q = quantize_nf4(linear.weight.detach(), blocksize=blocksize, double_quant=double_quant)
        return cls(q, linear.bias, compute_dtype=compute_dtype)

    @property
    def weight_q(self):
        """The NF4Weight held by the buffers (a view of them, not a copy)."""
        tensors = {field: getattr(self, f"weight_{field}") for field in _FIELDS}
        return NF4Weight(**tensors, shape=(self.out_features, self.in_features), dtype=self.weight_dtype,
                         blocksize=self.blocksize, dq_blocksize=self.dq_blocksize)

    def dequantize_weight(self, dtype=None):
        """dequant(W), (d_out, d_in), in `dtype` (the original weight dtype when None).

        The scales' values were checked when the layer was built or loaded, so this per-forward call
        skips reading them back (a host sync on a GPU).
        """
        return dequantize_nf4(self.weight_q, dtype=dtype, check_values=False)

    def check_state(self, state_dict, prefix, where=None):
        """Raise ValueError unless `state_dict`'s entries under `prefix` fit this layer: the same keys,
        shapes, dtypes and blocksizes, and finite scales. A state dict holding none of them is fine
        (a partial load leaves this layer as it is)."""
        where = where or prefix.rstrip(".") or type(self).__name__
        mine = {k: v for k, v in self.state_dict().items() if k != "bias"}
        given = {k: state_dict[prefix + k] for k in mine if prefix + k in state_dict}
        given |= {k[len(prefix):]: v for k, v in state_dict.items()
                  if k.startswith(prefix + "weight_") and "." not in k[len(prefix):]}
        if not given:
            return
        if set(given) != set(mine):
            missing, extra = sorted(set(mine) - set(given)), sorted(set(given) - set(mine))
            raise ValueError(f"state dict of {where}: NF4 entries {missing or extra} {'missing' if missing else 'unexpected'}"
                             " (a state dict with and one without double quantisation do not mix)")
        blocksizes = given["weight_blocksizes"]
        if blocksizes.shape != (2,) or blocksizes.dtype != torch.int64 or blocksizes.tolist() != [self.blocksize,
                                                                                                   self.dq_blocksize]:
            raise ValueError(f"state dict of {where}: blocksizes {blocksizes.tolist()}, but the layer quantises in blocks "
                             f"of {[self.blocksize, self.dq_blocksize]} (blocksize, double-quantisation blocksize): "
                             "the codes would be read in the wrong blocks")
        for k, v in given.items():
            if v.shape != mine[k].shape or v.dtype != mine[k].dtype:
                raise ValueError(f"state dict of {where}: {k} is {v.dtype} {tuple(v.shape)}, the layer holds "
                                 f"{mine[k].dtype} {tuple(mine[k].shape)}")
        check_scales({f: given["weight_" + f] for f in _FIELDS if "weight_" + f in given}, where=f"state dict of {where}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state dict is a file's content: refuse wrong blocksizes, shapes and non-finite scales before copying
        self.check_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def num_quantized_parameters(self):
        """The logical number of weights, d_out · d_in (packing two per byte does not halve it)."""
        return self.out_features * self.in_features

    def forward(self, x):
        """(..., d_in) -> (..., d_out): F.linear with W dequantised once per call (and once more in backward).

        The compute dtype is `compute_dtype` if set (the output is cast back to x's dtype, as
        bitsandbytes does), else autocast's dtype when autocast is on (bf16 on CUDA), else x's dtype.
        """
        if self.compute_dtype is not None:
            dtype = self.compute_dtype
        elif torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        else:
            dtype = x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        out = _LinearDequantized.apply(x.to(dtype), self, dtype, bias)
        return out.to(x.dtype) if self.compute_dtype is not None else out

    def _apply(self, fn, recurse=True):
        # model.half() or .to(torch.bfloat16) would round the float32 scales and break dequantisation.
        # Hand fn a uint8 view of each float buffer instead: device moves apply, dtype casts do not.
        float_buffers = {k: b.dtype for k, b in self._buffers.items() if b is not None and b.is_floating_point()}
        for k in float_buffers:
            self._buffers[k] = self._buffers[k].view(torch.uint8)
        try:
            return super()._apply(fn, recurse)
        finally:
            for k, dtype in float_buffers.items():
                self._buffers[k] = self._buffers[k].view(dtype)

    def extra_repr(self):
        q = self.weight_q
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={self.blocksize}, double_quant={q.double_quant}, bits_per_parameter={bits_per_parameter(q):.3f}")


def model_weight_bytes(model):
    """Bytes of the model's parameters and buffers, each tensor counted once (tied weights share one)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def quantize_model(model, targets="all-linear", blocksize=64, double_quant=True, compute_dtype=None):
    """Replace the targeted nn.Linear layers of `model` by LinearNF4, in place (QLoRA §3).

    Targets follow apply_lora's rules (lora.targets): module-name suffixes, or "all-linear" for every
    linear layer but the output head, which is what QLoRA quantises. Layers that are already LinearNF4
    are left as they are, so a second call changes nothing. Quantise before adding LoRA adapters.

    Args:
        model: any nn.Module.
        targets: module names ("c_attn, c_fc", a list), "all-linear", or a regex ("re:..." or compiled);
            a LoraConfig's target_modules works as it is.
        blocksize, double_quant, compute_dtype: passed to LinearNF4.from_linear.
    Returns:
        (bytes_before, bytes_after): model_weight_bytes before and after the swap.
    Afterwards model.load_state_dict checks every quantised layer of the state dict before it copies
    anything (check_nf4_state_dict).
    Raises:
        ValueError: bad targets or blocksize; the model already has LoRA adapters; a targeted weight is shared with
            another module (a tied output head), since quantising it would keep the float copy too; a
            weight that cannot be quantised (NaN/inf, beyond float32), named by its layer. Every layer is
            quantised before any is swapped in, so on any error the model is left exactly as it was.
    """
    if any(isinstance(m, LoRALayer) for m in model.modules()):
        raise ValueError("the model already has LoRA adapters; quantise the base model first, then apply LoRA")
    check_blocksize(blocksize)
    chosen = select_layers(model, user_targets(targets), types=(nn.Linear, LinearNF4))
    owners = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for name, module in chosen:
        if isinstance(module, nn.Linear) and len(owners[id(module.weight)]) > 1:
            raise ValueError(f"target {name!r}: its weight is shared by {owners[id(module.weight)]} (tied); "
                             "quantising it would break the tie and keep a float copy, so leave it out of targets")
    before = model_weight_bytes(model)
    staged = []  # all-or-nothing: quantise every layer first, swap them in only when all succeeded
    for name, module in chosen:
        if isinstance(module, nn.Linear):
            try:
                staged.append((name, LinearNF4.from_linear(module, blocksize, double_quant, compute_dtype)))
            except ValueError as e:
                raise ValueError(f"cannot quantise {name!r}: {e}; the model was left unchanged") from None
    for name, layer in staged:
        set_module(model, name, layer)
    if not getattr(model, "_checks_nf4_state", False):  # once: load_state_dict then checks every layer first
        model.register_load_state_dict_pre_hook(check_nf4_state_dict)
        model._checks_nf4_state = True
    return before, model_weight_bytes(model)


def check_nf4_state_dict(model, state_dict, prefix="", *hook_args):
    """Check every LinearNF4 entry of a whole model's `state_dict` against the model's layers.

    quantize_model registers this as the model's load_state_dict pre-hook, so it runs before torch
    copies anything: a wrong blocksize or a NaN scale in the last layer is refused while the first
    layer is still untouched (torch alone copies layer by layer).
    Raises:
        ValueError: naming the layer (see LinearNF4.check_state).
    """
    for name, module in model.named_modules():
        if isinstance(module, LinearNF4):
            module.check_state(state_dict, f"{prefix}{name}." if name else prefix)
