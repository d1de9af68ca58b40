// MessageStream: builds error messages as `os << "x = " << 3` does with std::ostringstream, but
// without iostreams. Inside a Python process whose torch wheel exports its own copies of
// libstdc++'s stream code, the Python module's numeric stream insertions bound to those copies
// and crashed (SIGSEGV in error_from_record on the H200); std::to_string and snprintf carry no
// locale state, so the messages come out the same everywhere.
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>

namespace epcomm::detail {

class MessageStream {
 public:
  MessageStream& operator<<(const std::string& s) {
    text_ += s;
    return *this;
  }
  MessageStream& operator<<(const char* s) {
    text_ += s;
    return *this;
  }
  MessageStream& operator<<(char c) {
    text_ += c;
    return *this;
  }
  MessageStream& operator<<(bool b) {
    text_ += b ? "1" : "0";
    return *this;
  }
  template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
  MessageStream& operator<<(T value) {
    text_ += std::to_string(value);
    return *this;
  }
  MessageStream& operator<<(const void* p) {
    if (p == nullptr) {
      text_ += "0";  // as std::ostream prints a null pointer
      return *this;
    }
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%p", p);
    text_ += buffer;
    return *this;
  }
  const std::string& str() const { return text_; }

 private:
  std::string text_;
};

}  // namespace epcomm::detail
