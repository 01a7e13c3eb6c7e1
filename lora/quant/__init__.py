"""lora.quant: QLoRA's 4-bit base (Dettmers et al., 2023, §3), in plain torch.

    nf4.py            the NF4 codebook, blockwise absmax quantisation, nibble packing
    double_quant.py   quantising the absmax constants (8-bit, blocks of 256)
    nf4_checks.py     checks of NF4 inputs and stored NF4 weights
    nf4_linear.py     LinearNF4, a frozen linear layer stored in NF4, and quantize_model
    requantize.py     merge_and_requantize: merging after QLoRA while keeping 4 bits
    qpissa.py         NF4's error with and without PiSSA's principal part kept in float (QPiSSA)
    fp4_int4.py       FP4 (E2M1) and Int4 round trips, the 4-bit types NF4 is compared with
    report.py         memory tables and error figures (python -m lora.quant.report)

Every module here builds on the core of lora/ (layers, targets), never the other way round.
"""
