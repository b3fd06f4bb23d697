// Blocked means registered: when a call is queued at its home, the home tells the caller's node, which tells the
// program; the program polls (never sleeps) until then. A program seen sleeping in a SysV call is therefore
// registered as a waiter at the home, so an IPC_RMID or a wake-up that follows sees it, as in the kernel.
#include "ipc/service.h"

namespace dipc::ipc {

namespace {
constexpr uint64_t kLocalTokenMask = (uint64_t{1} << 48) - 1;
}

void Service::note_blocked(uint64_t token) {
  auto origin = static_cast<uint16_t>(token >> 48);
  if (origin != cfg_.self) return notify(origin, kBlockedNote, encode_body(HomeCancelMsg{token}));
  if (blocked_hook_) blocked_hook_(token & kLocalTokenMask);
}

void Service::on_blocked_note(uint16_t from, ByteView body) {
  HomeCancelMsg m;
  if (!decode_body(body, m)) return;
  auto it = inflight_.find(m.token);
  // Only the home the request went to speaks for it.
  if (it == inflight_.end() || it->second != from) return;
  if (blocked_hook_) blocked_hook_(m.token & kLocalTokenMask);
}

}  // namespace dipc::ipc
