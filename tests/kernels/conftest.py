"""The kernels run under Triton's CPU interpreter where there is no GPU (set before they are defined)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
