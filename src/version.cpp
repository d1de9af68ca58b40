// epcomm::version(): the version compiled into the library, for callers to compare with the
// headers they were built against.
#include "epcomm/version.hpp"

namespace epcomm {

const char* version() { return EPCOMM_VERSION_STRING; }

}  // namespace epcomm
