// resident_memory.cpp — the process's resident memory and its peak per step (cpu_runtime.h), read
// from Linux's /proc/self/status (VmRSS, VmHWM) and restarted through /proc/self/clear_refs.
#include <fstream>
#include <sstream>
#include <string>

#include "hybridmoe/cpu_runtime.h"

namespace hybridmoe {

ResidentMemory resident_memory() {
  // VmRSS and VmHWM lines of /proc/self/status, in KiB.
  std::ifstream in("/proc/self/status");
  std::string line;
  bool rss = false, hwm = false;
  ResidentMemory m;
  while (std::getline(in, line) && !(rss && hwm)) {
    const bool is_rss = line.rfind("VmRSS:", 0) == 0, is_hwm = line.rfind("VmHWM:", 0) == 0;
    if (!is_rss && !is_hwm) continue;
    double kib = 0;
    if (!(std::istringstream(line.substr(6)) >> kib)) return ResidentMemory();
    if (is_rss) {
      m.current_mb = kib / 1024.0;
      rss = true;
    } else {
      m.peak_mb = kib / 1024.0;
      hwm = true;
    }
  }
  m.known = rss && hwm;
  return m.known ? m : ResidentMemory();
}

bool reset_peak_resident_memory() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return out.good();
}

}  // namespace hybridmoe
