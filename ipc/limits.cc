#include <fstream>

#include "ipc/types.h"

namespace dipc::ipc {

Limits Limits::read_proc() {
  Limits l;
  {
    std::ifstream f("/proc/sys/kernel/sem");
    int a, b, c, d;
    if (f >> a >> b >> c >> d) {
      l.semmsl = a;
      l.semmns = b;
      l.semopm = c;
      l.semmni = d;
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
  return l;
}

}  // namespace dipc::ipc
