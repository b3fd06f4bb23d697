#include "common/config.h"

#include <ifaddrs.h>
#include <unistd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <toml++/toml.h>

namespace dipc {

uint32_t default_block_size() {
  const auto page = static_cast<uint32_t>(sysconf(_SC_PAGESIZE));
  return page > 4096 ? page : 4096;
}

const NodeConf* Config::node(uint16_t id) const {
  for (const auto& n : nodes)
    if (n.id == id) return &n;
  return nullptr;
}

const NodeConf* Config::node_by_name(const std::string& name) const {
  for (const auto& n : nodes)
    if (n.name == name) return &n;
  return nullptr;
}

bool Config::policy_distributes(int32_t key) const {
  if (key == 0) return distribute == Distribute::kAll && distribute_private;  // IPC_PRIVATE
  switch (distribute) {
    case Distribute::kAll:
      return true;
    case Distribute::kRanges:
      for (const auto& r : ranges)
        if (key >= r.lo && key <= r.hi) return true;
      return false;
    case Distribute::kFlag:
      break;
  }
  return false;
}

Config default_config() {
  Config c;
  c.nodes.push_back(NodeConf{1, "node1", "127.0.0.1", 7450});
  c.self = 1;
  return c;
}

namespace {
// Range-checked against [lo, hi] and against T: a value T cannot hold is out of range, never truncated.
template <typename T>
bool get_int(const toml::node_view<toml::node>& v, T& out, int64_t lo, int64_t hi) {
  if (!v) return true;
  auto x = v.value<int64_t>();
  if (!x || *x < lo || *x > hi) return false;
  if (*x < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
      static_cast<uint64_t>(*x) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
    return false;
  out = static_cast<T>(*x);
  return true;
}
// "word:N" with N a whole decimal number in [lo, hi].
bool word_number(const std::string& text, const char* word, long lo, long hi, long* n) {
  std::string w = std::string(word) + ":";
  if (text.rfind(w, 0) != 0 || text.size() == w.size()) return false;
  char* end = nullptr;
  long v = strtol(text.c_str() + w.size(), &end, 10);
  if (*end != 0 || v < lo || v > hi) return false;
  *n = v;
  return true;
}
}  // namespace

bool parse_sched(const std::string& text, SchedSpec* out) {
  SchedSpec s;
  long n = 0;
  if (text == "auto") {
  } else if (text == "other") {
    s.kind = SchedSpec::kOther;
  } else if (word_number(text, "nice", -20, 19, &n)) {
    s = {SchedSpec::kNice, static_cast<int>(n)};
  } else if (word_number(text, "fifo", 1, 99, &n)) {
    s = {SchedSpec::kFifo, static_cast<int>(n)};
  } else if (word_number(text, "rr", 1, 99, &n)) {
    s = {SchedSpec::kRr, static_cast<int>(n)};
  } else {
    return false;
  }
  if (out) *out = s;
  return true;
}

bool parse_bind(const std::string& text, BindSpec* out) {
  BindSpec b;
  long n = 0;
  if (text == "none") {
  } else if (word_number(text, "core", 0, 4095, &n)) {
    b = {BindSpec::kCore, static_cast<unsigned>(n)};
  } else if (word_number(text, "pu", 0, 4095, &n)) {
    b = {BindSpec::kPu, static_cast<unsigned>(n)};
  } else {
    return false;
  }
  if (out) *out = b;
  return true;
}

Result<Config> parse_config(const std::string& text, std::string* error) {
  Config c;
  toml::table tbl;
  try {
    tbl = toml::parse(text);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << "line " << e.source().begin.line << ": " << e.description();
    if (error) *error = os.str();
    return Status::err(EINVAL);
  }
  auto fail = [&](const std::string& m) -> Result<Config> {
    if (error) *error = m;
    return Status::err(EINVAL);
  };
  if (auto cl = tbl["cluster"]) {
    c.secret_file = cl["secret_file"].value_or(c.secret_file);
    c.transport = cl["transport"].value_or(c.transport);
    c.socket = cl["socket"].value_or(c.socket);
    c.log_level = cl["log_level"].value_or(c.log_level);
    if (!get_int(cl["busy_poll_us"], c.busy_poll_us, 0, 1000000)) return fail("cluster.busy_poll_us out of range");
    if (!get_int(cl["answer_poll_us"], c.answer_poll_us, 0, 100000))
      return fail("cluster.answer_poll_us out of range");
    if (!get_int(cl["rebuild_wait_ms"], c.rebuild_wait_ms, 0, 600000))
      return fail("cluster.rebuild_wait_ms out of range");
    c.sched = cl["sched"].value_or(c.sched);
    c.bind = cl["bind"].value_or(c.bind);
    if (!parse_sched(c.sched, nullptr))
      return fail("cluster.sched must be \"auto\", \"other\", \"nice:N\" (-20..19), \"fifo:P\" or \"rr:P\" (1..99)");
    if (!parse_bind(c.bind, nullptr)) return fail("cluster.bind must be \"none\", \"core:N\" or \"pu:N\"");
    std::string sec = cl["link_security"].value_or(std::string(link_security_name(c.link_security)));
    if (sec == "none")
      c.link_security = LinkSecurity::kNone;
    else if (sec == "mac")
      c.link_security = LinkSecurity::kMac;
    else if (sec == "encrypt")
      c.link_security = LinkSecurity::kEncrypt;
    else
      return fail("cluster.link_security must be \"mac\", \"encrypt\" or \"none\"");
    if (c.transport != "auto" && c.transport != "tcp" && c.transport != "verbs")
      return fail("cluster.transport must be \"auto\", \"tcp\" or \"verbs\"");
  }
  if (auto* arr = tbl["node"].as_array()) {
    std::set<uint16_t> ids;
    std::set<std::string> names;
    for (auto& el : *arr) {
      auto* t = el.as_table();
      if (!t) return fail("[[node]] entries must be tables");
      NodeConf n;
      toml::node_view<toml::node> v{t};
      if (!get_int(v["id"], n.id, 1, 255) || n.id == 0) return fail("node.id must be 1..255");
      n.name = v["name"].value_or("node" + std::to_string(n.id));
      n.address = v["address"].value_or(std::string("127.0.0.1"));
      n.port = 7450;
      if (!get_int(v["port"], n.port, 1, 65535)) return fail("node.port must be 1..65535");
      if (!ids.insert(n.id).second) return fail("duplicate node id " + std::to_string(n.id));
      if (!names.insert(n.name).second) return fail("duplicate node name " + n.name);
      c.nodes.push_back(n);
    }
  }
  if (c.nodes.empty()) c.nodes = default_config().nodes;
  if (auto p = tbl["policy"]) {
    std::string d = p["distribute"].value_or(std::string("flag"));
    if (d == "flag")
      c.distribute = Distribute::kFlag;
    else if (d == "all")
      c.distribute = Distribute::kAll;
    else if (d == "ranges")
      c.distribute = Distribute::kRanges;
    else
      return fail("policy.distribute must be \"flag\", \"all\" or \"ranges\"");
    if (auto pv = p["private"]) {
      if (!pv.is_boolean()) return fail("policy.private must be true or false");
      c.distribute_private = pv.value_or(true);
    }
    if (auto* rs = p["ranges"].as_array()) {
      for (auto& r : *rs) {
        auto* pair = r.as_array();
        if (!pair || pair->size() != 2) return fail("policy.ranges entries must be [lo, hi]");
        auto lo = (*pair)[0].value<int64_t>();
        auto hi = (*pair)[1].value<int64_t>();
        if (!lo || !hi || *lo > *hi) return fail("policy.ranges entries must be [lo, hi] with lo <= hi");
        c.ranges.push_back(KeyRange{*lo, *hi});
      }
    }
  }
  if (auto ds = tbl["dsm"]) {
    // A block is a whole number of this node's pages (16 KiB or 64 KiB on some arm64 and ppc64el kernels); 4096 is
    // the smallest page of any Linux port.
    const auto page = static_cast<int64_t>(sysconf(_SC_PAGESIZE));
    if (!get_int(ds["block_size"], c.block_size, 4096, 1LL << 31))
      return fail("dsm.block_size out of range (4096 .. 2147483648)");
    if ((c.block_size & (c.block_size - 1)) != 0) return fail("dsm.block_size must be a power of two");
    if (c.block_size < page)
      return fail("dsm.block_size " + std::to_string(c.block_size) + " is smaller than this node's page size " +
                  std::to_string(page) + ": set block_size >= " + std::to_string(page) + " on every node");
    if (!get_int(ds["quantum_us"], c.quantum_us, 0, 10000000)) return fail("dsm.quantum_us out of range");
  }
  if (tbl["transport"] && !tbl["transport"].as_table())
    return fail("transport must be a table of provider tables ([transport.tcp], [transport.verbs])");
  if (auto* tr = tbl["transport"].as_table()) {
    for (auto& [name, sec] : *tr) {
      auto* t = sec.as_table();
      if (!t) return fail("transport." + std::string(name.str()) + " must be a table ([transport." +
                          std::string(name.str()) + "])");
      std::ostringstream os;
      os << *t;
      c.transport_sections[std::string(name.str())] = os.str();
    }
  }
  if (c.nodes.size() > 1 && c.secret_file.empty())
    return fail("cluster.secret_file is required when the cluster has more than one node");
  return c;
}

Result<Config> load_config(const std::string& path, std::string* error) {
  std::ifstream f(path);
  if (!f) {
    if (error) *error = "cannot read " + path;
    return Status::err(ENOENT);
  }
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), error);
}

static std::set<std::string> local_addresses() {
  std::set<std::string> out;
  ifaddrs* ifa = nullptr;
  if (getifaddrs(&ifa) != 0) return out;
  for (auto* p = ifa; p; p = p->ifa_next) {
    if (!p->ifa_addr) continue;
    char buf[INET6_ADDRSTRLEN];
    if (p->ifa_addr->sa_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(p->ifa_addr)->sin_addr, buf, sizeof buf);
      out.insert(buf);
    } else if (p->ifa_addr->sa_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(p->ifa_addr)->sin6_addr, buf, sizeof buf);
      out.insert(buf);
    }
  }
  freeifaddrs(ifa);
  return out;
}

Status select_self(Config& cfg, const std::string& which, std::string* error) {
  if (!which.empty()) {
    const NodeConf* n = cfg.node_by_name(which);
    if (!n) {
      char* end = nullptr;
      long id = strtol(which.c_str(), &end, 10);
      if (end && *end == 0 && id > 0 && id < 256) n = cfg.node(static_cast<uint16_t>(id));
    }
    if (!n) {
      if (error) *error = "node '" + which + "' is not in the configuration";
      return Status::err(ENOENT);
    }
    cfg.self = n->id;
    return Status::ok();
  }
  if (cfg.nodes.size() == 1) {
    cfg.self = cfg.nodes[0].id;
    return Status::ok();
  }
  auto local = local_addresses();
  const NodeConf* found = nullptr;
  for (const auto& n : cfg.nodes) {
    if (local.count(n.address) && n.address.rfind("127.", 0) != 0) {
      if (found) {
        if (error) *error = "several configured nodes have local addresses; pass --node";
        return Status::err(EINVAL);
      }
      found = &n;
    }
  }
  if (!found) {
    if (error) *error = "no configured node has a local address; pass --node";
    return Status::err(ENOENT);
  }
  cfg.self = found->id;
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------------------------
// SectionReader

struct SectionReader::Impl {
  toml::table tbl;
  std::set<std::string> read;
  bool parsed = true;
};

SectionReader::SectionReader(const Config& cfg, const std::string& provider)
    : impl_(std::make_unique<Impl>()), prefix_("transport." + provider + ".") {
  auto it = cfg.transport_sections.find(provider);
  if (it == cfg.transport_sections.end()) return;
  try {
    impl_->tbl = toml::parse(it->second);
  } catch (const toml::parse_error& e) {
    impl_->parsed = false;
    error_ = "[transport." + provider + "]: " + std::string(e.description());
  }
}

SectionReader::~SectionReader() = default;

bool SectionReader::get_i64(const std::string& key, int64_t& out, int64_t lo, int64_t hi, bool& present) {
  impl_->read.insert(key);
  present = false;
  auto v = impl_->tbl[key];
  if (!v) return true;
  auto x = v.value<int64_t>();
  if (!x || *x < lo || *x > hi || !v.is_integer()) {
    error_ = prefix_ + key + " must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
    return false;
  }
  out = *x;
  present = true;
  return true;
}

bool SectionReader::get_bool(const std::string& key, bool& out) {
  impl_->read.insert(key);
  auto v = impl_->tbl[key];
  if (!v) return true;
  if (!v.is_boolean()) {
    error_ = prefix_ + key + " must be true or false";
    return false;
  }
  out = v.value_or(out);
  return true;
}

bool SectionReader::get_string(const std::string& key, std::string& out) {
  impl_->read.insert(key);
  auto v = impl_->tbl[key];
  if (!v) return true;
  if (!v.is_string()) {
    error_ = prefix_ + key + " must be a string";
    return false;
  }
  out = v.value_or(out);
  return true;
}

bool SectionReader::finish() {
  if (!impl_->parsed) return false;
  if (!error_.empty()) return false;
  for (auto& [k, v] : impl_->tbl) {
    if (!impl_->read.count(std::string(k.str()))) {
      error_ = "unknown setting " + prefix_ + std::string(k.str());
      return false;
    }
  }
  return true;
}

}  // namespace dipc
