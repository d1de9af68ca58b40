"""Whole programs on the GPU, each launched with torchrun on 2 processes (run this file in one
process, not under torchrun): the DeepEP-style caller with only its import line changed, the
README's Python example exactly as written, and examples/python/moe_layer.py; and the elastic
low-latency mode on 8 processes of which one is killed (started here, one process per rank:
torchrun would stop the others when one dies)."""
import difflib
import os
import re
import signal
import socket
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
                      "--hidden", "1024", "--experts", "32", "--ffn", "512", "--bench",
                      "--layout", "both")
    # One check per rank and layout.
    assert output.count(" 0 out of bound") == 2 * NUM_PROCESSES, output[-3000:]
    for line in re.findall(r"rank \d+: \w+: bench .*", output):
        print(line)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8_ue8m0"])
def test_elastic_mode_goes_on_without_a_killed_process(fp8):
    """8 processes, the last killed with SIGKILL mid-run: it ends by the signal, every other one
    checks all its rounds against the model with that rank masked and exits 0."""
    world = 8
    env = dict(os.environ, WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), ELASTIC_FP8="1" if fp8 else "0",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests/python"),
                                           os.environ.get("PYTHONPATH", "")]))
    script = ROOT / "tests/python/elastic_kill.py"
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(world)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=150)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    report = "\n".join(f"--- rank {r} (rc {p.returncode}):\n{o[-2500:]}"
                        for r, (p, o) in enumerate(zip(procs, outputs)))
    assert procs[-1].returncode == -signal.SIGKILL, report
    for r in range(world - 1):
        assert procs[r].returncode == 0, report
        assert f"elastic: rank {r}: 6 rounds match the model with rank {world - 1} masked" in \
            outputs[r], report
    print(re.findall(r"elastic: rank 0: .*", outputs[0]))
