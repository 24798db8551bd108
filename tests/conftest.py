"""Test-wide settings. Every test process runs single-threaded (design section 4: with 2 threads on a
busy 2-core box a 50 ms tiny diffusion call becomes 10 s)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
