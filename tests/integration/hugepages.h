// The host's huge page pool for a test: vm.nr_hugepages raised for a scope and restored after (the simulated nodes
// share it: it is not per namespace), and the pool's counters from /proc/meminfo.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dipc::test {

struct HugePages {
  long before = -1;
  explicit HugePages(long more) {
    FILE* f = fopen("/proc/sys/vm/nr_hugepages", "r");
    if (!f) return;
    if (fscanf(f, "%ld", &before) != 1) before = -1;
    fclose(f);
    if (before >= 0 && more) set(before + more);
  }
  ~HugePages() {
    if (before >= 0) set(before);
  }
  HugePages(const HugePages&) = delete;
  HugePages& operator=(const HugePages&) = delete;
  static bool set(long n) {
    FILE* f = fopen("/proc/sys/vm/nr_hugepages", "w");
    if (!f) return false;
    bool ok = fprintf(f, "%ld\n", n) > 0;
    return fclose(f) == 0 && ok;
  }
  // A /proc/meminfo number: "HugePages_Free", "HugePages_Rsvd", "Hugepagesize" (in kB); -1 if absent.
  static long meminfo(const char* name) {
    FILE* f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(name);
    while (fgets(line, sizeof line, f))
      if (strncmp(line, name, n) == 0 && line[n] == ':') v = strtol(line + n + 1, nullptr, 10);
    fclose(f);
    return v;
  }
  // Huge pages free and not reserved: what a new reservation can take.
  static long available() { return meminfo("HugePages_Free") - meminfo("HugePages_Rsvd"); }
};

}  // namespace dipc::test
