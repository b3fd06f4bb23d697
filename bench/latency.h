// Latency samples -> the figures every bench prints: p50 / p99 / p99.9 / mean / min / max and a 101-point CDF
// (the 0th..100th percentiles) that bench/plot draws. Shared by ipc_bench and shm_bench; header-only.
#pragma once

#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace dipc_bench {

inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

struct Latency {
  double p50 = 0, p99 = 0, p999 = 0, mean = 0, min = 0, max = 0;  // microseconds
  size_t n = 0;
  std::vector<double> cdf;  // cdf[k] = k-th percentile, k = 0..100 (empty when n == 0)
};

// Nearest-rank percentile of sorted samples, q in [0, 1].
inline double percentile_us(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return static_cast<double>(sorted[rank - 1]) / 1e3;
}

inline Latency latency_of(std::vector<int64_t> ns) {
  Latency l;
  if (ns.empty()) return l;
  std::sort(ns.begin(), ns.end());
  l.n = ns.size();
  l.p50 = percentile_us(ns, 0.50);
  l.p99 = percentile_us(ns, 0.99);
  l.p999 = percentile_us(ns, 0.999);
  l.min = static_cast<double>(ns.front()) / 1e3;
  l.max = static_cast<double>(ns.back()) / 1e3;
  double sum = 0;
  for (int64_t v : ns) sum += static_cast<double>(v);
  l.mean = sum / static_cast<double>(l.n) / 1e3;
  for (int k = 0; k <= 100; ++k) l.cdf.push_back(k == 0 ? l.min : percentile_us(ns, k / 100.0));
  return l;
}

// "v0,v1,...,v100" (microseconds, 2 decimals): the CDF as one token, for line-oriented reports.
inline std::string cdf_csv(const Latency& l) {
  std::string s;
  char b[32];
  for (size_t i = 0; i < l.cdf.size(); ++i) {
    snprintf(b, sizeof b, "%s%.2f", i ? "," : "", l.cdf[i]);
    s += b;
  }
  return s;
}

}  // namespace dipc_bench
