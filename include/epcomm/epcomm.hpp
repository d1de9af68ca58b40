// epcomm: expert-parallel dispatch and combine. Include this one header.
#pragma once

#include "epcomm/bootstrap.hpp"
#include "epcomm/communicator.hpp"
#include "epcomm/config.hpp"
#include "epcomm/dispatch.hpp"
#include "epcomm/error.hpp"
#include "epcomm/low_latency.hpp"
#include "epcomm/types.hpp"
#include "epcomm/version.hpp"
