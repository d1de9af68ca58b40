"""A MoE layer on epcomm.Buffer: gate -> top-k -> dispatch -> each local expert's two-layer MLP
(torch matmuls over the rows routed to it) -> combine, checked against a dense single-process
computation of the same layer with the same weights.

  python3 examples/python/moe_layer.py --device cpu --ranks 4        # ranks as threads, host backend
  torchrun --nproc_per_node 2 examples/python/moe_layer.py --device cuda   # one rank per process

--layout token_major (default): rows arrive one per token; the layer groups the (row, slot)
pairs by expert itself and adds the weighted outputs per row. --layout expert_major:
rows arrive grouped by expert, each expert runs on its contiguous group, and combine applies
the weights (apply_weights=True). --layout both runs and times the two.

Bound: every rank returns its weighted expert sum for a token rounded once to bf16 (relative
error <= 2^-8) and combine rounds the fp32 sum of those once more, so each output element is
within 2^-7 of the sum over the token's k of |w_k * mlp_k(x)| of the dense value (plus 2^-7 of
that for fp32 matmuls that block their sums differently).
"""
import argparse
import os
import threading
import time

import torch

import epcomm


def make_weights(args, device):
    g = torch.Generator().manual_seed(args.seed)
    H, F, E = args.hidden, args.ffn, args.experts
    gate = (torch.rand(H, E, generator=g) * 2 - 1) / H ** 0.5
    w1 = (torch.rand(E, H, F, generator=g) * 2 - 1) / H ** 0.5
    w2 = (torch.rand(E, F, H, generator=g) * 2 - 1) / F ** 0.5
    return gate.to(device), w1.to(device), w2.to(device)


def make_tokens(args, rank, device, gate):
    g = torch.Generator().manual_seed(args.seed * 1000 + rank)
    x = torch.randn(args.tokens, args.hidden, generator=g).to(torch.bfloat16).to(device)
    logits = x.float() @ gate
    top_logits, topk_idx = logits.topk(args.topk, dim=1)
    return x, topk_idx, torch.softmax(top_logits, dim=1)


def mlp(x, w1, w2):
    return torch.relu(x @ w1) @ w2


def add_phases(times, start, dispatched, computed, done):
    """Adds one layer's phase seconds to `times`."""
    for key, value in (("dispatch", dispatched - start), ("experts", computed - dispatched),
                       ("combine", done - computed), ("layer", done - start)):
        times[key] = times.get(key, 0.0) + value


def layer_expert_major(buffer, args, rank, num_ranks, x, topk_idx, topk_weights, w1, w2,
                       times):
    """The layer with expert-major rows: each expert's group is a contiguous block of recv_x
    (padding rows are zero and come back as zero), and combine weights and sums the pairs."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    start = time.perf_counter()
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk_idx, args.experts)
    recv_x, _, _, _, handle, _ = buffer.dispatch(
        x, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, topk_idx=topk_idx, topk_weights=topk_weights,
        layout="expert_major")
    sync()
    dispatched = time.perf_counter()
    local = args.experts // num_ranks
    offsets = handle.expert_offsets.tolist()
    y = torch.empty(recv_x.shape[0], args.hidden, dtype=torch.bfloat16, device=x.device)
    for e in range(local):
        first, end = offsets[e], offsets[e + 1]
        if end > first:
            y[first:end] = mlp(recv_x[first:end].float(), w1[rank * local + e],
                               w2[rank * local + e]).to(torch.bfloat16)
    sync()
    computed = time.perf_counter()
    combined, _, _ = buffer.combine(y, handle, apply_weights=True)
    sync()
    add_phases(times, start, dispatched, computed, time.perf_counter())
    return combined


def layer(buffer, args, rank, num_ranks, x, topk_idx, topk_weights, w1, w2, times):
    """One layer forward; returns the combined output. times: dict of summed phase seconds."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    start = time.perf_counter()
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(topk_idx, args.experts)
    recv_x, recv_idx, recv_w, _, handle, _ = buffer.dispatch(
        x, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank,
        num_tokens_per_expert=per_expert, topk_idx=topk_idx, topk_weights=topk_weights)
    sync()
    dispatched = time.perf_counter()
    # Group the received (row, slot) pairs by local expert (an expert-major receive layout
    # would hand them over grouped), run each expert on its group, and add the weighted
    # outputs per row in fp32.
    local = args.experts // num_ranks
    y = torch.zeros(recv_x.shape[0], args.hidden, dtype=torch.float32, device=x.device)
    rows_in = recv_x.float()
    for e in range(local):
        rows, slots = (recv_idx == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        out = mlp(rows_in[rows], w1[rank * local + e], w2[rank * local + e])
        y.index_add_(0, rows, recv_w[rows, slots].unsqueeze(1) * out)
    y = y.to(torch.bfloat16)
    sync()
    computed = time.perf_counter()
    combined, _, _ = buffer.combine(y, handle)
    sync()
    add_phases(times, start, dispatched, computed, time.perf_counter())
    return combined


def dense_check(args, x, topk_idx, topk_weights, w1, w2, combined):
    """Returns (elements out of bound, largest error as a fraction of its bound)."""
    xf = x.float()
    dense = torch.zeros_like(xf)
    scale = torch.zeros_like(xf)
    for k in range(args.topk):
        for e in topk_idx[:, k].unique().tolist():
            rows = (topk_idx[:, k] == e).nonzero(as_tuple=True)[0]
            term = topk_weights[rows, k].unsqueeze(1) * mlp(xf[rows], w1[e], w2[e])
            dense[rows] += term
            scale[rows] += term.abs()
    bound = scale * 2.0 ** -7 * (1 + 2.0 ** -7) + 1e-30
    err = (combined.float() - dense).abs()
    return int((err > bound).sum()), float((err / bound).max()) if err.numel() else 0.0


LAYERS = {"token_major": layer, "expert_major": layer_expert_major}


def run_rank(args, group, rank, num_ranks, device):
    """[(layout, elements out of bound, largest error fraction, ms per phase)] per layout."""
    gate, w1, w2 = make_weights(args, device)
    x, topk_idx, topk_weights = make_tokens(args, rank, device, gate)
    # Pairs and padding can outnumber the tokens received: the pool holds every pair.
    buffer = epcomm.Buffer(group, max_tokens_per_rank=args.tokens * args.topk)
    results = []
    for name in (["token_major", "expert_major"] if args.layout == "both" else [args.layout]):
        times = {}
        runs = args.iters + 1 if args.bench else 1
        for i in range(runs):
            if i == 1:
                times = {}  # the first run warms up
            combined = LAYERS[name](buffer, args, rank, num_ranks, x, topk_idx, topk_weights,
                                    w1, w2, times)
        bad, worst = dense_check(args, x, topk_idx, topk_weights, w1, w2, combined)
        per_iter = {k: v / (runs - 1 if args.bench else 1) * 1e3 for k, v in times.items()}
        results.append((name, bad, worst, per_iter))
    buffer.destroy()
    return results


def report(rank, results, args):
    for name, bad, worst, per_iter in results:
        print(f"rank {rank}: {name}: {args.tokens} tokens checked against the dense layer: "
              f"{bad} out of bound, largest error {worst:.3f} of the bound", flush=True)
        if args.bench:
            print(f"rank {rank}: {name}: bench (mean of {args.iters}, ms): " +
                  "  ".join(f"{k} {v:.3f}" for k, v in per_iter.items()), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--ranks", type=int, default=4, help="threads, for --device cpu")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--ffn", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bench", action="store_true")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--layout", choices=["token_major", "expert_major", "both"],
                   default="token_major")
    args = p.parse_args()
    if args.device == "cpu":  # ranks as threads: the host backend
        groups = epcomm.make_thread_groups(args.ranks)
        results = [None] * args.ranks
        errors = []

        def body(r):
            try:
                results[r] = run_rank(args, groups[r], r, args.ranks, torch.device("cpu"))
            except Exception as e:  # reported below; a rank's failure fails the example
                errors.append(f"rank {r}: {e!r}")
        threads = [threading.Thread(target=body, args=(r,)) for r in range(args.ranks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit("\n".join(errors))
        for r, rank_results in enumerate(results):
            report(r, rank_results, args)
        raise SystemExit(1 if any(res[1] for rr in results for res in rr) else 0)
    import torch.distributed as dist
    dist.init_process_group("gloo")  # NCCL refuses several ranks on one GPU
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    results = run_rank(args, dist.group.WORLD, rank, world, torch.device("cuda"))
    report(rank, results, args)
    total = torch.tensor([sum(res[1] for res in results)])
    dist.all_reduce(total)
    dist.destroy_process_group()
    raise SystemExit(1 if int(total) else 0)


if __name__ == "__main__":
    main()
