// Ring flow control shared by ring dispatch and ring combine. A block's warps form groups, one
// per peer at a time; a group pushes into (or pops from) one ring, in chunks, with the group's
// first thread waiting and publishing for it.
#pragma once

#include "../params.hpp"
#include "wait.cuh"

namespace epcomm::kernels {

struct WarpGroup {
  int index;            // this warp's group, or -1 for a warp left over
  int count;            // groups in the block
  int warps;            // warps per group
  int warp_in_group;
  bool leader;          // thread 0 of the group
};

// At most 15 groups: each synchronises on its own named barrier (1..15).
__device__ __forceinline__ WarpGroup make_groups(int num_peers) {
  const int num_warps = blockDim.x / 32, warp = threadIdx.x / 32;
  WarpGroup g;
  g.count = min(min(num_peers, 15), num_warps);
  g.warps = num_warps / g.count;
  g.index = warp / g.warps < g.count ? warp / g.warps : -1;
  g.warp_in_group = warp % g.warps;
  g.leader = g.index >= 0 && g.warp_in_group == 0 && threadIdx.x % 32 == 0;
  return g;
}

__device__ __forceinline__ void group_sync(const WarpGroup& g) {
  asm volatile("bar.sync %0, %1;" ::"r"(1 + g.index), "r"(32 * g.warps) : "memory");
}

// Pushes `total` entries into ring (channel, this rank -> peer), which lives in the peer's
// region. write(j, entry) fills the j-th entry; warp w of the group writes j = w, w + warps...
// `sent` counts the ring's entries so far; every thread of the group carries it in a register
// from one call to the next (the caller loads it from, and stores it back to, RingParams::sent).
// Returns false if a wait timed out (the error is recorded).
template <typename Write>
__device__ bool ring_push(const cuda::RingParams& p, const WarpGroup& g, int channel, int peer,
                          int total, int* s_count, uint64_t& sent, Write write) {
  const cuda::RegionLayout& l = p.layout;
  const uint64_t slots = l.ring.slots;
  const uint64_t* head = l.ring_head(p.peers[p.rank], channel, peer);
  uint64_t* tail = l.ring_tail(p.peers[peer], channel, p.rank);
  for (int done = 0; done < total;) {
    if (g.leader) {
      uint64_t consumed = 0;  // wait for at least one free entry
      const bool ok = wait_at_least(p.wait, head, sent + 1 > slots ? sent + 1 - slots : 0,
                                    cuda::kPhaseRingSpace, peer, &consumed);
      const uint64_t free = slots - (sent - consumed);
      *s_count = ok ? static_cast<int>(min(static_cast<uint64_t>(min(p.chunk_rows, total - done)), free)) : -1;
    }
    group_sync(g);
    const int n = *s_count;
    if (n < 0) return false;
    for (int j = g.warp_in_group; j < n; j += g.warps) {
      write(done + j, l.ring_entry(p.peers[peer], channel, p.rank, sent + j));
    }
    group_sync(g);  // every entry of the chunk is written (and *s_count read)
    if (g.leader) {
      __threadfence_system();
      red_add_release_sys(tail, static_cast<uint64_t>(n));
    }
    sent += n;
    done += n;
  }
  return true;
}

// Pops `total` entries from ring (channel, peer -> this rank), in this rank's region, and
// stores the ring's new consumed count in RingParams::received. read(j, entry) consumes the
// j-th entry. Returns false if a wait timed out.
template <typename Read>
__device__ bool ring_pop(const cuda::RingParams& p, const WarpGroup& g, int channel, int peer,
                         int total, int* s_count, Read read) {
  const cuda::RegionLayout& l = p.layout;
  char* local = p.peers[p.rank];
  // NOTE: read once per ring and kept in registers; only the leader stores it back, at the end.
  uint64_t received = p.received[channel * p.num_ranks + peer];
  const uint64_t* tail = l.ring_tail(local, channel, peer);
  uint64_t* head = l.ring_head(p.peers[peer], channel, p.rank);
  for (int done = 0; done < total;) {
    if (g.leader) {
      uint64_t written = 0;
      const bool ok =
          wait_at_least(p.wait, tail, received + 1, cuda::kPhaseRingData, peer, &written);
      *s_count = ok ? static_cast<int>(min(written - received, static_cast<uint64_t>(total - done))) : -1;
    }
    group_sync(g);
    const int n = *s_count;
    if (n < 0) return false;
    for (int j = g.warp_in_group; j < n; j += g.warps) {
      read(done + j, l.ring_entry(local, channel, peer, received + j));
    }
    group_sync(g);
    if (g.leader) {
      // NOTE: release after the barrier: the sender may overwrite these entries once it sees
      // the new head, so every warp's reads must come first.
      red_add_release_sys(head, static_cast<uint64_t>(n));
    }
    received += n;
    done += n;
  }
  if (g.leader) p.received[channel * p.num_ranks + peer] = received;
  return true;
}

// Tokens of `channel`: the layout chunks it covers.
__device__ __forceinline__ int2 channel_tokens(const cuda::RingParams& p, int channel) {
  const int C = p.layout.ring.channels;
  const int first = cuda::channel_first_chunk(channel, p.num_chunks, C) * cuda::kLayoutChunkTokens;
  const int last = cuda::channel_first_chunk(channel + 1, p.num_chunks, C) * cuda::kLayoutChunkTokens;
  return make_int2(first, min(last, p.num_tokens));
}

}  // namespace epcomm::kernels
