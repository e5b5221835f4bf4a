// cpu_runtime.h — how a hybridmoe process uses the CPU: its thread pools and its large buffers.
// The `hmoe` program applies both at start; a program embedding hybridmoe (or Python, through
// hybridmoe.configure_cpu) calls them once, before its first step.
#pragma once

#include <cstdint>
#include <string>

namespace hybridmoe {

/// The thread layout of a process. LibTorch's intra-op pool (OpenMP) and OpenBLAS's own pool
/// (Debian's pthread build) are two pools; run together on the same cores they spin against each
/// other and a step can take several times longer. With `intra_op_threads` > 1 the BLAS pool is
/// made single-threaded and every large GEMM that hybridmoe runs (the experts' grouped GEMMs) is
/// shared out over the intra-op threads instead (kernels/cpu/grouped_gemm.h), so one pool serves
/// both. With 1 intra-op thread, BLAS keeps `blas_threads_when_single` threads (0: unchanged).
struct CpuThreads {
  int intra_op = 1;  // at::get_num_threads() after configure_cpu_threads
  int blas = 0;      // the BLAS pool's thread count after it (0: cannot be read)
  bool blas_controllable = false;
};

/// Sets the intra-op thread count (>= 1) and the BLAS pool as described above; returns what is in
/// force after. Refuses a count < 1, naming it.
CpuThreads configure_cpu_threads(int intra_op_threads, int blas_threads_when_single = 0);

/// The cores this process may run on: its affinity mask's count (sched_getaffinity), else
/// std::thread::hardware_concurrency(), at least 1.
int64_t usable_cores();

/// The intra-op threads a rank should use when `local_ranks` ranks share this machine: the value
/// of OMP_NUM_THREADS where the user set it, else the cores this process may run on (its CPU
/// affinity) divided among the local ranks, at least 1. local_ranks: >= 1.
int default_intra_op_threads(int64_t local_ranks);

/// One line for logs, e.g. "2 intra-op threads, BLAS single-threaded (OpenBLAS)".
std::string describe(const CpuThreads& threads);

/// Large CPU buffers kept for reuse: blocks of at least `min_bytes` freed by tensors are held
/// (up to `max_cached_bytes` in all) and handed to the next request of up to 1.25x their size,
/// so a training step that allocates the same large activations every step stops paying for a
/// fresh mapping and a page fault per 4 KiB page each time. Installed as LibTorch's CPU
/// allocator for the rest of the process; tensors allocated before keep their own deleter.
/// Idempotent (a second call only changes the limits). Refuses min_bytes < 4096 or
/// max_cached_bytes < 0.
void install_cpu_buffer_cache(int64_t max_cached_bytes = int64_t{4} << 30,
                              int64_t min_bytes = int64_t{1} << 20);

/// What the buffer cache holds and has done (zeros where it is not installed).
struct CpuBufferCacheStats {
  bool installed = false;
  int64_t cached_bytes = 0;  // held, free, now
  int64_t reused = 0;        // requests served from the cache
  int64_t fresh = 0;         // requests that allocated a new block
};
CpuBufferCacheStats cpu_buffer_cache_stats();

/// The memory this process holds in RAM (its resident set, Linux's /proc/self/status): now, and
/// the peak since the process started or since the last reset_peak_resident_memory(). Both 0 and
/// `known` false where the system does not report them.
struct ResidentMemory {
  bool known = false;
  double current_mb = 0.0;  // VmRSS
  double peak_mb = 0.0;     // VmHWM
};
ResidentMemory resident_memory();

/// Starts a new peak at the current resident set (Linux: writes 5 to /proc/self/clear_refs), so
/// that resident_memory().peak_mb measures a step. False where the system does not allow it.
bool reset_peak_resident_memory();

}  // namespace hybridmoe
