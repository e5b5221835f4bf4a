// cpu_runtime.cpp — hybridmoe.configure_cpu: the thread layout and the large-buffer cache of
// cpu_runtime.h for a Python process (the hmoe program applies both itself).
#include "hybridmoe/cpu_runtime.h"
#include "bindings.h"

namespace hybridmoe::python {

void bind_cpu_runtime(py::module_& m) {
  m.def(
      "configure_cpu",
      [](c10::optional<int> threads, bool buffer_cache, int64_t max_cached_bytes) {
        const int n = threads.has_value() ? *threads : default_intra_op_threads(1);
        const CpuThreads t = configure_cpu_threads(n);
        if (buffer_cache) install_cpu_buffer_cache(max_cached_bytes);
        py::dict d;
        d["intra_op_threads"] = t.intra_op;
        d["blas_threads"] = t.blas;
        d["blas_controllable"] = t.blas_controllable;
        d["buffer_cache"] = cpu_buffer_cache_stats().installed;
        d["description"] = describe(t);
        return d;
      },
      py::arg("threads") = py::none(), py::arg("buffer_cache") = true,
      py::arg("max_cached_bytes") = int64_t{4} << 30,
      "Sets how this process uses the CPU for hybridmoe (and torch): `threads` intra-op threads "
      "(default: OMP_NUM_THREADS if set, else every core this process may use) with OpenBLAS "
      "single-threaded beside them, so that torch's and OpenBLAS's pools never compete for the "
      "cores; and, with buffer_cache, large CPU buffers reused across steps (up to "
      "max_cached_bytes held). Call it once, before training. Returns what is in force.");
  m.def(
      "cpu_buffer_cache_stats",
      [] {
        const CpuBufferCacheStats s = cpu_buffer_cache_stats();
        py::dict d;
        d["installed"] = s.installed;
        d["cached_bytes"] = s.cached_bytes;
        d["reused"] = s.reused;
        d["fresh"] = s.fresh;
        return d;
      },
      "What the large-buffer cache of configure_cpu holds and has served.");
}

}  // namespace hybridmoe::python
