// groups.cpp — hybridmoe.Group: a torch.distributed process group as hybridmoe's dist::Group
// (dist::Group::from_process_group), so that the groups a PyTorch program already has carry
// hybridmoe's collectives. Group.from_torch(pg) takes the members' world ranks from
// torch.distributed; Group(pg, ranks) takes them as given.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <pybind11/stl.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "bindings.h"
#include "hybridmoe/dist.h"

namespace hybridmoe::python {

namespace {

// timeout_s as a duration; None: HMOE_TIMEOUT_S, or 300 s (what C++ programs get).
std::chrono::milliseconds timeout_of(const std::optional<double>& timeout_s) {
  if (!timeout_s) return dist::timeout_from_env(dist::process_env());
  TORCH_CHECK(*timeout_s > 0, "timeout_s should be a positive number of seconds, got ", *timeout_s);
  return std::chrono::milliseconds(static_cast<int64_t>(*timeout_s * 1000.0));
}

dist::Group from_torch(py::object pg, std::optional<std::string> name,
                       std::optional<double> timeout_s) {
  py::module_ torch_dist = py::module_::import("torch.distributed");
  TORCH_CHECK(torch_dist.attr("is_initialized")().cast<bool>(),
              "Group.from_torch: torch.distributed is not initialized (call "
              "torch.distributed.init_process_group first)");
  if (!name) name = pg.is_none() ? "world" : "group";
  if (pg.is_none()) pg = torch_dist.attr("group").attr("WORLD");
  TORCH_CHECK(!pg.is(torch_dist.attr("GroupMember").attr("NON_GROUP_MEMBER")),
              "Group.from_torch: this process (rank ",
              torch_dist.attr("get_rank")().cast<int64_t>(), ") is not a member of group '", *name,
              "'");
  const auto ranks = torch_dist.attr("get_process_group_ranks")(pg).cast<std::vector<int64_t>>();
  return dist::Group::from_process_group(*name, ranks, pg.cast<dist::ProcessGroupPtr>(), {},
                                         timeout_of(timeout_s));
}

std::string repr(const dist::Group& g) {
  std::string ranks;
  for (int64_t r : g.ranks) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  return "hybridmoe.Group('" + g.name + "', ranks=[" + ranks + "], rank=" + std::to_string(g.rank) +
         ")";
}

}  // namespace

void bind_groups(py::module_& m) {
  py::class_<dist::Group>(m, "Group", R"(A process group of hybridmoe's communication core.

Made from a torch.distributed process group: hybridmoe's collectives (all_reduce_sum,
all_to_all, ...) then run on it, within the group's timeout, raising hybridmoe.Error naming the
operation and the group on a timeout or a peer's failure. Keep the torch group alive while the
Group is in use (the Group holds a reference to it).

Group(process_group, ranks, *, name="group", timeout_s=None, cuda_process_group=None):
    ranks are the members' world ranks in group-rank order (as many as the group's size);
    cuda_process_group carries CUDA tensors where process_group does not (torch 1.x: a NCCL
    group beside a Gloo one). timeout_s=None: HMOE_TIMEOUT_S, or 300 s.
)")
      .def(py::init([](dist::ProcessGroupPtr pg, std::vector<int64_t> ranks, std::string name,
                       std::optional<double> timeout_s,
                       std::optional<dist::ProcessGroupPtr> cuda_pg) {
             return dist::Group::from_process_group(
                 std::move(name), std::move(ranks), std::move(pg),
                 cuda_pg.value_or(dist::ProcessGroupPtr()), timeout_of(timeout_s));
           }),
           py::arg("process_group"), py::arg("ranks"), py::kw_only(), py::arg("name") = "group",
           py::arg("timeout_s") = py::none(), py::arg("cuda_process_group") = py::none())
      .def_static("from_torch", &from_torch, py::arg("process_group") = py::none(), py::kw_only(),
                  py::arg("name") = py::none(), py::arg("timeout_s") = py::none(),
                  R"(The Group of a torch.distributed process group (None: the default world
group), its members' world ranks from torch.distributed.get_process_group_ranks. name: for error
messages ("world" for the default group, else "group"). Raises hybridmoe.Error when
torch.distributed is not initialized or this process is not a member.)")
      .def_readonly("name", &dist::Group::name)
      .def_readonly("ranks", &dist::Group::ranks, "the members' world ranks, index = group rank")
      .def_readonly("rank", &dist::Group::rank, "this process's group rank; -1 if not a member")
      .def_property_readonly("size", &dist::Group::size)
      .def_property_readonly("is_member", &dist::Group::is_member)
      .def_property_readonly("timeout_s",
                             [](const dist::Group& g) { return g.timeout.count() / 1000.0; })
      .def_readonly("process_group", &dist::Group::pg)
      .def("__repr__", &repr);
}

}  // namespace hybridmoe::python
