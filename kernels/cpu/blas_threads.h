// blas_threads.h — control of the BLAS library's own thread pool, so that hybridmoe's CPU kernels
// can run many single-threaded GEMMs side by side on ATen's intra-op threads without
// oversubscribing the cores (BLAS threads x intra-op threads). OpenBLAS is found at run time
// through its public symbols; with any other BLAS the controls report themselves unavailable and
// the kernels keep to one BLAS call at a time.
#pragma once

namespace hybridmoe::kernels {

/// Whether this process's BLAS thread count can be read and set (OpenBLAS).
bool blas_threads_controllable();

/// The BLAS library's thread count; 0 where it cannot be read.
int blas_num_threads();

/// Sets the BLAS library's thread count for the whole process; false (nothing done) where it
/// cannot be set. n: >= 1.
bool set_blas_num_threads(int n);

/// While alive, BLAS calls run single-threaded (on the calling thread). Nests and may be held by
/// several threads at once: the first holder saves and lowers the count, the last restores it.
/// Use around a region that runs BLAS calls concurrently on intra-op threads.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;
};

}  // namespace hybridmoe::kernels
