// checkpoint_files.cpp — see checkpoint_files.h: durable writes, checksums, checkpoint.meta, and
// the run-level view of checkpoints (verify, the newest complete one, retention) from train.h.
#include "checkpoint_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "hybridmoe/train.h"

namespace hybridmoe {

namespace fs = std::filesystem;

namespace detail {

namespace {

constexpr uint64_t kFnvOffset = 1469598103934665603ULL;
constexpr uint64_t kFnvPrime = 1099511628211ULL;

uint64_t fnv_update(uint64_t h, const char* data, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(data[i]);
    h *= kFnvPrime;
  }
  return h;
}

std::string errno_text(int err) {
  return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")";
}

// Writes all of `bytes` to fd; returns 0 or the errno of the failing write.
int write_all(int fd, const std::string& bytes, const std::string& path) {
  size_t limit = bytes.size();
  const char* fault = std::getenv("HMOE_FAULT_WRITE");
  const bool inject = fault && *fault && path.find(fault) != std::string::npos;
  if (inject) limit = bytes.size() / 2;
  size_t done = 0;
  while (done < limit) {
    const ssize_t n = ::write(fd, bytes.data() + done, limit - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<size_t>(n);
  }
  return inject ? ENOSPC : 0;
}

bool parse_int(const std::string& s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t j = i; j < s.size(); ++j)
    if (s[j] < '0' || s[j] > '9') return false;
  *out = std::stoll(s);
  return true;
}

bool well_formed_digest(const std::string& v) {
  const auto sp = v.find(' ');
  if (sp == std::string::npos || sp == 0 || sp > 16) return false;
  for (size_t i = 0; i < sp; ++i)
    if (!std::isxdigit(static_cast<unsigned char>(v[i]))) return false;
  int64_t size = -1;
  return parse_int(v.substr(sp + 1), &size) && size >= 0;
}

}  // namespace

Digest digest_of_bytes(const std::string& bytes) {
  return {fnv_update(kFnvOffset, bytes.data(), bytes.size()), static_cast<int64_t>(bytes.size())};
}

Digest digest_of_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return {};
  Digest d{kFnvOffset, 0};
  char buf[1 << 16];
  while (in) {
    in.read(buf, sizeof(buf));
    const auto got = in.gcount();
    d.hash = fnv_update(d.hash, buf, static_cast<size_t>(got));
    d.size += got;
  }
  return d;
}

std::string digest_text(const Digest& d) {
  std::ostringstream s;
  s << std::hex << d.hash << std::dec << " " << d.size;
  return s.str();
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, "cannot open directory ", dir, " to sync it: ", errno_text(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  TORCH_CHECK(rc == 0, "cannot sync directory ", dir, ": ", errno_text(err));
}

void write_file_durable(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  int err = 0;
  const char* what = "";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    err = errno, what = "cannot create";
  } else {
    // 1. Every byte written, 2. flushed to the device, 3. closed (which can report errors too).
    if ((err = write_all(fd, bytes, tmp)) != 0) {
      what = "cannot write";
    } else if (::fsync(fd) != 0) {
      err = errno, what = "cannot sync";
    }
    if (::close(fd) != 0 && err == 0) err = errno, what = "cannot close";
  }
  // 4. The size on disk is the size written.
  if (err == 0) {
    struct stat st;
    if (::stat(tmp.c_str(), &st) != 0) {
      err = errno, what = "cannot stat";
    } else if (st.st_size != static_cast<off_t>(bytes.size())) {
      std::error_code ec;
      fs::remove(tmp, ec);
      TORCH_CHECK(false, "writing ", path, ": ", st.st_size, " bytes on disk after writing ",
                  bytes.size(), "; the file was not replaced");
    }
  }
  if (err != 0) {
    std::error_code ec;
    fs::remove(tmp, ec);
    TORCH_CHECK(false, what, " ", tmp, ": ", errno_text(err), "; ", path, " was not replaced");
  }
  // 5. Atomically in place, and the directory entry made durable.
  rename_durable(tmp, path);
}

void rename_durable(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    const int err = errno;
    std::error_code ec;
    if (fs::is_regular_file(from, ec)) fs::remove(from, ec);
    TORCH_CHECK(false, "cannot rename ", from, " to ", to, ": ", errno_text(err));
  }
  const auto parent = fs::path(to).parent_path();
  fsync_directory(parent.empty() ? "." : parent.string());
}

std::map<std::string, std::string> parse_meta(const std::string& text, const std::string& origin) {
  std::map<std::string, std::string> meta;
  std::istringstream in(text);
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    const auto eq = line.find(" = ");
    TORCH_CHECK(eq != std::string::npos && eq > 0, origin, " line ", number,
                ": expected `key = value`, got \"", line.substr(0, 80), "\"");
    const std::string key = line.substr(0, eq), value = line.substr(eq + 3);
    TORCH_CHECK(meta.emplace(key, value).second, origin, " line ", number, ": key `", key,
                "` appears twice");
  }
  auto need = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    TORCH_CHECK(it != meta.end(), origin, ": no `", key,
                "` entry (not a checkpoint, or an incomplete one)");
    return it->second;
  };
  TORCH_CHECK(need("format") == kCheckpointFormat, origin, ": unknown format \"", meta["format"],
              "\", expected \"", kCheckpointFormat, "\"");
  int64_t step = -1, world = 0;
  TORCH_CHECK(parse_int(need("step"), &step) && step >= 0, origin,
              ": `step` should be an integer >= 0, got \"", meta["step"], "\"");
  TORCH_CHECK(parse_int(need("world_size"), &world) && world >= 1 && world <= (1 << 20), origin,
              ": `world_size` should be an integer >= 1, got \"", meta["world_size"], "\"");
  need("layout");
  for (int64_t r = 0; r < world; ++r) {
    const std::string key = "shard." + std::to_string(r);
    TORCH_CHECK(well_formed_digest(need(key)), origin, ": `", key,
                "` should be a checksum `hex size`, got \"", meta[key], "\"");
  }
  for (const char* key : {"model", "optimizer"})
    TORCH_CHECK(well_formed_digest(need(key)), origin, ": `", key,
                "` should be a checksum `hex size`, got \"", meta[key], "\"");
  return meta;
}

std::map<std::string, std::string> read_meta(const std::string& dir) {
  const std::string path = (fs::path(dir) / kMetaFile).string();
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "checkpoint ", dir, ": cannot read ", kMetaFile,
              " (not a checkpoint, or an incomplete one)");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_meta(text.str(), "checkpoint " + dir + ": " + kMetaFile);
}

}  // namespace detail

std::vector<std::string> list_checkpoints(const std::string& out) {
  std::vector<std::string> dirs;
  std::error_code ec;
  const fs::path root = fs::path(out) / "checkpoints";
  if (!fs::is_directory(root, ec)) return dirs;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    const bool digits =
        name.size() > 5 && name.find_first_not_of("0123456789", 5) == std::string::npos;
    if (entry.is_directory(ec) && name.rfind("step_", 0) == 0 && digits)
      dirs.push_back(entry.path().string());
  }
  std::sort(dirs.begin(), dirs.end());  // zero-padded: name order is step order
  return dirs;
}

std::string verify_checkpoint(const std::string& dir) {
  std::map<std::string, std::string> meta;
  try {
    meta = detail::read_meta(dir);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  const int64_t world = std::stoll(meta["world_size"]);
  std::vector<std::pair<std::string, std::string>> files = {{"model.pt", meta["model"]},
                                                            {"optimizer.pt", meta["optimizer"]}};
  for (int64_t r = 0; r < world; ++r)
    files.emplace_back("rank_" + std::to_string(r) + ".pt", meta["shard." + std::to_string(r)]);
  for (const auto& [name, want] : files) {
    const std::string path = (fs::path(dir) / name).string();
    const auto got = detail::digest_of_file(path);
    if (got.size < 0) return "checkpoint " + dir + ": " + name + " is missing or unreadable";
    if (detail::digest_text(got) != want)
      return "checkpoint " + dir + ": " + name + " is corrupted (checksum or size " +
             detail::digest_text(got) + " differs from " + detail::kMetaFile + "'s " + want + ")";
  }
  return "";
}

ResumePoint find_resume_checkpoint(const std::string& out) {
  ResumePoint p;
  const fs::path latest = fs::path(out) / "checkpoints" / "latest";
  std::string name, why_not_latest;
  {
    std::ifstream in(latest);
    if (in.good()) std::getline(in, name);
  }
  std::error_code ec;
  if (!fs::exists(latest, ec)) {
    why_not_latest = latest.string() + " is missing";
  } else if (name.empty() || name.find('/') != std::string::npos) {
    why_not_latest = latest.string() + " is empty or malformed";
  } else {
    const std::string dir = (fs::path(out) / "checkpoints" / name).string();
    why_not_latest = verify_checkpoint(dir);
    if (why_not_latest.empty()) {
      p.dir = dir;
      return p;
    }
  }
  // The newest step directory that verifies.
  auto dirs = list_checkpoints(out);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    const std::string problem = verify_checkpoint(*it);
    if (problem.empty()) {
      p.dir = *it;
      p.note = why_not_latest + "; resuming from " + *it +
               ", the newest checkpoint that passes its checks";
      return p;
    }
  }
  p.note = why_not_latest + "; no other checkpoint under " +
           (fs::path(out) / "checkpoints").string() + " passes its checks";
  return p;
}

std::string resume_config_checkpoint(const std::string& out) {
  std::vector<std::string> candidates;
  const std::string latest = latest_checkpoint(out);
  if (!latest.empty()) candidates.push_back(latest);
  auto dirs = list_checkpoints(out);
  candidates.insert(candidates.end(), dirs.rbegin(), dirs.rend());
  for (const auto& dir : candidates) {
    try {
      detail::read_meta(dir);
      return dir;
    } catch (const c10::Error&) {
    }
  }
  return "";
}

std::vector<std::string> prune_checkpoints(const std::string& out, int64_t keep) {
  std::vector<std::string> removed;
  std::error_code ec;
  // Temporaries of interrupted writes are never worth keeping.
  const fs::path root = fs::path(out) / "checkpoints";
  if (fs::is_directory(root, ec))
    for (const auto& entry : fs::directory_iterator(root, ec))
      if (entry.path().filename().string().rfind(".tmp_step_", 0) == 0) {
        fs::remove_all(entry.path(), ec);
        removed.push_back(entry.path().string());
      }
  if (keep <= 0) return removed;
  std::string latest_name;
  {
    std::ifstream in(root / "latest");
    if (in.good()) std::getline(in, latest_name);
  }
  auto dirs = list_checkpoints(out);
  const int64_t extra = static_cast<int64_t>(dirs.size()) - keep;
  for (int64_t i = 0; i < extra; ++i) {
    if (fs::path(dirs[i]).filename().string() == latest_name) continue;
    fs::remove_all(dirs[i], ec);
    TORCH_CHECK(!ec, "checkpoint_keep: cannot remove ", dirs[i], ": ", ec.message());
    removed.push_back(dirs[i]);
  }
  return removed;
}

}  // namespace hybridmoe
