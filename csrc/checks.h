// Argument descriptors and input checks shared by the CPU and CUDA bindings. Every check names the offending
// argument; they throw std::invalid_argument, which pybind11 turns into a Python ValueError.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace meds {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kInt64 = 3, kOther = 4 };

inline DType dtype_from_name(const std::string& s) {
  if (s == "float32") return DType::kFloat32;
  if (s == "bfloat16") return DType::kBFloat16;
  if (s == "float16") return DType::kFloat16;
  if (s == "int64") return DType::kInt64;
  return DType::kOther;
}

inline bool is_float(DType t) { return t == DType::kFloat32 || t == DType::kBFloat16 || t == DType::kFloat16; }

inline int64_t dtype_size(DType t) { return t == DType::kFloat32 ? 4 : t == DType::kInt64 ? 8 : 2; }

// A tensor as the Python side describes it: address, dtype, shape and strides (in elements), device
// (-1: host memory, >= 0: CUDA device index).
struct TensorArg {
  std::string name;
  std::uintptr_t ptr = 0;
  DType dtype = DType::kOther;
  std::string dtype_name;
  std::vector<int64_t> shape, strides;
  int device = -1;
  bool defined = false;  // false for an optional argument passed as None

  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t i) const { return shape[static_cast<size_t>(i)]; }
  int64_t stride(int64_t i) const { return strides[static_cast<size_t>(i)]; }
};

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

inline std::string shape_str(const TensorArg& t) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < t.shape.size(); ++i) os << (i ? ", " : "") << t.shape[i];
  os << "]";
  return os.str();
}

inline std::string device_str(int device) { return device < 0 ? std::string("cpu") : cat("cuda:", device); }

}  // namespace meds

#define MEDS_CHECK(cond, ...) \
  do {                        \
    if (!(cond)) throw std::invalid_argument(::meds::cat(__VA_ARGS__)); \
  } while (0)

// `t` has `n` dimensions.
#define CHECK_DIM(t, n, layout) \
  MEDS_CHECK((t).dim() == (n), (t).name, ": expected a ", n, "-D tensor ", layout, ", got shape ", \
             ::meds::shape_str(t))

// `t.shape[i] == n`; `what` says where n comes from.
#define CHECK_SIZE(t, i, n, what) \
  MEDS_CHECK((t).size(i) == (n), (t).name, ": shape ", ::meds::shape_str(t), " does not match: dimension ", i, \
             " must be ", n, " (", what, ")")

// `t` holds float32, bfloat16 or float16.
#define CHECK_FLOAT(t) \
  MEDS_CHECK(::meds::is_float((t).dtype), (t).name, ": unsupported dtype ", (t).dtype_name, \
             "; use float32, bfloat16 or float16")

// `t` holds exactly `dt` (`dt_name` is what the message calls it).
#define CHECK_DTYPE(t, dt, dt_name) \
  MEDS_CHECK((t).dtype == (dt), (t).name, ": unsupported dtype ", (t).dtype_name, "; expected ", dt_name)

// Dimension i of `t` has unit stride (other strides are free).
#define CHECK_UNIT_STRIDE(t, i) \
  MEDS_CHECK((t).size(i) <= 1 || (t).stride(i) == 1, (t).name, ": dimension ", i, " must have stride 1, got ", \
             (t).stride(i), "; pass a tensor whose last dimension is contiguous (e.g. .contiguous())")

// `t` lives on `device` (-1: CPU).
#define CHECK_DEVICE(t, dev) \
  MEDS_CHECK((t).device == (dev), (t).name, ": is on ", ::meds::device_str((t).device), ", expected ", \
             ::meds::device_str(dev))
