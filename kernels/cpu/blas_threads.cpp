// blas_threads.cpp — see blas_threads.h.
#include "blas_threads.h"

#include <dlfcn.h>

#include <mutex>

#include <c10/util/Exception.h>

namespace hybridmoe::kernels {

namespace {

using GetThreads = int (*)();
using SetThreads = void (*)(int);

// OpenBLAS's public thread controls, looked up once among the loaded libraries (LibTorch links
// the BLAS; hybridmoe does not link it itself, so any BLAS the build found keeps working).
struct OpenBlasControls {
  GetThreads get = nullptr;
  SetThreads set = nullptr;
  OpenBlasControls() {
    get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (get == nullptr || set == nullptr) get = nullptr, set = nullptr;
  }
};

const OpenBlasControls& controls() {
  static const OpenBlasControls c;
  return c;
}

// The holders of SingleThreadedBlas and the count to restore when the last one leaves.
std::mutex holders_mutex;
int holders = 0;
int saved_threads = 0;

}  // namespace

bool blas_threads_controllable() {
  return controls().set != nullptr;
}

int blas_num_threads() {
  return blas_threads_controllable() ? controls().get() : 0;
}

bool set_blas_num_threads(int n) {
  TORCH_CHECK(n >= 1, "set_blas_num_threads: a thread count >= 1 expected, got ", n);
  if (!blas_threads_controllable()) return false;
  controls().set(n);
  return true;
}

SingleThreadedBlas::SingleThreadedBlas() {
  if (!blas_threads_controllable()) return;
  std::lock_guard<std::mutex> lock(holders_mutex);
  if (holders++ == 0) {
    saved_threads = controls().get();
    if (saved_threads != 1) controls().set(1);
  }
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (!blas_threads_controllable()) return;
  std::lock_guard<std::mutex> lock(holders_mutex);
  if (--holders == 0 && saved_threads != 1) controls().set(saved_threads);
}

}  // namespace hybridmoe::kernels
