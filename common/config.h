// Node configuration (TOML, parsed with toml++). See README "Configuration reference".
//
//   [cluster]
//   secret_file = "/etc/dipc/secret"   # shared by all nodes; required when there is more than one node
//   transport   = "auto"               # "auto" (verbs if a device is up, else tcp), "tcp", "verbs"
//   socket      = "@dipc"              # local client socket; '@' = abstract (per network namespace)
//   log_level   = "info"
//   busy_poll_us = 0                   # poll this long before sleeping (latency for CPU; 0: off)
//   answer_poll_us = 200               # a remote answer a program is blocked on (a forwarded call, a page):
//                                      # poll for it up to this long, yielding the CPU, instead of sleeping
//   sched = "auto"                     # the daemon's scheduling: "auto" (fifo:10 when allowed, else other),
//                                      # "other" (unchanged), "nice:N" (-20..19), "fifo:P" / "rr:P" (1..99);
//                                      # raising needs CAP_SYS_NICE (root has it; systemd: AmbientCapabilities)
//   bind = "none"                      # pin the daemon with hwloc: "none", "core:N", "pu:N" (logical indexes)
//   link_security = "mac"              # node-to-node frames after the handshake: "mac" (authenticated, sequence-
//                                      # numbered), "encrypt" (and encrypted; tcp only), "none"; same on every node
//   rebuild_wait_ms = 10000            # a (re)started daemon answers no key lookup it referees until every peer has
//                                      # sent its key inventory, or is lost, or this long has passed (ipc/service.h)
//
//   [[node]]                           # one table per node
//   id = 1                             # 1..255, unique
//   name = "node1"
//   address = "10.77.0.1"
//   port = 7450
//
//   [policy]
//   distribute = "flag"                # "flag": only keys created with IPC_DIPC; "all": every key;
//                                      # "ranges": keys inside `ranges`, plus IPC_DIPC ones
//   ranges = [[0x1000, 0x1fff]]
//   private = true                     # under "all": IPC_PRIVATE objects are distributed too (false: kernel)
//
//   [dsm]
//   block_size = 4096                  # coherence unit: a power of two >= every node's page size
//                                      # (default: 4096, or this node's page size if larger)
//   quantum_us = 20                    # minimum time a node keeps a block it just got
//
//   [transport.tcp]                    # one table per provider, read by the provider itself (SectionReader);
//   connect_timeout_ms = 10000         # see transport/tcp/tcp_transport.h, TcpOptions, for tcp's settings
//
// Every integer is range-checked against its setting's range and its type: out of range is an error naming the
// setting, never a silent clamp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace dipc {

struct NodeConf {
  uint16_t id = 0;
  std::string name;
  std::string address;
  uint16_t port = 0;
};

enum class Distribute : uint8_t { kFlag = 0, kAll = 1, kRanges = 2 };

struct KeyRange {
  int64_t lo = 0;  // inclusive, as key_t values (may be negative when read as int)
  int64_t hi = 0;
};

// The default coherence unit: 4 KiB, or this node's page size where pages are larger.
uint32_t default_block_size();

// [cluster] link_security: what protects node-to-node frames after the handshake (transport/link_seal.h).
enum class LinkSecurity : uint8_t { kNone = 0, kMac = 1, kEncrypt = 2 };
inline const char* link_security_name(LinkSecurity s) {
  switch (s) {
    case LinkSecurity::kNone: return "none";
    case LinkSecurity::kMac: return "mac";
    case LinkSecurity::kEncrypt: return "encrypt";
  }
  return "?";
}

struct Config {
  std::vector<NodeConf> nodes;
  uint16_t self = 0;  // id of this node
  std::string transport = "auto";
  std::string secret_file;
  std::string socket = "@dipc";
  std::string log_level = "info";
  uint32_t busy_poll_us = 0;
  uint32_t answer_poll_us = 200;
  std::string sched = "auto";
  std::string bind = "none";
  LinkSecurity link_security = LinkSecurity::kMac;
  uint32_t rebuild_wait_ms = 10000;
  Distribute distribute = Distribute::kFlag;
  std::vector<KeyRange> ranges;
  bool distribute_private = true;  // [policy] private: under "all", IPC_PRIVATE is distributed too
  uint32_t block_size = default_block_size();
  uint32_t quantum_us = 20;
  // [transport.<name>] tables as TOML text, keyed by provider name; each provider parses its own (SectionReader).
  std::map<std::string, std::string> transport_sections;

  const NodeConf* node(uint16_t id) const;
  const NodeConf* node_by_name(const std::string& name) const;
  const NodeConf& me() const { return *node(self); }
  // Does the policy make this key distributed even without IPC_DIPC? IPC_PRIVATE: under "all" (unless private =
  // false) only.
  bool policy_distributes(int32_t key) const;
};

// [cluster] sched and bind, validated at parse time and applied by dipcd (daemon/sched.cc).
struct SchedSpec {
  enum Kind : uint8_t { kAuto, kOther, kNice, kFifo, kRr } kind = kAuto;
  int value = 0;  // nice value or real-time priority
};
struct BindSpec {
  enum Kind : uint8_t { kNone, kCore, kPu } kind = kNone;
  unsigned index = 0;
};
bool parse_sched(const std::string& text, SchedSpec* out);
bool parse_bind(const std::string& text, BindSpec* out);

// Reads one provider's [transport.<name>] table: typed, range-checked values, and a check that no unknown key is
// left (a typo is an error, not a silently ignored setting). Errors name the setting ("transport.tcp.<key>").
class SectionReader {
 public:
  SectionReader(const Config& cfg, const std::string& provider);
  ~SectionReader();
  // Leaves `out` untouched when the key is absent. False (and error()) when present but not an integer in
  // [lo, hi] (also clipped to T's range).
  template <typename T>
  bool get(const std::string& key, T& out, int64_t lo, int64_t hi) {
    int64_t tlo = std::numeric_limits<T>::min(), thi = static_cast<int64_t>(
                                                      std::min<uint64_t>(std::numeric_limits<T>::max(),
                                                                         std::numeric_limits<int64_t>::max()));
    int64_t v = 0;
    bool present = false;
    if (!get_i64(key, v, std::max(lo, tlo), std::min(hi, thi), present)) return false;
    if (present) out = static_cast<T>(v);
    return true;
  }
  bool get_bool(const std::string& key, bool& out);
  bool get_string(const std::string& key, std::string& out);
  // Call after every get(): false if the section has a key nobody read, or could not be parsed.
  bool finish();
  const std::string& error() const { return error_; }

 private:
  bool get_i64(const std::string& key, int64_t& out, int64_t lo, int64_t hi, bool& present);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string prefix_;
  std::string error_;
};

// Parses TOML text. On error returns EINVAL and fills `error` with a message naming the line.
Result<Config> parse_config(const std::string& toml_text, std::string* error);
Result<Config> load_config(const std::string& path, std::string* error);
// The embedded single-machine default: one node, loopback, no secret needed.
Config default_config();
// Picks `self`: by id or name if `which` is given, else the only node, else the node whose address is local.
Status select_self(Config& cfg, const std::string& which, std::string* error);

}  // namespace dipc
