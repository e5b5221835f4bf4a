// cpu_buffer_cache.cpp — the reusing CPU allocator of cpu_runtime.h: large blocks freed by tensors
// are kept in a size-ordered free list and handed out again, small ones go to LibTorch's default
// allocator. The cache object is never destroyed (tensors may be freed during static destruction).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include "hybridmoe/cpu_runtime.h"
#include "hybridmoe/detail/compat.h"

namespace hybridmoe {

namespace {

constexpr size_t kAlignment = 64;  // LibTorch's CPU alignment

class BufferCache final : public c10::Allocator {
 public:
  explicit BufferCache(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t n) HMOE_ALLOCATE_CONST override {
    if (n < min_bytes_) return fallback_->allocate(n);
    void* ptr = const_cast<BufferCache*>(this)->take(n);
    return {ptr, ptr, &BufferCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  // raw_allocate / raw_deallocate (used inside LibTorch) need data == context, which holds for
  // both the cache's blocks and the default allocator's.
  c10::DeleterFnPtr raw_deleter() const override { return &BufferCache::release; }

  // PyTorch 2.x asks allocators to copy their own data (a pure virtual there, absent in 1.13).
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::memcpy(dest, src, count);
  }

  void set_limits(size_t max_cached, size_t min_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    max_cached_ = max_cached;
    min_bytes_ = min_bytes;
    trim_locked();
  }

  CpuBufferCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {true, static_cast<int64_t>(cached_), reused_, fresh_};
  }

 private:
  // A held block of [n, 1.25 n] bytes, else a fresh one.
  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.lower_bound(n);
    if (it != free_.end() && it->first <= n + n / 4) {
      void* ptr = it->second;
      live_.emplace(ptr, it->first);
      cached_ -= it->first;
      free_.erase(it);
      ++reused_;
      return ptr;
    }
    ++fresh_;
    // No huge pages: MADV_HUGEPAGE made 4 ranks sharing 2 cores 30 % slower (probably the kernel
    // compacting memory at the fault, as THP defrag is "madvise" here) and gained nothing alone.
    const size_t bytes = n;
    void* ptr = nullptr;
    const int err = posix_memalign(&ptr, kAlignment, bytes);
    TORCH_CHECK(err == 0 && ptr != nullptr, "CPU buffer cache: could not allocate ", bytes,
                " bytes (", cached_, " bytes held for reuse)");
    live_.emplace(ptr, bytes);
    return ptr;
  }

  static void release(void* ptr);

  // A block of ours goes back to the free list; anything else came from the default allocator.
  void put(void* ptr) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(ptr);
      if (it != live_.end()) {
        free_.emplace(it->second, ptr);
        cached_ += it->second;
        live_.erase(it);
        trim_locked();
        return;
      }
    }
    fallback_->raw_deleter()(ptr);
  }

  // Frees the largest held blocks until the total is within the limit.
  void trim_locked() {
    while (cached_ > max_cached_ && !free_.empty()) {
      auto last = std::prev(free_.end());
      cached_ -= last->first;
      std::free(last->second);
      free_.erase(last);
    }
  }

  c10::Allocator* fallback_;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> live_;  // blocks handed out: their sizes
  std::multimap<size_t, void*> free_;       // blocks held for reuse, by size
  size_t cached_ = 0;
  size_t max_cached_ = 0;
  std::atomic<size_t> min_bytes_{0};  // read unlocked by allocate()
  int64_t reused_ = 0, fresh_ = 0;
};

// The one cache of the process, created on first install and never destroyed.
BufferCache* the_cache = nullptr;
std::mutex install_mutex;

void BufferCache::release(void* ptr) {
  the_cache->put(ptr);
}

}  // namespace

void install_cpu_buffer_cache(int64_t max_cached_bytes, int64_t min_bytes) {
  TORCH_CHECK(max_cached_bytes >= 0,
              "install_cpu_buffer_cache: max_cached_bytes >= 0 expected, got ", max_cached_bytes);
  TORCH_CHECK(min_bytes >= 4096, "install_cpu_buffer_cache: min_bytes >= 4096 expected, got ",
              min_bytes);
  std::lock_guard<std::mutex> lock(install_mutex);
  if (the_cache == nullptr) {
    the_cache = new BufferCache(c10::GetCPUAllocator());
    the_cache->set_limits(static_cast<size_t>(max_cached_bytes), static_cast<size_t>(min_bytes));
    c10::SetCPUAllocator(the_cache, /*priority=*/1);
    return;
  }
  the_cache->set_limits(static_cast<size_t>(max_cached_bytes), static_cast<size_t>(min_bytes));
}

CpuBufferCacheStats cpu_buffer_cache_stats() {
  std::lock_guard<std::mutex> lock(install_mutex);
  return the_cache == nullptr ? CpuBufferCacheStats{} : the_cache->stats();
}

}  // namespace hybridmoe
