// The rounds the NVSHMEM tests run: each source's fresh block of kRoundWords words per round,
// into a pool with one slot per source, and the check of such a pool (this rank's own slot
// keeps its poison).
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace epcomm::testing {

constexpr int kRoundWords = 4096;  // one 16 KB block per (source, round)
constexpr int kNumRounds = 20;
constexpr uint32_t kRoundPoison = 0xA5A5A5A5u;

// Word i of `source`'s block in `round`: a hash, never the poison.
inline uint32_t round_word(int source, int round, int i) {
  uint32_t h = 0x9E3779B9u * static_cast<uint32_t>(source + 1) ^
               0x85EBCA6Bu * static_cast<uint32_t>(round + 7) ^ static_cast<uint32_t>(i);
  h ^= h >> 16;
  h *= 0x7FEB352Du;
  h ^= h >> 15;
  return h == kRoundPoison ? h + 1 : h;
}

inline std::vector<uint32_t> round_block(int source, int round) {
  std::vector<uint32_t> block(kRoundWords);
  for (int i = 0; i < kRoundWords; ++i) block[i] = round_word(source, round, i);
  return block;
}

// Collective: poisons this rank's `pool` (num_sources slots), writes its block of `round` to
// `mine`, and waits until every rank has done so (no put of the round may land before).
inline void start_round(uint32_t* pool, int num_sources, uint32_t* mine, int me, int round) {
  const std::vector<uint32_t> poison(static_cast<size_t>(num_sources) * kRoundWords, kRoundPoison);
  const std::vector<uint32_t> block = round_block(me, round);
  if (cudaMemcpy(pool, poison.data(), poison.size() * 4, cudaMemcpyHostToDevice) != cudaSuccess ||
      cudaMemcpy(mine, block.data(), block.size() * 4, cudaMemcpyHostToDevice) != cudaSuccess) {
    throw std::runtime_error(std::string("start_round: ") + cudaGetErrorString(cudaGetLastError()));
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// Words of `pool` (num_sources slots) that differ from what `round` should have left in rank
// `me`'s pool.
inline int wrong_round_words(const std::vector<uint32_t>& pool, int num_sources, int me,
                             int round) {
  int wrong = 0;
  for (int s = 0; s < num_sources; ++s) {
    for (int i = 0; i < kRoundWords; ++i) {
      const uint32_t want = s == me ? kRoundPoison : round_word(s, round, i);
      wrong += pool[static_cast<size_t>(s) * kRoundWords + i] != want;
    }
  }
  return wrong;
}

}  // namespace epcomm::testing
