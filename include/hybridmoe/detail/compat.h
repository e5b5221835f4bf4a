// compat.h — the one place where hybridmoe absorbs differences between LibTorch versions
// (Debian's 1.13 and pip's 2.x). Everything else includes this header instead of testing versions.
#pragma once

#include <torch/torch.h>
#include <torch/version.h>

#include <chrono>
#include <string>
#include <type_traits>

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

// pip wheels of PyTorch ship no gloo headers: without them there are no CPU process groups.
#if __has_include(<gloo/algorithm.h>)
#define HMOE_HAVE_GLOO 1
#else
#define HMOE_HAVE_GLOO 0
#endif

#define HMOE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||       \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// c10::Allocator::allocate is const up to PyTorch 2.2 and not from 2.3; an allocator declares
// `c10::DataPtr allocate(size_t n) HMOE_ALLOCATE_CONST override`.
#if HMOE_TORCH_AT_LEAST(2, 3)
#define HMOE_ALLOCATE_CONST
#else
#define HMOE_ALLOCATE_CONST const
#endif

namespace hybridmoe::compat {

/// Stable sort along dim 0 (ties keep their input order). Returns the permutation.
/// values: [n] any sortable dtype.
inline torch::Tensor stable_argsort(const torch::Tensor& values, bool descending = false) {
  return std::get<1>(values.sort(/*stable=*/true, /*dim=*/0, descending));
}

/// A string naming the LibTorch version this was built against, e.g. "1.13.1".
inline std::string torch_version() {
  return TORCH_VERSION;
}

}  // namespace hybridmoe::compat

// ---- c10d (distributed) ----------------------------------------------------------------------
// LibTorch 1.x: ProcessGroupGloo and ProcessGroupNCCL *are* c10d::ProcessGroups, one per device
// type. LibTorch 2.x: they are c10d::Backends, and one c10d::ProcessGroup dispatches each tensor
// to the backend registered for its device type (setBackend / setDefaultBackend). The ProcessGroup
// constructor also changed within 2.x: (store, rank, size, options) up to ~2.5, (store, rank, size)
// after; it is told apart at compile time, not by version number.
namespace hybridmoe::compat {

#if HMOE_TORCH_AT_LEAST(2, 0)
/// What ProcessGroupGloo / ProcessGroupNCCL derive from.
using C10dBackend = c10d::Backend;
#else
using C10dBackend = c10d::ProcessGroup;
#endif

/// The process groups that carry a group's CPU and CUDA tensors. On 2.x both are the same object;
/// on 1.x they are the Gloo and the NCCL process group. `cuda` is null without a CUDA backend.
struct DeviceProcessGroups {
  c10::intrusive_ptr<c10d::ProcessGroup> cpu;
  c10::intrusive_ptr<c10d::ProcessGroup> cuda;
};

namespace detail {

template <typename T, typename = void>
struct HasSetGroupName : std::false_type {};
template <typename T>
struct HasSetGroupName<T, std::void_t<decltype(std::declval<T&>().setGroupName(std::string()))>>
    : std::true_type {};

/// Names the group where this LibTorch can (ProcessGroup::setGroupName appeared within 2.x).
template <typename PG>
void set_group_name(PG& pg, const std::string& name) {
  if constexpr (HasSetGroupName<PG>::value) pg.setGroupName(name);
}

#if HMOE_TORCH_AT_LEAST(2, 0)
/// A 2.x ProcessGroup shell whose default backend is `backend` ("gloo" or "nccl").
/// PG is a template parameter so that only the constructor form this LibTorch has is compiled.
template <typename PG = c10d::ProcessGroup>
c10::intrusive_ptr<PG> new_process_group_shell(const c10::intrusive_ptr<c10d::Store>& store,
                                               int rank, int size, const std::string& backend,
                                               std::chrono::milliseconds timeout) {
  if constexpr (std::is_constructible_v<PG, c10::intrusive_ptr<c10d::Store>, int, int>) {
    auto pg = c10::make_intrusive<PG>(store, rank, size);
    pg->setDefaultBackend(backend == "nccl" ? PG::BackendType::NCCL : PG::BackendType::GLOO);
    return pg;
  } else {
    auto options = c10::make_intrusive<typename PG::Options>(backend, timeout);
    return c10::make_intrusive<PG>(store, rank, size, options);
  }
}
#endif

}  // namespace detail

/// Wraps the backends of one group into process groups.
/// cpu_backend: Gloo, or null in a build without Gloo; cuda_backend: NCCL or null; at least one
/// of them. `name` labels the group (2.x).
inline DeviceProcessGroups wrap_backends(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                         int size,
                                         const c10::intrusive_ptr<C10dBackend>& cpu_backend,
                                         const c10::intrusive_ptr<C10dBackend>& cuda_backend,
                                         const std::string& name,
                                         std::chrono::milliseconds timeout) {
  TORCH_CHECK(cpu_backend || cuda_backend, "wrap_backends: group ", name,
              " needs a CPU (Gloo) or a CUDA (NCCL) backend");
#if HMOE_TORCH_AT_LEAST(2, 0)
  using PG = c10d::ProcessGroup;
  auto pg = detail::new_process_group_shell<PG>(store, rank, size, cuda_backend ? "nccl" : "gloo",
                                                timeout);
  if (cpu_backend) pg->setBackend(c10::DeviceType::CPU, PG::BackendType::GLOO, cpu_backend);
  if (cuda_backend) pg->setBackend(c10::DeviceType::CUDA, PG::BackendType::NCCL, cuda_backend);
  detail::set_group_name(*pg, name);
  return DeviceProcessGroups{cpu_backend ? pg : c10::intrusive_ptr<PG>(),
                             cuda_backend ? pg : c10::intrusive_ptr<PG>()};
#else
  (void)store, (void)rank, (void)size, (void)name, (void)timeout;
  return DeviceProcessGroups{cpu_backend, cuda_backend};
#endif
}

}  // namespace hybridmoe::compat
