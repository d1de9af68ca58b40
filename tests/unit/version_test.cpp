// epcomm::version() and the generated version.hpp against the project version CMake passed in
// (EPCOMM_TEST_PROJECT_VERSION, from project(VERSION) in CMakeLists.txt).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "epcomm/epcomm.hpp"

namespace epcomm {
namespace {

TEST(Version, HeaderAndLibraryMatchTheCMakeProject) {
  int major = -1, minor = -1, patch = -1;
  ASSERT_EQ(std::sscanf(EPCOMM_TEST_PROJECT_VERSION, "%d.%d.%d", &major, &minor, &patch), 3)
      << EPCOMM_TEST_PROJECT_VERSION;
  EXPECT_EQ(EPCOMM_VERSION_MAJOR, major);
  EXPECT_EQ(EPCOMM_VERSION_MINOR, minor);
  EXPECT_EQ(EPCOMM_VERSION_PATCH, patch);
  EXPECT_EQ(EPCOMM_VERSION, major * 10000 + minor * 100 + patch);
  EXPECT_STREQ(EPCOMM_VERSION_STRING, EPCOMM_TEST_PROJECT_VERSION);
  // The library's own copy, compiled into src/version.cpp.
  EXPECT_STREQ(version(), EPCOMM_TEST_PROJECT_VERSION);
  EXPECT_EQ(std::string(version()), std::to_string(EPCOMM_VERSION_MAJOR) + "." +
                                        std::to_string(EPCOMM_VERSION_MINOR) + "." +
                                        std::to_string(EPCOMM_VERSION_PATCH));
}

}  // namespace
}  // namespace epcomm
