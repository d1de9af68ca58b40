// gtest helper: a call must throw epcomm::Error with a given code and message text.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "epcomm/error.hpp"

namespace epcomm::testing {

// Runs fn; records a failure unless it throws epcomm::Error with `code` and a message
// containing `needle`. Returns the message ("" when nothing was thrown), for further checks.
template <typename Fn>
std::string expect_error(ErrorCode code, const std::string& needle, Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected " << to_string(code) << " mentioning '" << needle << "'";
  return "";
}

}  // namespace epcomm::testing
