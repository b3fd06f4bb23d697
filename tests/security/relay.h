// The security suite's men in the middle (link_test.cc's in-process relay, tamper_relay between real daemons):
// writing a whole buffer, and one relay step that forwards bytes or whole frames (common/frame.h).
#pragma once

#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/frame.h"

namespace dipc::test {

// Writes all of [p, p+n) to a blocking socket; false when the connection is gone.
inline bool send_all(int fd, const uint8_t* p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads what `from` holds now and passes it on to `to`: unchanged when `acc` is null; else appended to `acc` (the
// bytes not yet a whole frame) and sent frame by frame, each whole frame first handed to `edit(header, frame)`,
// which may alter it. False when the connection is over or a frame header does not decode.
template <class Edit>
bool relay_step(int from, int to, std::vector<uint8_t>* acc, Edit&& edit) {
  uint8_t buf[65536];
  ssize_t n = recv(from, buf, sizeof buf, MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return false;
  if (n < 0) return true;
  if (!acc) return send_all(to, buf, static_cast<size_t>(n));
  acc->insert(acc->end(), buf, buf + n);
  while (acc->size() >= kFrameHeaderSize) {
    FrameHeader h;
    if (decode_frame_header(acc->data(), h)) return false;
    size_t whole = kFrameHeaderSize + h.length;
    if (acc->size() < whole) break;
    std::vector<uint8_t> frame(acc->begin(), acc->begin() + static_cast<ptrdiff_t>(whole));
    acc->erase(acc->begin(), acc->begin() + static_cast<ptrdiff_t>(whole));
    edit(h, frame);
    if (!send_all(to, frame.data(), frame.size())) return false;
  }
  return true;
}

}  // namespace dipc::test
