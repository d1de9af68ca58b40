// gtest main for epcomm's tests: several ranks of one process share a GPU, so each stream
// needs its own hardware queue (see src/cuda/cuda_backend.cpp, check_hardware_queues).
#include <gtest/gtest.h>

#include <cstdlib>

int main(int argc, char** argv) {
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", /*overwrite=*/0);  // before any CUDA call
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
