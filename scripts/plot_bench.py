#!/usr/bin/env python3
"""Draws epcomm-bench --json output: time against SMs per rank, one line per algorithm and
receive layout, panels for dispatch (fresh and cached) and combine. Usage: plot_bench.py bench.json out.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        data = json.load(f)
    ops = ["dispatch", "dispatch(cached)", "combine"]
    fig, axes = plt.subplots(1, len(ops), figsize=(5 * len(ops), 4), sharey=True)
    for ax, op in zip(axes, ops):
        def line(r):
            return r["algorithm"] + " " + r.get("layout", "token_major")

        for name in sorted({line(r) for r in data["results"]}):
            rows = sorted((r for r in data["results"] if line(r) == name), key=lambda r: r["sms"])
            ax.plot([r["sms"] for r in rows], [r[op]["ms"] for r in rows], marker="o", label=name)
        ax.set_title(op)
        ax.set_xlabel("SMs per rank")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("time (ms), slowest rank, median")
    axes[0].legend()
    fig.suptitle("epcomm on %s: R=%d, T=%d, H=%d, K=%d, E=%d, %s" % (
        data["device"], data["ranks"], data["tokens"], data["hidden"], data["topk"],
        data["experts"], data["dtype"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
