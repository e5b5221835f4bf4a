// module.cpp — the extension hybridmoe._C. Import it through the package (`import hybridmoe`),
// which imports torch and torch.distributed first: their pybind11 classes (Tensor, ProcessGroup)
// must be registered before a binding receives one.
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  namespace python = hybridmoe::python;
  m.doc() = "hybridmoe's C++ core (import it as `hybridmoe`)";
  python::bind_errors(m);
  python::bind_build_info(m);
  python::bind_groups(m);
  python::bind_collectives(m);
  python::bind_hf(m);
  python::bind_parallel(m);
  python::bind_moe(m);
  python::bind_cpu_runtime(m);
}
