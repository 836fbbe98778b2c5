"""Run a Triton kernel's check script under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set
before triton is imported, hence a subprocess): the kernels' tests on machines without a GPU."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="needs triton (ships with CUDA torch; `pip install -e .[triton]` on a CPU build)",
)


def run_interpreted(code: str, expect: str) -> str:
    """Run ``code`` (dedented) in a fresh interpreter under Triton's CPU interpreter; assert it
    exits 0 and prints ``expect``; return its stdout."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert expect in out.stdout, out.stdout
    return out.stdout
