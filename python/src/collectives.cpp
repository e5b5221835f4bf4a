// collectives.cpp — the collectives of hybridmoe's communication core (collectives.h) over a
// hybridmoe.Group, for torch tensors. The autograd ones keep their C++ backward (all_to_all ↔ the
// reverse all_to_all, all_gather_rows ↔ reduce_scatter_rows, all_reduce_sum ↔ identity,
// copy_to_group ↔ all_reduce_sum), so gradients flow through them from Python. The GIL is
// released while they communicate.
#include <cstdint>
#include <vector>

#include <pybind11/stl.h>

#include "bindings.h"
#include "hybridmoe/collectives.h"

namespace hybridmoe::python {

void bind_collectives(py::module_& m) {
  using Release = py::call_guard<py::gil_scoped_release>;
  m.def("all_reduce_sum", &dist::all_reduce_sum, py::arg("x"), py::arg("group"), Release(),
        "The sum of x over the group (any shape; Megatron's g). Backward: the identity.");
  m.def("copy_to_group", &dist::copy_to_group, py::arg("x"), py::arg("group"), Release(),
        "The identity (Megatron's f). Backward: the gradient summed over the group.");
  m.def("all_gather_rows", &dist::all_gather_rows, py::arg("x"), py::arg("group"),
        py::arg("rows_per_rank") = std::vector<int64_t>{}, Release(),
        "Every rank's rows of x [n_me, ...] concatenated in group-rank order; the counts may "
        "differ per rank (rows_per_rank, one per group rank, or [] to exchange them). Backward: "
        "this rank's rows of the gradient summed over the group.");
  m.def("reduce_scatter_rows", &dist::reduce_scatter_rows, py::arg("x"), py::arg("group"),
        py::arg("rows_per_rank") = std::vector<int64_t>{}, Release(),
        "x [sum(rows_per_rank), ...] summed over the group, keeping this rank's block of rows "
        "(rows_per_rank[rank]; [] splits evenly). Backward: all_gather_rows of the gradient.");
  m.def("all_to_all", &dist::all_to_all, py::arg("x"), py::arg("output_splits"),
        py::arg("input_splits"), py::arg("group"), Release(),
        "Sends input_splits[j] rows of x to group rank j (in order) and receives "
        "output_splits[j] rows from each; splits may be uneven or zero. Backward: the reverse "
        "all_to_all of the gradient.");
  m.def("sum_over_ranks",
        py::overload_cast<const std::vector<double>&, const dist::Group&>(&dist::sum_over_ranks),
        py::arg("values"), py::arg("group"), Release(),
        "The element-wise sum over the group of a list of floats, the same on every rank (summed "
        "in group-rank order).");
  m.def("barrier", &dist::barrier, py::arg("group"), Release(),
        "Returns when every member of the group has called it.");
}

}  // namespace hybridmoe::python
