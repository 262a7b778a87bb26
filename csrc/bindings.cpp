// The one bindings file: numpy arrays in for the CPU engine, raw device pointers (from torch or
// cupy, passed by the Python dispatcher in llsh_index/_engine.py) for the CUDA engine.
// Long loops run with the GIL released, like hnswlib.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "binarize/binarize.h"
#include "build_tables/build_tables.h"
#include "lookup/lookup.h"

#ifdef LLSH_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;
using namespace llsh;

namespace {

// The Python layer validates user input; these checks guard the native boundary itself.
void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

template <typename T>
const T* cptr(const py::array& a, const char* name, int ndim) {
  require(a.ndim() == ndim, std::string(name) + ": expected " + std::to_string(ndim) + "-D array, got " +
                                std::to_string(a.ndim()) + "-D");
  require(py::isinstance<py::array_t<T>>(a), std::string(name) + ": wrong dtype");
  require((a.flags() & py::array::c_style) != 0, std::string(name) + ": must be C-contiguous");
  return static_cast<const T*>(a.data());
}

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

py::array binarize_cpu_py(const py::array& codes, int n_threads) {
  require(codes.ndim() >= 1, "codes: expected at least 1-D");
  const float* c = cptr<float>(codes, "codes", (int)codes.ndim());
  const int64_t r = codes.shape(codes.ndim() - 1);
  require(r >= 1 && r <= 64, "codes: n_bits must be 1..64, got " + std::to_string(r));
  std::vector<py::ssize_t> shape(codes.shape(), codes.shape() + codes.ndim() - 1);
  py::array_t<uint64_t> keys(shape);
  const int64_t rows = r ? codes.size() / r : 0;
  uint64_t* k = keys.mutable_data();
  {
    py::gil_scoped_release nogil;
    binarize_cpu(c, rows, r, k, n_threads);
  }
  return keys;
}

template <typename CodeT>
py::dict build_impl(const py::array& keys, const py::array& codes, const py::array& ids, bool keep_codes,
                    int n_threads) {
  const uint64_t* k = cptr<uint64_t>(keys, "keys", 2);
  const CodeT* c = cptr<CodeT>(codes, "codes", 3);
  const int64_t* i = cptr<int64_t>(ids, "ids", 2);
  const int64_t b = keys.shape(0), n = keys.shape(1), r = codes.shape(2);
  require(codes.shape(0) == b && codes.shape(1) == n, "codes: shape must be [b, n, r] matching keys [b, n]");
  require(ids.shape(0) == b && ids.shape(1) == n, "ids: shape must match keys [b, n]");
  BuiltTables<CodeT> out;
  {
    py::gil_scoped_release nogil;
    build_tables_cpu<CodeT>(k, c, i, b, n, r, keep_codes, n_threads, out);
  }
  const auto U = (py::ssize_t)out.keys.size();
  py::dict d;
  d["keys"] = to_numpy(std::move(out.keys), {U});
  d["table_start"] = to_numpy(std::move(out.table_start), {(py::ssize_t)b + 1});
  d["offsets"] = to_numpy(std::move(out.offsets), {U + 1});
  d["ids"] = to_numpy(std::move(out.ids), {(py::ssize_t)(b * n)});
  if (keep_codes) d["codes"] = to_numpy(std::move(out.codes), {(py::ssize_t)(b * n), (py::ssize_t)r});
  else d["codes"] = py::none();
  d["bucket_sum"] = to_numpy(std::move(out.bucket_sum), {U, (py::ssize_t)r});
  d["bucket_sqnorm"] = to_numpy(std::move(out.bucket_sqnorm), {U});
  return d;
}

py::dict build_tables_cpu_py(const py::array& keys, const py::array& codes, const py::array& ids, bool keep_codes,
                             int n_threads) {
  // float16 codes arrive viewed as uint16 (the dispatcher does the view).
  if (py::isinstance<py::array_t<uint16_t>>(codes))
    return build_impl<uint16_t>(keys, codes, ids, keep_codes, n_threads);
  return build_impl<float>(keys, codes, ids, keep_codes, n_threads);
}

template <typename CodeT>
py::tuple lookup_impl(TablesView<CodeT> t, const py::array& query_codes, const py::array& query_keys, int mode,
                      float miss_value, int n_threads) {
  const float* q = cptr<float>(query_codes, "query_codes", 3);
  const uint64_t* qk = cptr<uint64_t>(query_keys, "query_keys", 2);
  const int64_t m = query_codes.shape(0);
  require(query_codes.shape(1) == t.n_tables && query_codes.shape(2) == t.n_bits,
          "query_codes: shape must be [M, n_tables, n_bits]");
  require(query_keys.shape(0) == m && query_keys.shape(1) == t.n_tables, "query_keys: shape must be [M, n_tables]");
  require(mode >= 0 && mode <= 2, "mode must be 0 (mean), 1 (light) or 2 (squared)");
  require(mode != 0 || t.codes != nullptr, "mode 'mean' needs the per-item codes; this index keeps statistics only");
  py::array_t<float> out({(py::ssize_t)m, (py::ssize_t)t.n_tables});
  float* o = out.mutable_data();
  int64_t visited = 0;
  {
    py::gil_scoped_release nogil;
    lookup_cpu<CodeT>(t, q, qk, m, static_cast<Mode>(mode), miss_value, o, &visited, n_threads);
  }
  return py::make_tuple(out, visited);
}

py::tuple lookup_cpu_py(const py::array& keys, const py::array& table_start, const py::array& offsets,
                        const py::object& codes, const py::array& bucket_sum, const py::array& bucket_sqnorm,
                        int64_t n_items, const py::array& query_codes, const py::array& query_keys, int mode,
                        float miss_value, int n_threads) {
  const int64_t b = table_start.size() - 1;
  const int64_t r = bucket_sum.ndim() == 2 ? bucket_sum.shape(1) : 0;
  auto fill = [&](auto& t) {
    t.n_tables = b;
    t.n_bits = r;
    t.n_items = n_items;
    t.keys = cptr<uint64_t>(keys, "keys", 1);
    t.table_start = cptr<int64_t>(table_start, "table_start", 1);
    t.offsets = cptr<int64_t>(offsets, "offsets", 1);
    t.bucket_sum = cptr<double>(bucket_sum, "bucket_sum", 2);
    t.bucket_sqnorm = cptr<double>(bucket_sqnorm, "bucket_sqnorm", 1);
    require(offsets.size() == keys.size() + 1 && bucket_sum.shape(0) == keys.size() &&
                bucket_sqnorm.size() == keys.size(),
            "tables: inconsistent array sizes");
  };
  if (!codes.is_none()) {
    py::array c = codes.cast<py::array>();
    require(c.ndim() == 2 && c.shape(0) == b * n_items && c.shape(1) == r, "codes: shape must be [b*N, r]");
    if (py::isinstance<py::array_t<uint16_t>>(c)) {  // float16 viewed as uint16
      TablesView<uint16_t> t;
      fill(t);
      t.codes = cptr<uint16_t>(c, "codes", 2);
      return lookup_impl(t, query_codes, query_keys, mode, miss_value, n_threads);
    }
    TablesView<float> t;
    fill(t);
    t.codes = cptr<float>(c, "codes", 2);
    return lookup_impl(t, query_codes, query_keys, mode, miss_value, n_threads);
  }
  TablesView<float> t;
  fill(t);
  return lookup_impl(t, query_codes, query_keys, mode, miss_value, n_threads);
}

// (built, device_count, reason): why the CUDA backend can or cannot run here.
py::tuple cuda_status() {
#ifdef LLSH_WITH_CUDA
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return py::make_tuple(true, 0, std::string("CUDA backend built, but no usable device: ") + cudaGetErrorString(err));
  }
  if (count == 0) return py::make_tuple(true, 0, std::string("CUDA backend built, but no CUDA device is visible"));
  return py::make_tuple(true, count, std::string("CUDA backend built; ") + std::to_string(count) + " device(s)");
#else
  return py::make_tuple(false, 0, std::string("llsh_index was built without the CUDA backend (LLSH_WITH_CUDA=OFF or nvcc not found at build time)"));
#endif
}

}  // namespace

#ifdef LLSH_WITH_CUDA
namespace {
// CUDA bindings: device pointers arrive as integers; `stream` is the caller's cudaStream_t.
void register_cuda_bindings(py::module_& m) {}
}  // namespace
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "llsh_index native engine: binarize, build_tables (sort + segment), lookup";
  m.def("binarize_cpu", &binarize_cpu_py, py::arg("codes"), py::arg("n_threads") = 0);
  m.def("build_tables_cpu", &build_tables_cpu_py, py::arg("keys"), py::arg("codes"), py::arg("ids"),
        py::arg("keep_codes") = true, py::arg("n_threads") = 0);
  m.def("lookup_cpu", &lookup_cpu_py, py::arg("keys"), py::arg("table_start"), py::arg("offsets"), py::arg("codes"),
        py::arg("bucket_sum"), py::arg("bucket_sqnorm"), py::arg("n_items"), py::arg("query_codes"),
        py::arg("query_keys"), py::arg("mode"), py::arg("miss_value"), py::arg("n_threads") = 0);
  m.def("cuda_status", &cuda_status);
#ifdef LLSH_WITH_CUDA
  register_cuda_bindings(m);
#endif
}
