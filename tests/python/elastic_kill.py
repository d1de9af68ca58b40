"""The elastic low-latency mode with a process killed mid-run (run by tests/python/gpu/
test_scripts.py, which starts one process per rank and checks how each ended).

Every rank runs ROUNDS low-latency rounds on fresh inputs with enable_shrink=True. At the start
of round KILL_ROUND the last rank sleeps, while the others have already sent to it and wait for
its counts, then kills itself with SIGKILL. The others' waits time out, mask it, and they go on:
every round's outputs must equal the numpy model with the killed rank cut off from that round
on (all outputs before it with every rank), and low_latency_query_mask_buffer must show it.
The survivors end with os._exit: their process group lost a member, so no collective teardown.
"""
import os
import signal
import sys
import time
from dataclasses import replace

import torch
import torch.distributed as dist

import epcomm
from helpers.ll_expect import compare_ll, expected_ll_round
from helpers.ll_runner import run_ll_round
from helpers.ll_workload import LLCase

ROUNDS, KILL_ROUND = 6, 2
TIMEOUT_MS = 2000


def main() -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    victim = world - 1
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) %
                          torch.cuda.device_count())
    torch.cuda.set_device(device)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    epcomm.Buffer.set_num_sms(8)
    fp8 = os.environ.get("ELASTIC_FP8", "0") == "1"
    case = LLCase(world, 16, 16, 512, 4, 4 * world, fp8=fp8, scales="ue8m0" if fp8 else "float",
                  wait_stats=False, seed=4242)
    buffer = epcomm.Buffer(None, low_latency_mode=True, num_qps_per_rank=case.experts_per_rank,
                           enable_shrink=True, timeout_ms=TIMEOUT_MS)
    stats = torch.zeros(case.experts_per_rank, dtype=torch.int32, device=device)
    mask = torch.zeros(world, dtype=torch.int32, device=device)
    got, masks = [], []
    for index in range(ROUNDS):
        if rank == victim and index == KILL_ROUND:
            sys.stdout.flush()
            time.sleep(TIMEOUT_MS / 2000)  # the others have sent to this rank and now wait
            os.kill(os.getpid(), signal.SIGKILL)
        got.append(run_ll_round(buffer, case.round(index), rank, device, stats))
        buffer.low_latency_query_mask_buffer(mask)
        masks.append(mask.cpu().tolist())
    # Every round ran back to back; the model is computed only now, so that no survivor was
    # still sending to the victim when it died.
    for index in range(ROUNDS):
        cut = replace(case.round(index), masked=(1 << victim) if index >= KILL_ROUND else 0)
        want = expected_ll_round(cut)[rank]
        for mb, (g, w) in enumerate(zip(got[index], want)):
            compare_ll(f"{cut.name()} round {index} rank {rank} micro-batch {mb}", g, w)
        expected_mask = [1 if (p == victim and index >= KILL_ROUND) else 0 for p in range(world)]
        assert masks[index] == expected_mask, (index, masks[index], expected_mask)
    print(f"elastic: rank {rank}: {ROUNDS} rounds match the model with rank {victim} masked "
          f"from round {KILL_ROUND} on (killed there)", flush=True)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException as error:  # noqa: BLE001 - report, then leave without teardown
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
