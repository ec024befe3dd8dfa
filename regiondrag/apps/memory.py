"""Running out of memory, told in one line: what an allocation failure asked for, and the memory given back.

The CLI and the browser editor both catch allocation failures around an edit; each says what its user can
change (the CLI: flags; the page: the server's operator), from the same reading of the exception.
"""
from __future__ import annotations

import gc
import re
from typing import Optional

import torch


def failed_allocation(e: BaseException) -> Optional[str]:
    """What an allocation failure asked for, in words, or None when `e` is not one: Python's and numpy's
    MemoryError, torch's CPU allocator (a RuntimeError) and CUDA's OutOfMemoryError."""
    text = str(e)
    if not (isinstance(e, MemoryError) or isinstance(e, torch.cuda.OutOfMemoryError) or "can't allocate memory" in text):
        return None
    exact = re.search(r"allocate (\d+) bytes", text)  # torch's CPU allocator
    if exact:
        return f"{int(exact.group(1)) / 2**30:.2f} GiB"
    stated = re.search(r"allocate ([\d.]+ [KMGTPE]i?B)", text)  # numpy, CUDA
    return stated.group(1) if stated else "more memory than there is"


def give_memory_back() -> None:
    """After a failed edit, a long-running server frees what the edit left: the failed call's tensors
    (held by the traceback until collected) and, on a GPU, the allocator's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
