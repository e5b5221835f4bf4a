// resident_memory.cpp — the process's resident memory and its peak per step (cpu_runtime.h), read
// from Linux's /proc/self/status (VmRSS, VmHWM) and restarted through /proc/self/clear_refs.
#include <fstream>
#include <sstream>
#include <string>

#include "hybridmoe/cpu_runtime.h"

namespace hybridmoe {

namespace {

// A field of /proc/self/status in KiB ("VmRSS:", "VmHWM:"); false where it is not there.
bool status_kib(const std::string& text, const std::string& key, double& kib) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line))
    if (line.rfind(key, 0) == 0) {
      std::istringstream fields(line.substr(key.size()));
      return static_cast<bool>(fields >> kib);
    }
  return false;
}

}  // namespace

ResidentMemory resident_memory() {
  std::ifstream in("/proc/self/status");
  std::stringstream text;
  text << in.rdbuf();
  ResidentMemory m;
  double rss = 0, hwm = 0;
  if (!status_kib(text.str(), "VmRSS:", rss) || !status_kib(text.str(), "VmHWM:", hwm)) return m;
  m.known = true;
  m.current_mb = rss / 1024.0;
  m.peak_mb = hwm / 1024.0;
  return m;
}

bool reset_peak_resident_memory() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return out.good();
}

}  // namespace hybridmoe
