// safetensors.cpp — see safetensors.h: the header's checks, tensors over a mapped file, and the
// atomic writer.
#include "hybridmoe/safetensors.h"

#include "train/checkpoint_files.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#ifdef HMOE_HAVE_JSON
#include <nlohmann/json.hpp>
#endif

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors: the data are little-endian; this reader maps them as they are");

namespace hybridmoe::safetensors {

// The file's bytes: a read-only mapping, or a string (from_bytes).
struct File::Bytes {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  void* mapping = nullptr;  // munmap'd on destruction when set
  std::string owned;
  ~Bytes() {
    if (mapping) munmap(mapping, size);
  }
};

namespace {

// The format's dtypes this reader and writer know.
const std::vector<std::pair<const char*, torch::ScalarType>>& dtypes() {
  static const std::vector<std::pair<const char*, torch::ScalarType>> kTypes = {
      {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
      {"F64", torch::kFloat64}, {"I64", torch::kInt64},   {"I32", torch::kInt32},
      {"U8", torch::kUInt8},    {"BOOL", torch::kBool}};
  return kTypes;
}

// The longest header accepted (the format's own reader caps it at 100 MB as well).
constexpr uint64_t kMaxHeader = 100ull << 20;

}  // namespace

File File::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, "safetensors: cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    TORCH_CHECK(false, "safetensors: cannot stat ", path, ": ", std::strerror(e));
  }
  auto bytes = std::make_shared<Bytes>();
  bytes->size = static_cast<uint64_t>(st.st_size);
  if (bytes->size > 0) {
    void* m = mmap(nullptr, bytes->size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    ::close(fd);
    TORCH_CHECK(m != MAP_FAILED, "safetensors: cannot map ", path, ": ", std::strerror(e));
    bytes->mapping = m;
    bytes->data = static_cast<const uint8_t*>(m);
  } else {
    ::close(fd);
  }
  return parse(bytes, path);
}

File File::from_bytes(std::string data, const std::string& origin) {
  auto bytes = std::make_shared<Bytes>();
  bytes->owned = std::move(data);
  bytes->data = reinterpret_cast<const uint8_t*>(bytes->owned.data());
  bytes->size = bytes->owned.size();
  return parse(bytes, origin);
}

File File::parse(std::shared_ptr<const Bytes> bytes, const std::string& origin) {
#ifndef HMOE_HAVE_JSON
  TORCH_CHECK(false, "safetensors: ", origin, ": hybridmoe was built without nlohmann-json");
#else
  using nlohmann::json;
  File f;
  f.bytes_ = bytes;
  f.origin_ = origin;
  const uint64_t size = bytes->size;
  // 1. The header length, and the header within the file.
  TORCH_CHECK(size >= 8, "safetensors: ", origin, ": ", size,
              " bytes is too short for the 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, bytes->data, 8);
  TORCH_CHECK(n <= kMaxHeader && n <= size - 8, "safetensors: ", origin, ": the header length ", n,
              " runs past the end of the file (", size, " bytes)");
  const char* header = reinterpret_cast<const char*>(bytes->data + 8);
  TORCH_CHECK(n >= 2 && header[0] == '{', "safetensors: ", origin,
              ": the header must be a JSON object starting with '{'");
  f.data_start_ = 8 + n;
  const uint64_t data_size = size - f.data_start_;
  // 2. The JSON, with repeated names refused (a JSON parser would keep the last one silently).
  std::set<std::string> names;
  std::string repeated;
  json::parser_callback_t no_repeats = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key) {
      const auto name = parsed.get<std::string>();
      if (!names.insert(name).second && repeated.empty()) repeated = name;
    }
    return true;
  };
  json h;
  try {
    h = json::parse(header, header + n, no_repeats);
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "safetensors: ", origin, ": the header is not valid JSON: ", e.what());
  }
  TORCH_CHECK(h.is_object(), "safetensors: ", origin, ": the header is not a JSON object");
  TORCH_CHECK(repeated.empty(), "safetensors: ", origin, ": tensor \"", repeated,
              "\" appears twice in the header");
  // 3. Each entry: dtype, shape and byte range, consistent with each other.
  for (const auto& [name, entry] : h.items()) {
    if (name == "__metadata__") {
      TORCH_CHECK(entry.is_object(), "safetensors: ", origin,
                  ": __metadata__ must be an object of strings");
      for (const auto& [k, v] : entry.items()) {
        TORCH_CHECK(v.is_string(), "safetensors: ", origin, ": __metadata__ \"", k,
                    "\" is not a string");
        f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) {
      TORCH_CHECK(false, "safetensors: ", origin, ": tensor \"", name, "\": ", why);
    };
    if (!entry.is_object()) bad("expected an object with dtype, shape and data_offsets");
    TensorInfo t;
    t.name = name;
    const auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) bad("dtype is missing or not a string");
    t.dtype_name = dt->get<std::string>();
    const auto known = std::find_if(dtypes().begin(), dtypes().end(),
                                    [&](const auto& d) { return t.dtype_name == d.first; });
    if (known == dtypes().end())
      bad("unknown dtype \"" + t.dtype_name +
          "\" (expected F32, F16, BF16, F64, I64, I32, U8 or BOOL)");
    t.dtype = known->second;
    const auto sh = entry.find("shape");
    if (sh == entry.end() || !sh->is_array()) bad("shape is missing or not an array");
    uint64_t elements = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) bad("shape holds a value that is not a non-negative integer");
      const uint64_t v = d.get<uint64_t>();
      if (v > (uint64_t{1} << 62) || (v > 0 && elements > (uint64_t{1} << 62) / v))
        bad("shape is too large");
      elements *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const auto off = entry.find("data_offsets");
    if (off == entry.end() || !off->is_array() || off->size() != 2 ||
        !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
      bad("data_offsets must be two non-negative integers [begin, end]");
    t.begin = (*off)[0].get<uint64_t>();
    t.end = (*off)[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_size)
      bad("data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
          ") out of the data's " + std::to_string(data_size) + " bytes");
    const uint64_t item = c10::elementSize(t.dtype);
    if (elements > (t.end - t.begin) / std::max<uint64_t>(item, 1) + 1 ||
        elements * item != t.end - t.begin)
      bad("shape holds " + std::to_string(elements) + " elements of " + std::to_string(item) +
          " bytes but data_offsets span " + std::to_string(t.end - t.begin) + " bytes");
    f.tensors_.push_back(std::move(t));
  }
  // 4. The ranges tile the data section exactly: no overlap, no hole, nothing after the last.
  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  for (const auto& t : f.tensors_) {
    TORCH_CHECK(t.begin == at, "safetensors: ", origin, ": tensor \"", t.name, "\" starts at byte ",
                t.begin, " of the data but the previous tensor ends at ", at,
                t.begin < at ? " (overlap)" : " (a hole)");
    at = t.end;
  }
  TORCH_CHECK(at == data_size, "safetensors: ", origin, ": the tensors cover ", at,
              " bytes of data but the file holds ", data_size);
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
#endif
}

const TensorInfo& File::info(const std::string& name) const {
  auto it = index_.find(name);
  TORCH_CHECK(it != index_.end(), "safetensors: ", origin_, " holds no tensor \"", name, "\"");
  return tensors_[it->second];
}

torch::Tensor File::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  const uint8_t* p = bytes_->data + data_start_ + t.begin;
  const auto opts = torch::TensorOptions().dtype(t.dtype);
  const uint64_t item = c10::elementSize(t.dtype);
  if (t.end == t.begin) return torch::empty(t.shape, opts);
  if (reinterpret_cast<uintptr_t>(p) % item != 0) {
    // Unaligned for its dtype (the header's length is free): a copy.
    auto out = torch::empty(t.shape, opts);
    std::memcpy(out.data_ptr(), p, t.end - t.begin);
    return out;
  }
  auto keep = bytes_;
  return torch::from_blob(
      const_cast<uint8_t*>(p), t.shape, [keep](void*) {}, opts);
}

std::string serialize(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
#ifndef HMOE_HAVE_JSON
  TORCH_CHECK(false, "safetensors: hybridmoe was built without nlohmann-json");
#else
  using nlohmann::json;
  // 1. The header, in the given order.
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::set<std::string> names;
  std::vector<torch::Tensor> data;
  uint64_t at = 0;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(!name.empty() && name != "__metadata__",
                "safetensors: a tensor name must be "
                "non-empty and not __metadata__, got \"",
                name, "\"");
    TORCH_CHECK(names.insert(name).second, "safetensors: tensor \"", name, "\" is given twice");
    TORCH_CHECK(tensor.defined(), "safetensors: tensor \"", name, "\" is undefined");
    const auto known = std::find_if(dtypes().begin(), dtypes().end(), [&](const auto& d) {
      return d.second == tensor.scalar_type();
    });
    TORCH_CHECK(known != dtypes().end(), "safetensors: tensor \"", name, "\" has dtype ",
                tensor.scalar_type(), "; the format holds F32, F16, BF16, F64, I64, I32, U8, BOOL");
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    h[name] = {
        {"dtype", known->first}, {"shape", t.sizes().vec()}, {"data_offsets", {at, at + bytes}}};
    at += bytes;
    data.push_back(t);
  }
  // nlohmann's objects sort their keys; the data follow the given order, which the offsets say.
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  // 2. Length, header, data.
  std::string out;
  out.reserve(8 + header.size() + at);
  const uint64_t n = header.size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  out += header;
  for (const auto& t : data)
    out.append(static_cast<const char*>(t.data_ptr()),
               static_cast<size_t>(t.numel()) * t.element_size());
  return out;
#endif
}

void save(const std::string& path,
          const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata) {
  // Written, flushed, size-checked, renamed over `path` and the directory synced, as checkpoints.
  detail::write_file_durable(path, serialize(tensors, metadata));
}

}  // namespace hybridmoe::safetensors
