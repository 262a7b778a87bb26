// The one bindings file: numpy arrays in for the CPU engine, raw device pointers (from torch or
// cupy, passed by the Python dispatcher in llsh_index/_engine.py) for the CUDA engine.
// Long loops run with the GIL released, like hnswlib.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "binarize/binarize.h"
#include "build_tables/build_tables.h"
#include "llsh/isa.h"
#include "lookup/lookup.h"

#ifdef LLSH_WITH_CUDA
#include <cuda_runtime.h>

#include <tuple>
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

// Optional array arguments arrive as py::object.  Only an ndarray is taken: a list would be
// converted into a temporary whose data is freed while its pointer is still in use.
py::array array_arg(const py::object& o, const char* name) {
  require(py::isinstance<py::array>(o), std::string(name) + ": expected a NumPy array, got " +
                                            py::str(py::type::of(o).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(o);
}

template <typename T, typename A>
py::array_t<T> to_numpy(std::vector<T, A>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T, A>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T, A>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

py::array binarize_cpu_py(py::array codes, bool from_logits, int n_threads) {
  require(codes.ndim() >= 1, "codes: expected at least 1-D");
  const int64_t r = codes.shape(codes.ndim() - 1);
  cptr<float>(codes, "codes", (int)codes.ndim());
  require(r >= 1 && r <= 64, "codes: n_bits must be 1..64, got " + std::to_string(r));
  require(!from_logits || codes.writeable(), "codes: from_logits needs a writeable array (sigmoid in place)");
  float* c = static_cast<float*>(from_logits ? codes.mutable_data() : const_cast<void*>(codes.data()));
  std::vector<py::ssize_t> shape(codes.shape(), codes.shape() + codes.ndim() - 1);
  py::array_t<uint64_t> keys(shape);
  const int64_t rows = r ? codes.size() / r : 0;
  uint64_t* k = keys.mutable_data();
  {
    py::gil_scoped_release nogil;
    binarize_cpu(c, rows, r, k, from_logits, n_threads);
  }
  return keys;
}

// (mean, rstd) float32 [n] of x [n, dim] float32: the LayerNorm statistics of hash_logits.
py::tuple row_moments_cpu_py(const py::array& x, double eps, int n_threads) {
  const float* p = cptr<float>(x, "x", 2);
  const int64_t n = x.shape(0), dim = x.shape(1);
  require(dim >= 1, "x: expected at least one column");
  py::array_t<float> mean(n), rstd(n);
  float* pm = mean.mutable_data();
  float* pr = rstd.mutable_data();
  {
    py::gil_scoped_release nogil;
    row_moments_cpu(p, n, dim, eps, pm, pr, n_threads);
  }
  return py::make_tuple(mean, rstd);
}

// In place on raw [n, n_tables * n_bits] float32: the folded LayerNorm, then (with_sigmoid) the
// sigmoid and the keys.  Returns (keys [n, n_tables] uint64 or None, first row with a NaN logit or -1).
// table_codes [b, n_total, r] float32 / table_keys [b, n_total] uint64 (optional, with_sigmoid): also
// receive rows row0 .. row0 + n table-major (add()'s staging arrays), with no second pass.
py::tuple hash_epilogue_cpu_py(py::array raw, const py::array& mean, const py::array& rstd, const py::array& wsum,
                               int64_t n_tables, bool with_sigmoid, int n_threads, const py::object& table_codes,
                               const py::object& table_keys, int64_t row0) {
  cptr<float>(raw, "raw", 2);
  require(raw.writeable(), "raw: expected a writeable array (the epilogue runs in place)");
  const int64_t n = raw.shape(0), width = raw.shape(1);
  require(n_tables >= 1 && width % n_tables == 0, "raw: width must be a multiple of n_tables");
  const int64_t r = width / n_tables;
  require(r >= 1 && r <= 64, "raw: n_bits must be 1..64, got " + std::to_string(r));
  const float* pm = cptr<float>(mean, "mean", 1);
  const float* pr = cptr<float>(rstd, "rstd", 1);
  const float* pw = cptr<float>(wsum, "wsum", 1);
  require(mean.shape(0) == n && rstd.shape(0) == n, "mean/rstd: expected one value per row");
  require(wsum.shape(0) == width, "wsum: expected one value per column");
  float* p = static_cast<float*>(raw.mutable_data());
  py::object keys = py::none();
  uint64_t* pk = nullptr;
  if (with_sigmoid) {
    py::array_t<uint64_t> k({(py::ssize_t)n, (py::ssize_t)n_tables});
    pk = k.mutable_data();
    keys = k;
  }
  float* tc = nullptr;
  uint64_t* tk = nullptr;
  int64_t n_total = 0;
  if (!table_codes.is_none() || !table_keys.is_none()) {
    require(with_sigmoid && !table_codes.is_none() && !table_keys.is_none(),
            "table_codes/table_keys: expected both, with with_sigmoid");
    py::array c = array_arg(table_codes, "table_codes"), k = array_arg(table_keys, "table_keys");
    cptr<float>(c, "table_codes", 3);
    cptr<uint64_t>(k, "table_keys", 2);
    require(c.writeable() && k.writeable(), "table_codes/table_keys: expected writeable arrays");
    n_total = c.shape(1);
    require(c.shape(0) == n_tables && c.shape(2) == r && k.shape(0) == n_tables && k.shape(1) == n_total,
            "table_codes/table_keys: expected [n_tables, n_total, n_bits] and [n_tables, n_total]");
    require(row0 >= 0 && row0 + n <= n_total, "row0: rows out of range of the table-major arrays");
    tc = static_cast<float*>(c.mutable_data());
    tk = static_cast<uint64_t*>(k.mutable_data());
  }
  int64_t bad;
  {
    py::gil_scoped_release nogil;
    bad = hash_epilogue_cpu(p, n, n_tables, r, pm, pr, pw, with_sigmoid, pk, n_threads, tc, tk, n_total, row0);
  }
  return py::make_tuple(keys, bad);
}

template <typename CodeT>
py::dict build_impl(const py::array& keys, py::array codes, const py::array& ids, bool keep_codes,
                    int n_threads, bool in_place, bool with_stats) {
  const uint64_t* k = cptr<uint64_t>(keys, "keys", 2);
  const CodeT* c = cptr<CodeT>(codes, "codes", 3);
  const int64_t* i = cptr<int64_t>(ids, "ids", 2);
  const int64_t b = keys.shape(0), n = keys.shape(1), r = codes.shape(2);
  require(codes.shape(0) == b && codes.shape(1) == n, "codes: shape must be [b, n, r] matching keys [b, n]");
  require(r >= 1 && r <= 64, "codes: n_bits must be 1..64, got " + std::to_string(r));  // keys are uint64
  require(ids.shape(0) == b && ids.shape(1) == n, "ids: shape must match keys [b, n]");
  in_place = in_place && keep_codes;
  require(!in_place || codes.writeable(), "codes: in_place needs a writeable array");
  CodeT* sorted_in_place = in_place ? static_cast<CodeT*>(codes.mutable_data()) : nullptr;
  BuiltTables<CodeT> out;
  {
    py::gil_scoped_release nogil;
    build_tables_cpu<CodeT>(k, c, i, b, n, r, keep_codes, n_threads, out, sorted_in_place, with_stats);
  }
  const auto U = (py::ssize_t)out.keys.size();
  py::dict d;
  d["keys"] = to_numpy(std::move(out.keys), {U});
  d["table_start"] = to_numpy(std::move(out.table_start), {(py::ssize_t)b + 1});
  d["offsets"] = to_numpy(std::move(out.offsets), {U + 1});
  d["ids"] = to_numpy(std::move(out.ids), {(py::ssize_t)(b * n)});
  if (in_place) d["codes"] = codes.reshape({(py::ssize_t)(b * n), (py::ssize_t)r});
  else if (keep_codes) d["codes"] = to_numpy(std::move(out.codes), {(py::ssize_t)(b * n), (py::ssize_t)r});
  else d["codes"] = py::none();
  if (with_stats || !keep_codes) {
    d["bucket_sum"] = to_numpy(std::move(out.bucket_sum), {U, (py::ssize_t)r});
    d["bucket_sqnorm"] = to_numpy(std::move(out.bucket_sqnorm), {U});
  } else {
    d["bucket_sum"] = py::none();
    d["bucket_sqnorm"] = py::none();
  }
  return d;
}

// in_place: the caller hands `codes` over; its rows are sorted in place and it is returned as the
// tables' codes (no second copy).  Callers that keep using their array leave it false.
py::dict build_tables_cpu_py(const py::array& keys, const py::array& codes, const py::array& ids, bool keep_codes,
                             int n_threads, bool in_place, bool with_stats) {
  // float16 codes arrive viewed as uint16 (the dispatcher does the view).
  if (py::isinstance<py::array_t<uint16_t>>(codes))
    return build_impl<uint16_t>(keys, codes, ids, keep_codes, n_threads, in_place, with_stats);
  return build_impl<float>(keys, codes, ids, keep_codes, n_threads, in_place, with_stats);
}

// One side of merge_tables_cpu: its five arrays, each looked up in the dict once and held here for
// the whole call (the GIL is released while the merge reads them: another thread may replace the
// dict's entries meanwhile), and the raw view of them whose layout was checked.
struct MergeSide {
  py::array keys, table_start, offsets, codes, ids;
  MergeSide(const py::dict& t, const std::string& name) {
    auto arr = [&](const char* key) {
      require(t.contains(key), name + ": expected the tables' '" + key + "' array");
      return array_arg(t[key], (name + "['" + key + "']").c_str());
    };
    keys = arr("keys"), table_start = arr("table_start"), offsets = arr("offsets"), codes = arr("codes");
    ids = arr("ids");
  }
};

// The layout checks that keep the merge's walks inside the arrays: O(U) (and O(rows) for a shifted
// side's ids) on top of an O(rows) merge.
template <typename CodeT>
StoredTables<CodeT> stored_side(const MergeSide& m, const std::string& name, int64_t id_shift) {
  StoredTables<CodeT> s;
  s.keys = cptr<uint64_t>(m.keys, (name + " keys").c_str(), 1);
  s.table_start = cptr<int64_t>(m.table_start, (name + " table_start").c_str(), 1);
  s.offsets = cptr<int64_t>(m.offsets, (name + " offsets").c_str(), 1);
  s.codes = cptr<CodeT>(m.codes, (name + " codes").c_str(), 2);
  s.ids = cptr<int64_t>(m.ids, (name + " ids").c_str(), 1);
  s.id_shift = id_shift;
  const int64_t b = m.table_start.shape(0) - 1, U = m.keys.shape(0), rows = m.codes.shape(0);
  require(b >= 1 && rows % b == 0, name + ": table_start must have b + 1 entries and the codes b * n rows");
  s.n_items = rows / b;
  require(m.offsets.shape(0) == U + 1 && m.ids.shape(0) == rows,
          name + ": offsets must have U + 1 entries, ids b * n");
  require(s.table_start[0] == 0 && s.table_start[b] == U && s.offsets[0] == 0 && s.offsets[U] == rows,
          name + ": table_start must run from 0 to U and offsets from 0 to b * n");
  bool rows_ok = true, buckets_ok = true;  // messages built only on failure: this loop is O(U)
  for (int64_t j = 0; j < b && rows_ok; ++j) {
    const int64_t u0 = s.table_start[j], u1 = s.table_start[j + 1];
    rows_ok = u0 <= u1 && u1 <= U && s.offsets[u0] == j * s.n_items;
    for (int64_t u = u0; rows_ok && u < u1; ++u)
      buckets_ok &= s.offsets[u] < s.offsets[u + 1] && (u == u0 || s.keys[u - 1] < s.keys[u]);
  }
  require(rows_ok, name + ": table j must own rows j * n .. (j + 1) * n");
  require(buckets_ok, name + ": buckets must be non-empty and keys ascending within a table");
  if (id_shift != 0 && rows > 0) {  // shifted ids must stay int64 (signed overflow is undefined)
    const auto [lo, hi] = std::minmax_element(s.ids, s.ids + rows);
    const int64_t top = std::numeric_limits<int64_t>::max(), bottom = std::numeric_limits<int64_t>::min();
    require(id_shift > 0 ? *hi <= top - id_shift : *lo >= bottom - id_shift,
            name + ": ids shifted by b_id_shift must stay within int64");
  }
  return s;
}

// Merged or compacted tables (codes and ids, statistics left to ensure_statistics) as the dict of
// sorted_tables.h's arrays.
template <typename CodeT>
py::dict tables_dict(BuiltTables<CodeT>&& out, int64_t nt, py::ssize_t rows, int64_t r) {
  const auto U = (py::ssize_t)out.keys.size();
  py::dict d;
  d["keys"] = to_numpy(std::move(out.keys), {U});
  d["table_start"] = to_numpy(std::move(out.table_start), {(py::ssize_t)nt + 1});
  d["offsets"] = to_numpy(std::move(out.offsets), {U + 1});
  d["ids"] = to_numpy(std::move(out.ids), {rows});
  d["codes"] = to_numpy(std::move(out.codes), {rows, (py::ssize_t)r});
  d["bucket_sum"] = py::none();
  d["bucket_sqnorm"] = py::none();
  return d;
}

template <typename CodeT>
py::dict merge_impl(const MergeSide& ma, const MergeSide& mb, int64_t b_id_shift, int n_threads) {
  const StoredTables<CodeT> sa = stored_side<CodeT>(ma, "a", 0), sb = stored_side<CodeT>(mb, "b", b_id_shift);
  const int64_t nt = ma.table_start.shape(0) - 1, r = ma.codes.shape(1);
  require(mb.table_start.shape(0) - 1 == nt && mb.codes.shape(1) == r,
          "a, b: expected tables of the same n_tables and n_bits");
  require(r >= 1 && r <= 64, "codes: n_bits must be 1..64, got " + std::to_string(r));
  BuiltTables<CodeT> out;
  {
    py::gil_scoped_release nogil;  // ma / mb hold every array read here
    merge_tables_cpu<CodeT>(sa, sb, nt, r, n_threads, out);
  }
  return tables_dict(std::move(out), nt, (py::ssize_t)(nt * (sa.n_items + sb.n_items)), r);
}

// Two tables dicts that keep codes (float32, or float16 viewed as uint16, the same on both sides)
// -> their union as one build of all the rows gives; b's ids are shifted by b_id_shift.
py::dict merge_tables_cpu_py(const py::dict& a, const py::dict& b, int64_t b_id_shift, int n_threads) {
  const MergeSide ma(a, "a"), mb(b, "b");
  const bool half = py::isinstance<py::array_t<uint16_t>>(ma.codes);
  require(half == py::isinstance<py::array_t<uint16_t>>(mb.codes), "a, b: expected codes of the same dtype");
  return half ? merge_impl<uint16_t>(ma, mb, b_id_shift, n_threads) : merge_impl<float>(ma, mb, b_id_shift, n_threads);
}

template <typename CodeT>
py::dict remove_impl(const MergeSide& m, const uint8_t* keep, int n_threads) {
  const StoredTables<CodeT> st = stored_side<CodeT>(m, "tables", 0);
  const int64_t nt = m.table_start.shape(0) - 1, r = m.codes.shape(1);
  require(r >= 1 && r <= 64, "codes: n_bits must be 1..64, got " + std::to_string(r));
  BuiltTables<CodeT> out;
  {
    py::gil_scoped_release nogil;  // m holds every array read here; the ids are checked there
    remove_items_cpu<CodeT>(st, keep, nt, r, n_threads, out);
  }
  const auto kept_rows = (py::ssize_t)out.ids.size();
  return tables_dict(std::move(out), nt, kept_rows, r);
}

// A tables dict that keeps codes and ids (float32, or float16 viewed as uint16) without the items
// whose keep[id] is false, the kept ones renumbered in order: the tables one build of them gives.
py::dict remove_items_cpu_py(const py::dict& tables, const py::array& keep, int n_threads) {
  const MergeSide m(tables, "tables");
  const int64_t nt = m.table_start.shape(0) - 1;
  const bool* k = cptr<bool>(keep, "keep", 1);
  require(nt >= 1 && m.ids.shape(0) % nt == 0 && keep.shape(0) == m.ids.shape(0) / nt,
          "keep: expected one value per item of the tables");
  const auto* k8 = reinterpret_cast<const uint8_t*>(k);
  return py::isinstance<py::array_t<uint16_t>>(m.codes) ? remove_impl<uint16_t>(m, k8, n_threads)
                                                        : remove_impl<float>(m, k8, n_threads);
}

// (bucket_sum [U, r], bucket_sqnorm [U]) float64 of built tables, from offsets [U + 1] and the codes
// [offsets[U], r] (float32, or float16 viewed as uint16).
py::tuple bucket_stats_cpu_py(const py::array& offsets, const py::array& codes, int n_threads) {
  const int64_t* off = cptr<int64_t>(offsets, "offsets", 1);
  require(offsets.shape(0) >= 1, "offsets: expected U + 1 >= 1 entries");
  require(codes.ndim() == 2, "codes: expected a 2-D array");
  const int64_t U = offsets.shape(0) - 1, r = codes.shape(1);
  require(off[0] == 0 && off[U] == codes.shape(0), "offsets: must run from 0 to the number of code rows");
  for (int64_t u = 0; u < U; ++u) require(off[u] <= off[u + 1], "offsets: must be non-decreasing");
  py::array_t<double> sum({(py::ssize_t)U, (py::ssize_t)r}), sq((py::ssize_t)U);
  double* ps = sum.mutable_data();
  double* pq = sq.mutable_data();
  if (py::isinstance<py::array_t<uint16_t>>(codes)) {
    const uint16_t* c = cptr<uint16_t>(codes, "codes", 2);
    py::gil_scoped_release nogil;
    bucket_stats_cpu<uint16_t>(c, off, U, r, ps, pq, n_threads);
  } else {
    const float* c = cptr<float>(codes, "codes", 2);
    py::gil_scoped_release nogil;
    bucket_stats_cpu<float>(c, off, U, r, ps, pq, n_threads);
  }
  return py::make_tuple(sum, sq);
}

template <typename CodeT>
py::tuple lookup_impl(TablesView<CodeT> t, const py::array& query_codes, const py::array& query_keys, int mode,
                      float miss_value, int n_threads, bool partial) {
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
  py::array_t<double> sums(partial ? std::vector<py::ssize_t>{(py::ssize_t)m, (py::ssize_t)t.n_tables}
                                   : std::vector<py::ssize_t>{0});
  py::array_t<int64_t> counts(partial ? std::vector<py::ssize_t>{(py::ssize_t)m, (py::ssize_t)t.n_tables}
                                      : std::vector<py::ssize_t>{0});
  double* ps = partial ? sums.mutable_data() : nullptr;
  int64_t* pc = partial ? counts.mutable_data() : nullptr;
  {
    py::gil_scoped_release nogil;
    lookup_cpu<CodeT>(t, q, qk, m, static_cast<Mode>(mode), miss_value, o, &visited, n_threads, ps, pc);
  }
  if (partial) return py::make_tuple(out, visited, sums, counts);
  return py::make_tuple(out, visited);
}

// bucket_sum / bucket_sqnorm may be None in mode 0 (mean) when codes are given: tables built
// without statistics (they are derived on demand, see build_tables_cpu's with_stats).
// directory (optional): build_directory_cpu's array for these keys.
py::tuple lookup_cpu_py(const py::array& keys, const py::array& table_start, const py::array& offsets,
                        const py::object& codes, const py::object& bucket_sum_obj, const py::object& bucket_sqnorm_obj,
                        int64_t n_items, const py::array& query_codes, const py::array& query_keys, int mode,
                        float miss_value, int n_threads, bool partial, const py::object& directory) {
  const int64_t b = table_start.size() - 1;
  const bool has_stats = !bucket_sum_obj.is_none() && !bucket_sqnorm_obj.is_none();
  require(has_stats || (mode == 0 && !codes.is_none()),
          "tables: bucket_sum / bucket_sqnorm are needed for modes 'light' and 'squared' and without codes");
  int64_t r = 0;
  if (has_stats) {
    const py::array bs = array_arg(bucket_sum_obj, "bucket_sum");
    r = bs.ndim() == 2 ? bs.shape(1) : 0;
  } else {
    const py::array c = array_arg(codes, "codes");
    r = c.ndim() == 2 ? c.shape(1) : 0;
  }
  // keys are uint64, and the lookup's per-row scratch holds 64 values
  require(r >= 1 && r <= 64, "tables: n_bits must be 1..64, got " + std::to_string(r));
  // The lookup reads keys[table_start[j] .. table_start[j + 1]) and, for a bucket u found there, the
  // rows offsets[u] .. offsets[u + 1] of the codes: within their arrays, or a damaged table reads (and
  // crashes) outside them.  O(b) per call: the offsets' monotonicity (O(U), milliseconds per call at
  // millions of buckets, too slow for one streamed query) is checked where tables come from outside,
  // when a file is loaded (index._check_tables); add() and merge() build them sorted.
  require(b >= 1, "table_start: expected n_tables + 1 >= 2 entries, got " + std::to_string(table_start.size()));
  require(n_items >= 0, "n_items: expected >= 0, got " + std::to_string(n_items));
  const int64_t* ts = cptr<int64_t>(table_start, "table_start", 1);
  const int64_t* off = cptr<int64_t>(offsets, "offsets", 1);
  cptr<uint64_t>(keys, "keys", 1);
  const int64_t U = keys.size();
  require(offsets.size() == U + 1, "tables: inconsistent array sizes (offsets must have len(keys) + 1 entries, got " +
                                       std::to_string(offsets.size()) + " for " + std::to_string(U) + " keys)");
  require(ts[0] == 0, "table_start: must start at 0, got " + std::to_string(ts[0]));
  for (int64_t j = 0; j < b; ++j)
    if (ts[j] > ts[j + 1])  // (the message only built on failure: this runs on every lookup)
      throw std::invalid_argument("table_start: must be non-decreasing, got " + std::to_string(ts[j]) + " then " +
                                  std::to_string(ts[j + 1]) + " at table " + std::to_string(j));
  require(ts[b] <= U, "table_start: ends at " + std::to_string(ts[b]) + ", beyond the " + std::to_string(U) + " keys");
  require(off[0] == 0, "offsets: must start at 0, got " + std::to_string(off[0]));
  // every row a bucket names must exist in the codes ([b * n_items, r], checked below when given)
  require(codes.is_none() || (n_items <= std::numeric_limits<int64_t>::max() / b && off[U] <= b * n_items),
          "offsets: end at row " + std::to_string(off[U]) + ", beyond the codes' n_tables * n_items rows");
  auto fill = [&](auto& t) {
    t.n_tables = b;
    t.n_bits = r;
    t.n_items = n_items;
    t.keys = cptr<uint64_t>(keys, "keys", 1);
    t.table_start = ts;
    t.offsets = off;
    if (!directory.is_none()) {
      const py::array dir = array_arg(directory, "directory");
      t.directory = cptr<int64_t>(dir, "directory", 2);
      const int64_t slots = dir.shape(1) - 1;
      int bits = 0;
      while (bits < 20 && (int64_t(1) << bits) < slots) ++bits;
      require(dir.shape(0) == b && slots >= 2 && (int64_t(1) << bits) == slots && bits <= r,
              "directory: expected [n_tables, 2^bits + 1] with 1 <= bits <= n_bits");
      t.dir_bits = bits;
    }
    if (has_stats) {
      const py::array bucket_sum = array_arg(bucket_sum_obj, "bucket_sum"), bucket_sqnorm = array_arg(bucket_sqnorm_obj, "bucket_sqnorm");
      t.bucket_sum = cptr<double>(bucket_sum, "bucket_sum", 2);
      t.bucket_sqnorm = cptr<double>(bucket_sqnorm, "bucket_sqnorm", 1);
      require(bucket_sum.shape(0) == keys.size() && bucket_sqnorm.size() == keys.size(),
              "tables: inconsistent array sizes");
    }
  };
  if (!codes.is_none()) {
    py::array c = array_arg(codes, "codes");
    require(c.ndim() == 2 && c.shape(0) == b * n_items && c.shape(1) == r, "codes: shape must be [b*N, r]");
    if (py::isinstance<py::array_t<uint16_t>>(c)) {  // float16 viewed as uint16
      TablesView<uint16_t> t;
      fill(t);
      t.codes = cptr<uint16_t>(c, "codes", 2);
      return lookup_impl(t, query_codes, query_keys, mode, miss_value, n_threads, partial);
    }
    TablesView<float> t;
    fill(t);
    t.codes = cptr<float>(c, "codes", 2);
    return lookup_impl(t, query_codes, query_keys, mode, miss_value, n_threads, partial);
  }
  TablesView<float> t;
  fill(t);
  return lookup_impl(t, query_codes, query_keys, mode, miss_value, n_threads, partial);
}

// The lookup directory of sorted tables (lookup.h): int64 [b, 2^bits + 1], or None when the tables
// are too small for one (a plain binary search is as fast).
py::object build_directory_cpu_py(const py::array& keys, const py::array& table_start, int64_t n_bits,
                                  int n_threads) {
  const uint64_t* k = cptr<uint64_t>(keys, "keys", 1);
  const int64_t* ts = cptr<int64_t>(table_start, "table_start", 1);
  const int64_t b = table_start.size() - 1;
  require(b >= 1 && n_bits >= 1 && n_bits <= 64, "build_directory_cpu: expected b >= 1 and n_bits in 1..64");
  int64_t max_unique = 0;
  for (int64_t j = 0; j < b; ++j) {
    require(ts[j] <= ts[j + 1] && ts[j + 1] <= keys.size() && ts[0] == 0, "table_start: out of range");
    max_unique = std::max(max_unique, ts[j + 1] - ts[j]);
  }
  const int bits = directory_bits(max_unique, n_bits);
  if (bits == 0) return py::none();
  py::array_t<int64_t> dir({(py::ssize_t)b, (py::ssize_t)((int64_t(1) << bits) + 1)});
  int64_t* d = dir.mutable_data();
  {
    py::gil_scoped_release nogil;
    build_directory(k, ts, b, n_bits, bits, d, n_threads);
  }
  return dir;
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
// CUDA bindings: device pointers arrive as integers; `stream` is the caller's cudaStream_t (an
// integer, e.g. torch.cuda.current_stream().cuda_stream); `device` is the CUDA device ordinal the
// pointers live on (this module's runtime is static, so its current device is set per call).
// The calls release the GIL; the only host synchronisations are the two inside
// build_tables_cuda_sort (validation flag and the bucket count).
template <typename T>
T* dev(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void* as_stream(uintptr_t s) { return reinterpret_cast<void*>(s); }

// Makes `device` current for the call and restores the previous one after: cudaSetDevice here
// switches the thread's driver context, which the caller's own CUDA runtime (torch's) would see.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    int cur = -1;
    cudaError_t err = cudaGetDevice(&cur);
    if (err == cudaSuccess && cur == device) return;
    err = cudaSetDevice(device);
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("llsh: cudaSetDevice(" + std::to_string(device) + "): " + cudaGetErrorString(err));
    }
    prev_ = cur;
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

template <typename CodeT>
CudaBuildArgs<CodeT> make_build_args(uintptr_t keys, uintptr_t codes, uintptr_t ids, int64_t n_tables, int64_t n,
                                     int64_t n_bits, uintptr_t temp, uint64_t temp_bytes) {
  CudaBuildArgs<CodeT> a;
  a.keys_in = dev<const uint64_t>(keys);
  a.codes_in = dev<const CodeT>(codes);
  a.ids_in = dev<const int64_t>(ids);
  a.n_tables = n_tables;
  a.n = n;
  a.n_bits = n_bits;
  a.temp = dev<void>(temp);
  a.temp_bytes = temp_bytes;
  return a;
}

std::tuple<int64_t, int, int> build_sort_py(uintptr_t keys, uintptr_t codes, uintptr_t ids, int64_t n_tables,
                                            int64_t n, int64_t n_bits, bool half, uintptr_t temp, uint64_t temp_bytes,
                                            uintptr_t stream, int device) {
  DeviceGuard guard(device);
  CudaBuildState st;
  if (half)
    st = build_tables_cuda_sort(make_build_args<uint16_t>(keys, codes, ids, n_tables, n, n_bits, temp, temp_bytes),
                                as_stream(stream));
  else
    st = build_tables_cuda_sort(make_build_args<float>(keys, codes, ids, n_tables, n, n_bits, temp, temp_bytes),
                                as_stream(stream));
  return std::make_tuple(st.n_unique, st.perm_buffer, st.key_buffer);
}

template <typename CodeT>
void build_finish_impl(CudaBuildArgs<CodeT> a, const CudaBuildState& st, uintptr_t keys_out,
                       uintptr_t table_start_out, uintptr_t offsets_out, uintptr_t codes_out, uintptr_t ids_out,
                       uintptr_t sum_out, uintptr_t sqnorm_out, uintptr_t stream) {
  a.keys_out = dev<uint64_t>(keys_out);
  a.table_start_out = dev<int64_t>(table_start_out);
  a.offsets_out = dev<int64_t>(offsets_out);
  a.codes_out = dev<CodeT>(codes_out);
  a.ids_out = dev<int64_t>(ids_out);
  a.bucket_sum_out = dev<double>(sum_out);
  a.bucket_sqnorm_out = dev<double>(sqnorm_out);
  build_tables_cuda_finish(a, st, as_stream(stream));
}

void build_finish_py(uintptr_t keys, uintptr_t codes, uintptr_t ids, int64_t n_tables, int64_t n, int64_t n_bits,
                     bool half, int64_t n_unique, int perm_buffer, int key_buffer, uintptr_t keys_out,
                     uintptr_t table_start_out, uintptr_t offsets_out, uintptr_t codes_out, uintptr_t ids_out,
                     uintptr_t sum_out, uintptr_t sqnorm_out, uintptr_t temp, uint64_t temp_bytes, uintptr_t stream,
                     int device) {
  DeviceGuard guard(device);
  CudaBuildState st;
  st.n_unique = n_unique;
  st.perm_buffer = perm_buffer;
  st.key_buffer = key_buffer;
  if (half)
    build_finish_impl(make_build_args<uint16_t>(keys, codes, ids, n_tables, n, n_bits, temp, temp_bytes), st, keys_out,
                      table_start_out, offsets_out, codes_out, ids_out, sum_out, sqnorm_out, stream);
  else
    build_finish_impl(make_build_args<float>(keys, codes, ids, n_tables, n, n_bits, temp, temp_bytes), st, keys_out,
                      table_start_out, offsets_out, codes_out, ids_out, sum_out, sqnorm_out, stream);
}

template <typename CodeT>
void lookup_impl_cuda(uintptr_t keys, uintptr_t table_start, uintptr_t offsets, uintptr_t codes, uintptr_t bucket_sum,
                      uintptr_t bucket_sqnorm, int64_t n_tables, int64_t n_bits, int64_t n_items,
                      uintptr_t query_codes, uintptr_t query_keys, int64_t n_queries, int mode, float miss_value,
                      uintptr_t out, uintptr_t out_min, uintptr_t visited, uintptr_t out_sum, uintptr_t out_count,
                      uintptr_t temp, uint64_t temp_bytes, uintptr_t stream) {
  TablesView<CodeT> t;
  t.n_tables = n_tables;
  t.n_bits = n_bits;
  t.n_items = n_items;
  t.keys = dev<const uint64_t>(keys);
  t.table_start = dev<const int64_t>(table_start);
  t.offsets = dev<const int64_t>(offsets);
  t.codes = dev<const CodeT>(codes);
  t.bucket_sum = dev<const double>(bucket_sum);
  t.bucket_sqnorm = dev<const double>(bucket_sqnorm);
  lookup_cuda<CodeT>(t, dev<const float>(query_codes), dev<const uint64_t>(query_keys), n_queries,
                     static_cast<Mode>(mode), miss_value, dev<float>(out), dev<float>(out_min), dev<int64_t>(visited),
                     dev<double>(out_sum), dev<int64_t>(out_count), dev<void>(temp), temp_bytes, as_stream(stream));
}

void lookup_cuda_py(uintptr_t keys, uintptr_t table_start, uintptr_t offsets, uintptr_t codes, bool half,
                    uintptr_t bucket_sum, uintptr_t bucket_sqnorm, int64_t n_tables, int64_t n_bits, int64_t n_items,
                    uintptr_t query_codes, uintptr_t query_keys, int64_t n_queries, int mode, float miss_value,
                    uintptr_t out, uintptr_t out_min, uintptr_t visited, uintptr_t out_sum, uintptr_t out_count,
                    uintptr_t temp, uint64_t temp_bytes, uintptr_t stream, int device) {
  require(mode >= 0 && mode <= 2, "mode must be 0 (mean), 1 (light) or 2 (squared)");
  DeviceGuard guard(device);
  if (half)
    lookup_impl_cuda<uint16_t>(keys, table_start, offsets, codes, bucket_sum, bucket_sqnorm, n_tables, n_bits, n_items,
                               query_codes, query_keys, n_queries, mode, miss_value, out, out_min, visited, out_sum,
                               out_count, temp, temp_bytes, stream);
  else
    lookup_impl_cuda<float>(keys, table_start, offsets, codes, bucket_sum, bucket_sqnorm, n_tables, n_bits, n_items,
                            query_codes, query_keys, n_queries, mode, miss_value, out, out_min, visited, out_sum,
                            out_count, temp, temp_bytes, stream);
}

void register_cuda_bindings(py::module_& m) {
  using nogil = py::call_guard<py::gil_scoped_release>;
  m.def(
      "binarize_cuda",
      [](uintptr_t in, int64_t n_rows, int64_t n_bits, bool from_logits, uintptr_t codes_out, uintptr_t keys,
         uintptr_t stream, int device) {
        DeviceGuard guard(device);
        binarize_cuda(dev<const float>(in), n_rows, n_bits, from_logits, dev<float>(codes_out), dev<uint64_t>(keys),
                      as_stream(stream));
      },
      py::arg("in_ptr"), py::arg("n_rows"), py::arg("n_bits"), py::arg("from_logits"), py::arg("codes_out_ptr"),
      py::arg("keys_ptr"), py::arg("stream"), py::arg("device"), nogil(),
      "Device binarize: [n_rows, n_bits] float32 codes (or logits) -> [n_rows] uint64 keys (+ sigmoid codes).");
  m.def(
      "build_tables_cuda_temp_bytes",
      [](int64_t n_tables, int64_t n, int64_t n_bits, int device) {
        DeviceGuard guard(device);
        return build_tables_cuda_temp_bytes(n_tables, n, n_bits);
      },
      py::arg("n_tables"), py::arg("n"), py::arg("n_bits"), py::arg("device"), nogil(),
      "Scratch bytes build_tables_cuda_sort/finish need.");
  m.def("build_tables_cuda_sort", &build_sort_py, py::arg("keys_ptr"), py::arg("codes_ptr"), py::arg("ids_ptr"),
        py::arg("n_tables"), py::arg("n"), py::arg("n_bits"), py::arg("half"), py::arg("temp_ptr"),
        py::arg("temp_bytes"), py::arg("stream"), py::arg("device"), nogil(),
        "Phase 1 of the device build: sort + segment.  Returns (n_unique, perm_buffer, key_buffer); syncs the stream.");
  m.def("build_tables_cuda_finish", &build_finish_py, py::arg("keys_ptr"), py::arg("codes_ptr"), py::arg("ids_ptr"),
        py::arg("n_tables"), py::arg("n"), py::arg("n_bits"), py::arg("half"), py::arg("n_unique"),
        py::arg("perm_buffer"), py::arg("key_buffer"), py::arg("keys_out_ptr"), py::arg("table_start_out_ptr"),
        py::arg("offsets_out_ptr"), py::arg("codes_out_ptr"), py::arg("ids_out_ptr"), py::arg("bucket_sum_out_ptr"),
        py::arg("bucket_sqnorm_out_ptr"), py::arg("temp_ptr"), py::arg("temp_bytes"), py::arg("stream"),
        py::arg("device"), nogil(), "Phase 2 of the device build: writes the outputs sized for n_unique buckets.");
  m.def(
      "lookup_cuda_temp_bytes",
      [](int64_t n_queries, int64_t n_tables) { return lookup_cuda_temp_bytes(n_queries, n_tables); },
      py::arg("n_queries"), py::arg("n_tables"), "Scratch bytes lookup_cuda needs.");
  m.def("lookup_cuda", &lookup_cuda_py, py::arg("keys_ptr"), py::arg("table_start_ptr"), py::arg("offsets_ptr"),
        py::arg("codes_ptr"), py::arg("half"), py::arg("bucket_sum_ptr"), py::arg("bucket_sqnorm_ptr"),
        py::arg("n_tables"), py::arg("n_bits"), py::arg("n_items"), py::arg("query_codes_ptr"),
        py::arg("query_keys_ptr"), py::arg("n_queries"), py::arg("mode"), py::arg("miss_value"), py::arg("out_ptr"),
        py::arg("out_min_ptr"), py::arg("visited_ptr"), py::arg("out_sum_ptr"), py::arg("out_count_ptr"),
        py::arg("temp_ptr"), py::arg("temp_bytes"), py::arg("stream"), py::arg("device"), nogil(),
        "Device lookup: [M, b] float32 distances (+ optional [M] min over tables, [M, b] int64 rows visited, "
        "[M, b] float64 partial sums and int64 bucket sizes).");
}
}  // namespace
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "llsh_index native engine: binarize, build_tables (sort + segment), lookup";
  m.def("binarize_cpu", &binarize_cpu_py, py::arg("codes"), py::arg("from_logits") = false, py::arg("n_threads") = 0);
  m.def("row_moments_cpu", &row_moments_cpu_py, py::arg("x"), py::arg("eps"), py::arg("n_threads") = 0);
  m.def("hash_epilogue_cpu", &hash_epilogue_cpu_py, py::arg("raw"), py::arg("mean"), py::arg("rstd"), py::arg("wsum"),
        py::arg("n_tables"), py::arg("with_sigmoid"), py::arg("n_threads") = 0, py::arg("table_codes") = py::none(),
        py::arg("table_keys") = py::none(), py::arg("row0") = 0);
  m.def("build_tables_cpu", &build_tables_cpu_py, py::arg("keys"), py::arg("codes"), py::arg("ids"),
        py::arg("keep_codes") = true, py::arg("n_threads") = 0, py::arg("in_place") = false,
        py::arg("with_stats") = true);
  m.def("merge_tables_cpu", &merge_tables_cpu_py, py::arg("a"), py::arg("b"), py::arg("b_id_shift") = 0,
        py::arg("n_threads") = 0,
        "Union of two built tables (dicts with codes and ids) by merging their sorted runs: the tables one "
        "build of all the rows gives, without sorting again; b's ids are shifted by b_id_shift.");
  m.def("remove_items_cpu", &remove_items_cpu_py, py::arg("tables"), py::arg("keep"), py::arg("n_threads") = 0,
        "Built tables (a dict with codes and ids) without the items whose keep[id] is false, the kept ones "
        "renumbered in order: the tables one build of the kept rows gives, without sorting again.");
  m.def("bucket_stats_cpu", &bucket_stats_cpu_py, py::arg("offsets"), py::arg("codes"), py::arg("n_threads") = 0);
  m.def("lookup_cpu", &lookup_cpu_py, py::arg("keys"), py::arg("table_start"), py::arg("offsets"), py::arg("codes"),
        py::arg("bucket_sum"), py::arg("bucket_sqnorm"), py::arg("n_items"), py::arg("query_codes"),
        py::arg("query_keys"), py::arg("mode"), py::arg("miss_value"), py::arg("n_threads") = 0,
        py::arg("partial") = false, py::arg("directory") = py::none());
  m.def("build_directory_cpu", &build_directory_cpu_py, py::arg("keys"), py::arg("table_start"), py::arg("n_bits"),
        py::arg("n_threads") = 0);
  m.def(
      "isa_level", [] { return isa_level(); },
      "Instruction set of the CPU kernels now: 2 = AVX2, 1 = SSE2, 0 = portable (same results at every level).");
  m.def(
      "set_isa_cap", [](int level) { isa_cap().store(std::max(0, std::min(level, (int)kIsaAvx2))); },
      py::arg("level"), "Caps the CPU kernels' instruction set (tests compare the levels); 2 = no cap.");
  m.def("cuda_status", &cuda_status);
#ifdef LLSH_WITH_CUDA
  register_cuda_bindings(m);
#endif
}
