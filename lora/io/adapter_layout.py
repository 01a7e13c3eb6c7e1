"""PEFT's folder layout for adapters: where each adapter's two files go, and what a folder may hold.

    directory/
        adapter_config.json             the adapter named "default", at the top (PEFT's save_pretrained)
        adapter_model.safetensors
        <name>/adapter_config.json      every other adapter in a sub-folder named after it
        <name>/adapter_model.safetensors

A save adds to such a folder and replaces only the adapters it writes. It refuses a folder that holds
anything else (a user's notes, scripts, another program's files): deleting or overwriting them would
lose work, and mixing them with adapters would make the folder ambiguous. A folder with top-level
files *and* a "default/" sub-folder is ambiguous too (two "default" adapters), and is refused by
saves and loads alike.
"""

import os
import pathlib

from lora.adapter import check_adapter_name
from lora.io.files import check_not_read_only, is_hidden_temporary

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
DEFAULT = "default"  # PEFT's name for the first adapter; it is saved at the top of the folder
ADAPTER_FILES = {CONFIG_NAME, WEIGHTS_NAME, "README.md"}  # PEFT's save_pretrained also writes a README.md


def adapter_path(directory, name):
    """The folder holding adapter `name`'s files: `directory` for "default", else directory/<name>."""
    directory = pathlib.Path(directory)
    return directory if name == DEFAULT else directory / name


def _is_adapter_folder(path):
    """A folder holding an adapter's files and nothing else (the temporaries of a save aside)."""
    names = [p.name for p in path.iterdir() if not is_hidden_temporary(p.name)]
    return CONFIG_NAME in names and set(names) <= ADAPTER_FILES


def _foreign_entries(directory):
    """The entries of `directory` that are neither adapter files nor adapter sub-folders."""
    foreign = []
    for entry in sorted(directory.iterdir()):
        if is_hidden_temporary(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if not _is_adapter_folder(entry):
                foreign.append(entry.name + "/")
        elif entry.name not in ADAPTER_FILES or not entry.is_file():
            foreign.append(entry.name)
    return foreign


def check_ambiguous(directory):
    """Raise ValueError for a folder with top-level adapter files and a "default/" adapter sub-folder."""
    directory = pathlib.Path(directory)
    if (directory / CONFIG_NAME).is_file() and (directory / DEFAULT / CONFIG_NAME).is_file():
        raise ValueError(f"{os.fspath(directory)!r} holds an adapter at the top and another in {DEFAULT}/: both "
                         f"would be adapter {DEFAULT!r}. Move or delete one of them")


def check_save_target(directory, names):
    """Raise before a save of adapters `names` into `directory` would lose or confuse anything.

    Raises:
        ValueError: `directory` (or a sub-folder to be written) is a regular file; the folder holds
            files or folders other than adapters; the save would make it ambiguous (see the module
            docstring).
        PermissionError: `directory` or an adapter sub-folder to be replaced is read-only.
    """
    directory = pathlib.Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{os.fspath(directory)!r} is a file, not a folder; an adapter is saved as a folder. "
                         "Choose another path; nothing was changed")
    if not directory.exists():
        return
    foreign = _foreign_entries(directory)
    if foreign:
        raise ValueError(f"{os.fspath(directory)!r} holds {foreign[:5]}, which are not LoRA adapters; save_adapter "
                         "only adds adapters beside adapters. Choose an empty or new folder; nothing was changed")
    check_ambiguous(directory)
    if DEFAULT in names and (directory / DEFAULT).exists():
        raise ValueError(f"{os.fspath(directory)!r} has a {DEFAULT}/ sub-folder; adapter {DEFAULT!r} is saved at the "
                         "top, so the folder would hold it twice. Move that sub-folder away; nothing was changed")
    check_not_read_only(directory)
    for name in names:
        if name != DEFAULT:
            check_not_read_only(directory / name)


def saved_adapters(directory):
    """{adapter name: its folder} for every adapter saved in `directory` (PEFT's layout), "default" first.

    Raises:
        FileNotFoundError: no such folder, or no adapter in it.
        ValueError: an ambiguous folder (top-level files and a "default/" sub-folder).
    """
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {os.fspath(directory)!r} does not exist")
    check_ambiguous(directory)
    found = {DEFAULT: directory} if (directory / CONFIG_NAME).is_file() else {}
    for sub in sorted(directory.iterdir()):
        if sub.is_dir() and not is_hidden_temporary(sub.name) and (sub / CONFIG_NAME).is_file():
            try:
                found[check_adapter_name(sub.name)] = sub
            except ValueError as e:
                raise ValueError(f"{os.fspath(sub)!r}: a sub-folder's name is its adapter's name: {e}") from None
    if not found:
        raise FileNotFoundError(f"{os.fspath(directory / CONFIG_NAME)} is missing; an adapter directory holds "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME} (further adapters in sub-folders named after them)")
    return found


def find_adapter(directory, name):
    """The folder of adapter `name` in `directory`: directory/<name> if saved there, else the top-level
    adapter (a folder of one adapter, loaded under another name, as PEFT's load_adapter(path, name) does).

    Raises:
        FileNotFoundError: no such adapter (the message lists the saved ones).
        ValueError: an ambiguous folder.
    """
    found = saved_adapters(directory)
    if name in found:
        return found[name]
    if list(found) == [DEFAULT]:
        return found[DEFAULT]
    raise FileNotFoundError(f"{os.fspath(directory)!r} has no adapter {name!r}; it holds {list(found)}")
