// Names of wait phases, and the host-side message for each device error record.
#include "device_errors.hpp"

#include "message_stream.hpp"

namespace epcomm::cuda {

const char* to_string(WaitPhase phase) {
  switch (phase) {
    case kPhaseNone:
      return "none";
    case kPhaseCountExchange:
      return "dispatch count exchange";
    case kPhaseArrival:
      return "dispatch row arrival";
    case kPhaseCombineReady:
      return "combine ready signal";
    case kPhaseRingSpace:
      return "ring free slots";
    case kPhaseRingData:
      return "ring rows";
    case kPhaseLlDispatch:
      return "low-latency dispatch message count";
    case kPhaseLlCombine:
      return "low-latency combine rows";
    case kPhaseForward:
      return "dispatch rows forwarded across domains";
    case kPhasePartials:
      return "combine partials from another domain";
  }
  return "unknown phase";
}

Error error_from_record(const ErrorRecord& rec, int wait_timeout_ms) {
  epcomm::detail::MessageStream os;
  os << "rank " << rec.rank << ": ";
  switch (rec.code) {
    case kDevTimeout:
      os << "waited " << wait_timeout_ms << " ms in phase '"
         << to_string(static_cast<WaitPhase>(rec.phase)) << "' for peer rank " << rec.peer
         << ": expected " << rec.expected << ", saw " << rec.seen;
      return Error(ErrorCode::kTimeout, os.str());
    case kDevInvalidExpert:
      os << "topk_idx[" << rec.token << "][" << rec.slot << "] = " << rec.value
         << " is outside [-1, num_experts); no rank dispatched";
      return Error(ErrorCode::kInvalidExpert, os.str());
    case kDevPeerInvalidInput:
      os << "peer rank " << rec.peer << " had an expert id out of range; no rank dispatched";
      return Error(ErrorCode::kInvalidExpert, os.str());
    case kDevCapacity:
      os << "rank " << rec.peer << " would receive " << rec.seen << " rows but its pool holds "
         << rec.expected << "; no rank dispatched";
      return Error(ErrorCode::kCapacityExceeded, os.str());
    case kDevTopkMismatch:
      os << "peer rank " << rec.peer << " dispatched with num_topk " << rec.seen
         << " but this rank with " << rec.expected << "; no rank dispatched";
      return Error(ErrorCode::kInvalidArgument, os.str());
    case kDevLayoutMismatch:
      os << "peer rank " << rec.peer << " dispatched with layout "
         << (rec.seen ? "expert_major" : "token_major") << " but this rank with "
         << (rec.expected ? "expert_major" : "token_major")
         << "; every rank must pass the same DispatchOptions.layout; no rank dispatched";
      return Error(ErrorCode::kInvalidArgument, os.str());
    case kDevStaleHandle:
      os << "dispatch_cached: peer rank " << rec.peer << " replayed the handle of dispatch #"
         << rec.seen << " but this rank the one of dispatch #" << rec.expected
         << "; no rank dispatched";
      return Error(ErrorCode::kStaleHandle, os.str());
    case kDevRejectedReplay:
      os << "dispatch_cached: the replayed dispatch #" << rec.expected
         << " was rejected (its error was reported then), so its routing is not final; no rank "
            "dispatched";
      return Error(ErrorCode::kStaleHandle, os.str());
    case kDevLlTopkChanged:
      os << "low_latency_combine: topk_idx[" << rec.token << "][" << rec.slot << "] = " << rec.value
         << " but its dispatch had " << static_cast<int64_t>(rec.seen)
         << "; combined with the dispatch's ids";
      return Error(ErrorCode::kInvalidArgument, os.str());
    case kDevLlInvalidExpert:
      os << "low_latency_dispatch: topk_idx[" << rec.token << "][" << rec.slot
         << "] = " << rec.value << " is outside [-1, num_experts); the slot was sent nowhere";
      return Error(ErrorCode::kInvalidExpert, os.str());
    case kDevLlRoundMismatch:
      os << "low-latency phase '" << to_string(static_cast<WaitPhase>(rec.phase)) << "': peer rank "
         << rec.peer << " posted a count of round " << rec.seen << " but this rank is in round "
         << rec.expected << "; ranks must issue the same low-latency calls in the same order";
      return Error(ErrorCode::kBroken, os.str());
    case kDevLlOverflow:
      os << "low-latency phase '" << to_string(static_cast<WaitPhase>(rec.phase)) << "': peer rank "
         << rec.peer << " posted " << rec.seen << " but at most " << rec.expected
         << " fit; ranks must pass the same topk_idx to dispatch and combine";
      return Error(ErrorCode::kBroken, os.str());
    case kDevLlFp8Mismatch:
      // expected and seen hold cast modes: bit 0 use_fp8, bit 1 round_scale.
      os << "low_latency_dispatch: peer rank " << rec.peer
         << " passed use_fp8 = " << ((rec.seen & 1) ? "true" : "false")
         << ", round_scale = " << ((rec.seen & 2) ? "true" : "false")
         << " but this rank use_fp8 = " << ((rec.expected & 1) ? "true" : "false")
         << ", round_scale = " << ((rec.expected & 2) ? "true" : "false")
         << "; every rank must pass the same";
      return Error(ErrorCode::kBroken, os.str());
    default:
      os << "unknown device error code " << rec.code;
      return Error(ErrorCode::kCuda, os.str());
  }
}

}  // namespace epcomm::cuda
