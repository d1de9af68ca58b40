"""The Python MoE layer example runs on the host backend (ranks as threads) and passes its own
check against the dense layer (the example exits nonzero when any element is out of bound)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples/python/moe_layer.py"


def _run(*args):
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def test_moe_layer_example_matches_the_dense_layer_on_threads():
    done = _run("--device", "cpu", "--ranks", "3", "--experts", "12", "--topk", "3",
                "--tokens", "40", "--bench", "--iters", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("0 out of bound") == 3, done.stdout
    assert "bench (mean of 1, ms)" in done.stdout


def test_moe_layer_example_expert_major_matches_the_dense_layer_too():
    """Both layouts in one run: the expert-major rows, grouped by expert, and combine weighting
    the pairs, pass the same check."""
    done = _run("--device", "cpu", "--ranks", "2", "--experts", "8", "--topk", "3",
                "--tokens", "24", "--layout", "both", "--bench", "--iters", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    for layout in ("token_major", "expert_major"):
        assert done.stdout.count(f"{layout}: 24 tokens checked against the dense layer: "
                                 "0 out of bound") == 2, done.stdout
        assert f"{layout}: bench (mean of 1, ms)" in done.stdout
