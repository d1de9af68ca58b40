// epcomm::Error: the one exception type the library throws.
#pragma once

#include <stdexcept>
#include <string>

namespace epcomm {

enum class ErrorCode {
  kInvalidArgument,   // a shape, dtype, pointer or Config field is wrong; the message names it
  kCapacityExceeded,  // a rank would receive more rows than its receive pool holds
  kTimeout,           // a bounded wait ran out; the message names rank, phase, peer, values
  kStaleHandle,       // a handle from another communicator, or not from the latest dispatch
  kInvalidExpert,     // an expert id outside [-1, num_experts) reached a kernel or the reference
  kUnsupported,       // a valid request this build or backend cannot serve
  kCuda,              // a CUDA runtime call failed
  kBootstrap,         // the bootstrap (allGather / barrier) failed
  kBroken,            // an earlier fault left the communicator unusable
};

const char* to_string(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(std::string(to_string(code)) + ": " + message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace epcomm
