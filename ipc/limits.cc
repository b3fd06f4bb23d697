#include <fstream>

#include "ipc/types.h"

namespace dipc::ipc {

// The sysctls the kernel's ipc namespace uses; a missing or malformed file keeps the default. SEMVMX and SEMAEM
// are compile-time constants in Linux (32767), not sysctls.
Limits Limits::read_proc() {
  Limits l;
  {
    std::ifstream f("/proc/sys/kernel/sem");  // "semmsl semmns semopm semmni"
    int msl, mns, opm, mni;
    if (f >> msl >> mns >> opm >> mni) {
      l.semmsl = msl;
      l.semmns = mns;
      l.semopm = opm;
      l.semmni = mni;
    }
  }
  auto one = [](const char* path, int& out) {
    std::ifstream f(path);
    int v;
    if (f >> v) out = v;
  };
  one("/proc/sys/kernel/msgmax", l.msgmax);
  one("/proc/sys/kernel/msgmnb", l.msgmnb);
  one("/proc/sys/kernel/msgmni", l.msgmni);
  one("/proc/sys/kernel/shmmni", l.shmmni);
  auto one64 = [](const char* path, uint64_t& out) {
    std::ifstream f(path);
    uint64_t v;
    if (f >> v) out = v;
  };
  one64("/proc/sys/kernel/shmmax", l.shmmax);
  one64("/proc/sys/kernel/shmall", l.shmall);
  return l;
}

}  // namespace dipc::ipc
