// errors.cpp — C++ errors as Python exceptions. Every c10::Error (TORCH_CHECK and the library's
// own refusals) thrown by a binding of this module arrives as hybridmoe.Error, a subclass of
// RuntimeError, carrying the C++ message without the backtrace that c10::Error::what() appends.
// The translator is module-local, so torch's own translators are untouched.
#include <c10/util/Exception.h>

#include "bindings.h"

namespace hybridmoe::python {

void bind_errors(py::module_& m) {
  // A static handle: the exception type lives as long as the interpreter (pybind11's idiom).
  static py::handle error = py::exception<c10::Error>(m, "Error", PyExc_RuntimeError).release();
  m.attr("Error").attr("__doc__") =
      "An error raised by hybridmoe's C++ core, with the C++ message (a RuntimeError).";
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::Error& e) {
      PyErr_SetString(error.ptr(), e.what_without_backtrace());
    }
  });
}

}  // namespace hybridmoe::python
