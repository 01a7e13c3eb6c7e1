"""lora.io: adapters on disk, in PEFT's format, written so that nothing a user saved is ever lost.

    files.py           whole-or-nothing writes (atomic_write, atomic_dir, staged_writes)
    safetensors_io.py  our own reader and writer of the safetensors format
    adapter_layout.py  PEFT's folder layout: which folder holds which adapter, what a folder may hold
    adapter_keys.py    the tensor names each layer type contributes to an adapter file
    adapter_io.py      save_adapter, load_adapter, lora_state_dict
"""
