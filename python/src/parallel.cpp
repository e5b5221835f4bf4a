// parallel.cpp — the layout of a run for Python: _C.ParallelConfig (the sizes tp, dp, pp, ep,
// etp), _C.ParallelGroups (one rank's groups of a layout, assembled from hybridmoe.Group objects
// made of torch.distributed groups; python/hybridmoe/parallel.py builds them), the rank lists
// of every group of a layout (so Python creates the torch groups in the same order on every
// rank), and the coalesced broadcast / gradient sum that GroupedDataParallel runs per group.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/parallel.h"

namespace hybridmoe::python {

GroupKind group_kind_from(const std::string& name) {
  for (GroupKind k : all_group_kinds())
    if (to_string(k) == name) return k;
  std::string known;
  for (GroupKind k : all_group_kinds()) known += (known.empty() ? "" : ", ") + to_string(k);
  C10_THROW_ERROR(Error, c10::str("unknown group kind \"", name, "\"; expected one of ", known));
}

namespace {

ParallelConfig make_config(int64_t tp, int64_t dp, int64_t pp, int64_t ep, int64_t etp) {
  return ParallelConfig{tp, dp, pp, ep, etp};
}

dist::CoalesceOptions coalesce(int64_t bucket_bytes) {
  TORCH_CHECK(bucket_bytes > 0, "bucket_bytes should be positive, got ", bucket_bytes);
  dist::CoalesceOptions co;
  co.bucket_bytes = bucket_bytes;
  return co;
}

}  // namespace

void bind_parallel(py::module_& m) {
  py::class_<ParallelConfig>(m, "ParallelConfig", R"(The sizes of a layout's parallel dimensions.

ParallelConfig(tp=1, dp=1, pp=1, ep=1, etp=1): world = tp * dp * pp ranks in Megatron's order
(tp fastest, then dp, then pp); inside a pipeline stage the same ranks are read as
edp * ep * etp (etp fastest), edp = tp * dp / (ep * etp).)")
      .def(py::init(&make_config), py::kw_only(), py::arg("tp") = 1, py::arg("dp") = 1,
           py::arg("pp") = 1, py::arg("ep") = 1, py::arg("etp") = 1)
      .def_readwrite("tp", &ParallelConfig::tp)
      .def_readwrite("dp", &ParallelConfig::dp)
      .def_readwrite("pp", &ParallelConfig::pp)
      .def_readwrite("ep", &ParallelConfig::ep)
      .def_readwrite("etp", &ParallelConfig::etp)
      .def_property_readonly("edp", &ParallelConfig::edp)
      .def_property_readonly("world_size", &ParallelConfig::world_size)
      .def("check", &ParallelConfig::check, py::arg("world_size"),
           "\"\" if the layout is valid on world_size ranks, else why not.")
      .def("validate", &ParallelConfig::validate, py::arg("world_size"),
           "Raises hybridmoe.Error saying why the layout is invalid on world_size ranks (and "
           "listing the valid ones), if it is.")
      .def("__eq__", &ParallelConfig::operator==)
      .def(
          "__repr__",
          [](const ParallelConfig& c) { return "hybridmoe.ParallelConfig(" + c.to_string() + ")"; })
      .def("__str__", &ParallelConfig::to_string);

  m.def("valid_parallel_configs", &valid_parallel_configs, py::arg("world_size"),
        "Every valid layout on world_size ranks.");
  m.def(
      "_all_group_ranks",
      [](const ParallelConfig& c, const std::string& kind) {
        return all_group_ranks(c, group_kind_from(kind));
      },
      py::arg("config"), py::arg("kind"),
      "Every group of `kind` of the layout (a partition of the world), ordered by first rank.");
  m.def(
      "_group_kinds",
      [] {
        std::vector<std::string> out;
        for (GroupKind k : all_group_kinds()) out.push_back(to_string(k));
        return out;
      },
      "The group kinds, in the order ParallelGroups builds them.");

  py::class_<ParallelGroups, std::shared_ptr<ParallelGroups>>(
      m, "_ParallelGroups", "One rank's groups of a layout (internal: hybridmoe.ParallelGroups).")
      .def_static(
          "assemble",
          [](const ParallelConfig& config, const std::map<std::string, dist::Group>& given) {
            std::map<GroupKind, dist::Group> groups;
            for (const auto& [name, g] : given) groups[group_kind_from(name)] = g;
            return std::make_shared<ParallelGroups>(
                ParallelGroups::assemble(config, std::move(groups)));
          },
          py::arg("config"), py::arg("groups"))
      .def_readonly("config", &ParallelGroups::config)
      .def_readonly("world_rank", &ParallelGroups::world_rank)
      .def(
          "get",
          [](const ParallelGroups& g, const std::string& kind) {
            return g.get(group_kind_from(kind));
          },
          py::arg("kind"))
      .def("coords", [](const ParallelGroups& g) {
        const RankCoords c = g.coords();
        return std::map<std::string, int64_t>{{"pp", c.pp},   {"dp", c.dp}, {"tp", c.tp},
                                              {"edp", c.edp}, {"ep", c.ep}, {"etp", c.etp}};
      });

  using Release = py::call_guard<py::gil_scoped_release>;
  m.def(
      "_broadcast_coalesced_",
      [](std::vector<torch::Tensor> tensors, int64_t root, const dist::Group& group,
         int64_t bucket_bytes) { dist::broadcast_(tensors, root, group, coalesce(bucket_bytes)); },
      py::arg("tensors"), py::arg("root"), py::arg("group"), py::arg("bucket_bytes"), Release(),
      "In place: the tensors become group rank root's, packed into flat buckets.");
  m.def(
      "_all_reduce_coalesced_",
      [](std::vector<torch::Tensor> tensors, const dist::Group& group, int64_t bucket_bytes) {
        dist::all_reduce_coalesced_(tensors, group, coalesce(bucket_bytes));
      },
      py::arg("tensors"), py::arg("group"), py::arg("bucket_bytes"), Release(),
      "In place: each tensor becomes its sum over the group, packed into flat buckets.");
}

}  // namespace hybridmoe::python
