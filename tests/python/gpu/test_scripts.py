"""Whole programs on the GPU, each launched with torchrun on 2 processes (run this file in one
process, not under torchrun): the DeepEP-style caller with only its import line changed, the
README's Python example exactly as written, and examples/python/moe_layer.py."""
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
NUM_PROCESSES = 2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def torchrun(script: Path, *args: str, timeout_s: int = 240) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={NUM_PROCESSES}", str(script), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ))
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    return output


def test_deepep_style_caller_runs_with_only_the_import_changed(tmp_path):
    original = (ROOT / "tests/python/deepep_style_caller.py").read_text()
    ported = original.replace("\nimport deep_ep\n", "\nimport epcomm as deep_ep\n")
    changed = [line for line in difflib.unified_diff(original.splitlines(), ported.splitlines(),
                                                     lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-import deep_ep", "+import epcomm as deep_ep"]
    script = tmp_path / "caller_on_epcomm.py"
    script.write_text(ported)
    output = torchrun(script)
    assert "deepep_style_caller: all checks passed" in output, output[-3000:]
    print(re.findall(r"dispatch \+ combine: .*", output))


def test_readme_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "readme_example.py"
    script.write_text(example)
    torchrun(script)


def test_moe_layer_example_matches_the_dense_layer():
    output = torchrun(ROOT / "examples/python/moe_layer.py", "--device", "cuda", "--tokens", "256",
                      "--hidden", "1024", "--experts", "32", "--ffn", "512", "--bench")
    assert output.count("0 out of bound") == NUM_PROCESSES, output[-3000:]
    print(re.findall(r"rank \d+: bench .*", output))
