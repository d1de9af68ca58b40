// Config::validate accepts good configs and names the field and value of bad ones.
#include <gtest/gtest.h>

#include "epcomm/epcomm.hpp"
#include "harness.hpp"

namespace epcomm {
namespace {

Config good() {
  Config c;
  c.num_experts = 256;
  c.hidden = 7168;
  c.max_tokens_per_rank = 4096;
  return c;
}

void expect_invalid(const Config& c, int ranks, const std::string& needle) {
  try {
    c.validate(ranks);
    FAIL() << "expected an error mentioning " << needle;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Config, AcceptsDeepSeekShape) {
  EXPECT_NO_THROW(good().validate(8));
  Config fp8 = good();
  fp8.dtype = DType::kFP8E4M3;
  EXPECT_NO_THROW(fp8.validate(8));
  EXPECT_EQ(fp8.num_scales(), 56);
  EXPECT_EQ(good().recv_capacity(8), 8 * 4096);
}

TEST(Config, RejectsEachBadField) {
  Config c = good();
  c.num_experts = 250;
  expect_invalid(c, 8, "Config.num_experts = 250");
  c = good();
  c.num_experts = 0;
  expect_invalid(c, 8, "Config.num_experts = 0");
  c = good();
  c.hidden = 100;
  expect_invalid(c, 8, "Config.hidden = 100");
  c = good();
  c.hidden = 200;
  c.dtype = DType::kFP8E4M3;
  expect_invalid(c, 8, "Config.hidden = 200");
  c = good();
  c.max_tokens_per_rank = 0;
  expect_invalid(c, 8, "Config.max_tokens_per_rank = 0");
  c = good();
  c.max_topk = 0;
  expect_invalid(c, 8, "Config.max_topk = 0");
  c.max_topk = 33;
  expect_invalid(c, 8, "Config.max_topk = 33");
  c = good();
  c.dispatch_sms = 0;
  expect_invalid(c, 8, "Config.dispatch_sms = 0");
  c = good();
  c.combine_sms = -1;
  expect_invalid(c, 8, "Config.combine_sms = -1");
  c = good();
  c.expert_alignment = 0;
  expect_invalid(c, 8, "Config.expert_alignment = 0");
  c = good();
  c.max_recv_rows = -5;
  expect_invalid(c, 8, "Config.max_recv_rows = -5");
  c = good();
  c.wait_timeout_ms = 0;
  expect_invalid(c, 8, "Config.wait_timeout_ms = 0");
  c = good();
  c.ring_slots = 1;
  expect_invalid(c, 8, "Config.ring_slots = 1");
  c = good();
  c.ring_chunk = c.ring_slots;
  expect_invalid(c, 8, "Config.ring_chunk = 8");
  c = good();
  c.max_tokens_per_rank = 1 << 30;
  expect_invalid(c, 8, "overflows");
  expect_invalid(good(), 0, "number of ranks = 0");
}

TEST(Config, TransportAndDomains) {
  Config c = good();
  c.ranks_per_domain = -1;
  expect_invalid(c, 8, "Config.ranks_per_domain = -1");
  c.transport = Transport::kNvshmem;
  c.ranks_per_domain = 3;
  expect_invalid(c, 8, "Config.ranks_per_domain = 3: must divide the number of ranks, 8");
  c.ranks_per_domain = 4;
  EXPECT_NO_THROW(c.validate(8));  // nvshmem: peers outside the domain are reached by puts
  c.transport = Transport::kIpc;
  expect_invalid(c, 8, "Config.ranks_per_domain = 4: needs transport = nvshmem");
  for (int whole : {0, 8}) {
    c.ranks_per_domain = whole;
    EXPECT_NO_THROW(c.validate(8));
  }
  c.transport = static_cast<Transport>(7);
  expect_invalid(c, 8, "Config.transport = 7");
  EXPECT_STREQ(to_string(Transport::kIpc), "ipc");
  EXPECT_STREQ(to_string(Transport::kNvshmem), "nvshmem");
}

// The host reference models results, which are the same for every transport: it ignores it.
TEST(Config, HostBackendAcceptsEveryTransport) {
  Config c;
  c.num_experts = 2;
  c.hidden = 16;
  c.max_tokens_per_rank = 2;
  c.transport = Transport::kNvshmem;
  EXPECT_NO_THROW(Communicator::create(testing::shared_bootstraps(1, 5000)[0], c, Backend::kHost));
}

TEST(Config, HiddenMustFitSixteenByteVectors) {
  Config c = good();
  c.hidden = 8;
  EXPECT_NO_THROW(c.validate(1));
  c.hidden = 12;
  expect_invalid(c, 1, "multiple of 16");
}

}  // namespace
}  // namespace epcomm
