// Configuration of the transport layer: range checks (no silent clamp), the providers' own [transport.<name>]
// tables, and the memlock check a pinning provider needs at start.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/config.h"
#include "daemon/transports.h"
#include "transport/tcp/tcp_transport.h"
#include "transport/verbs/verbs_transport.h"

namespace dipc {
namespace {

TEST(ConfigRanges, ABlockSizeTheFieldCannotHoldIsAnErrorNotZero) {
  std::string err;
  auto c = parse_config("[dsm]\nblock_size = 4294967296\n", &err);  // 2^32: was accepted as 0
  EXPECT_FALSE(c);
  EXPECT_NE(err.find("dsm.block_size"), std::string::npos) << err;
  auto ok = parse_config("[dsm]\nblock_size = 2147483648\n", &err);
  ASSERT_TRUE(ok) << err;
  EXPECT_EQ(ok->block_size, 2147483648u);
  EXPECT_FALSE(parse_config("[cluster]\nbusy_poll_us = -1\n", &err));
}

TEST(ConfigRanges, TcpOptionsAreSetFromTheTransportTcpTable) {
  std::string err;
  auto c = parse_config(
      "[transport.tcp]\nconnect_timeout_ms = 1234\nmax_queued_bytes = 16777216\n"
      "dead_peer_s = 0\n",
      &err);
  ASSERT_TRUE(c) << err;
  transport::TcpOptions o;
  ASSERT_TRUE(transport::parse_tcp_options(*c, o, &err)) << err;
  EXPECT_EQ(o.connect_timeout_ms, 1234);
  EXPECT_EQ(o.max_queued_bytes, size_t{16} << 20);
  EXPECT_EQ(o.dead_peer_s, 0);
  EXPECT_EQ(o.reconnect_min_ms, transport::TcpOptions().reconnect_min_ms);  // untouched: the default
}

TEST(ConfigRanges, BadOrUnknownTcpSettingsAreErrorsNamingTheSetting) {
  std::string err;
  transport::TcpOptions o;
  auto c = parse_config("[transport.tcp]\nconnect_timeout_ms = 0\n", &err);
  ASSERT_TRUE(c) << err;
  EXPECT_FALSE(transport::parse_tcp_options(*c, o, &err));
  EXPECT_NE(err.find("transport.tcp.connect_timeout_ms"), std::string::npos) << err;
  c = parse_config("[transport.tcp]\nconect_timeout_ms = 10\n", &err);  // a typo
  ASSERT_TRUE(c) << err;
  EXPECT_FALSE(transport::parse_tcp_options(*c, o, &err));
  EXPECT_NE(err.find("unknown setting transport.tcp.conect_timeout_ms"), std::string::npos) << err;
  c = parse_config("[transport.tcp]\nmax_unauthenticated = 70000\n", &err);
  ASSERT_TRUE(c) << err;
  EXPECT_FALSE(transport::parse_tcp_options(*c, o, &err));
  c = parse_config("[transport.tcp]\nreconnect_min_ms = 500\nreconnect_max_ms = 100\n", &err);
  ASSERT_TRUE(c) << err;
  EXPECT_FALSE(transport::parse_tcp_options(*c, o, &err));
  EXPECT_FALSE(parse_config("transport = 3\n[[node]]\nid = 1\n", &err));  // a top-level key: not a table
}

// [transport.verbs] odp (README "On-Demand Paging"): off by default, on/off from the file, DIPC_VERBS_ODP over the
// file (bench/memory.sh compares pinned and ODP that way), anything else an error naming the setting.
TEST(ConfigRanges, VerbsOdpComesFromTheFileOrTheEnvironmentAndABadValueIsAnError) {
  unsetenv("DIPC_VERBS_ODP");
  std::string err;
  transport::VerbsOptions o;
  auto c = parse_config("[transport.verbs]\ncredits = 64\n", &err);
  ASSERT_TRUE(c) << err;
  ASSERT_TRUE(transport::parse_verbs_options(*c, o, &err)) << err;
  EXPECT_EQ(o.odp, transport::VerbsOptions::Odp::kOff);
  c = parse_config("[transport.verbs]\nodp = \"on\"\n", &err);
  ASSERT_TRUE(c) << err;
  ASSERT_TRUE(transport::parse_verbs_options(*c, o, &err)) << err;
  EXPECT_EQ(o.odp, transport::VerbsOptions::Odp::kOn);
  setenv("DIPC_VERBS_ODP", "off", 1);
  ASSERT_TRUE(transport::parse_verbs_options(*c, o, &err)) << err;
  EXPECT_EQ(o.odp, transport::VerbsOptions::Odp::kOff);
  setenv("DIPC_VERBS_ODP", "yes", 1);
  EXPECT_FALSE(transport::parse_verbs_options(*c, o, &err));
  EXPECT_NE(err.find("DIPC_VERBS_ODP"), std::string::npos) << err;
  unsetenv("DIPC_VERBS_ODP");
  c = parse_config("[transport.verbs]\nodp = \"auto\"\n", &err);
  ASSERT_TRUE(c) << err;
  EXPECT_FALSE(transport::parse_verbs_options(*c, o, &err));
  EXPECT_NE(err.find("transport.verbs.odp"), std::string::npos) << err;
  c = parse_config("[transport.verbs]\nodp = true\n", &err);
  ASSERT_TRUE(c) << err;
  EXPECT_FALSE(transport::parse_verbs_options(*c, o, &err));
}

TEST(Memlock, APinningProviderWithATooLowLimitGetsAnErrorNamingTheSetting) {
  transport::Capabilities pins;
  pins.pins_memory = true;
  std::string err;
  Status s = daemon::check_memlock(pins, "verbs", 8u << 20, &err);
  EXPECT_EQ(s.code(), ENOMEM);
  EXPECT_NE(err.find("LimitMEMLOCK"), std::string::npos) << err;
  EXPECT_NE(err.find("verbs"), std::string::npos) << err;
  EXPECT_TRUE(daemon::check_memlock(pins, "verbs", UINT64_MAX, &err));
  EXPECT_TRUE(daemon::check_memlock(transport::Capabilities{}, "tcp", 0, &err));  // tcp pins nothing
}

}  // namespace
}  // namespace dipc
