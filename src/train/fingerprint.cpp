// fingerprint.cpp — see fingerprint.h: each rank hashes its effective configuration and version,
// the hashes are all-gathered, and on a mismatch the (key, value) texts are exchanged over the
// store so that every rank can name the keys, the values and the ranks that hold them.
#include "hybridmoe/detail/fingerprint.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <sstream>
#include <thread>

#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/compat.h"
#include "hybridmoe/version.h"

namespace hybridmoe {
namespace {

constexpr uint64_t kFnvOffset = 14695981039346656037ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

/// Length-prefixed text of the entries ("<n>:<name><n>:<value>..."), safe for any bytes.
std::string serialize(const ConfigEntries& entries) {
  std::ostringstream out;
  for (const auto& [name, value] : entries) {
    out << name.size() << ':' << name << value.size() << ':' << value;
  }
  return out.str();
}

ConfigEntries deserialize(const std::string& text, int64_t rank) {
  ConfigEntries entries;
  size_t pos = 0;
  auto field = [&]() {
    const size_t colon = text.find(':', pos);
    TORCH_CHECK(colon != std::string::npos, "configuration fingerprint: rank ", rank,
                "'s entries are malformed at byte ", pos);
    const size_t n = std::stoul(text.substr(pos, colon - pos));
    TORCH_CHECK(colon + 1 + n <= text.size(), "configuration fingerprint: rank ", rank,
                "'s entries are truncated at byte ", pos);
    std::string s = text.substr(colon + 1, n);
    pos = colon + 1 + n;
    return s;
  };
  while (pos < text.size()) {
    std::string name = field();
    entries.emplace_back(std::move(name), field());
  }
  return entries;
}

std::string ranks_text(const std::vector<int64_t>& ranks) {
  std::ostringstream s;
  s << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size(); ++i) s << (i ? "," : "") << ranks[i];
  return s.str();
}

}  // namespace

const std::vector<std::string>& per_rank_config_keys() {
  // Only rank 0 prints progress and writes metrics, so the other ranks' values of these keys
  // change nothing; every other key shapes the model, the data, the collectives or the files
  // that all ranks write, and must agree.
  static const std::vector<std::string> kKeys = {"progress", "log_every", "stats_every"};
  return kKeys;
}

ConfigEntries fingerprint_entries(const TrainConfig& config) {
  const auto& skip = per_rank_config_keys();
  ConfigEntries entries;
  for (const auto& key : train_config_keys()) {
    if (std::find(skip.begin(), skip.end(), key.name) != skip.end()) continue;
    entries.emplace_back(key.name, get_config_value(config, key.name));
  }
  entries.emplace_back("hmoe_version", kVersion);
  entries.emplace_back("libtorch_version", compat::torch_version());
  return entries;
}

uint64_t config_fingerprint(const ConfigEntries& entries) {
  uint64_t h = kFnvOffset;
  for (char c : serialize(entries)) {
    h ^= static_cast<unsigned char>(c);
    h *= kFnvPrime;
  }
  return h;
}

std::string describe_config_differences(const std::vector<ConfigEntries>& per_rank) {
  // 1. Every key any rank has, in the order of the first rank that has it.
  std::vector<std::string> names;
  std::vector<std::map<std::string, std::string>> values(per_rank.size());
  for (size_t r = 0; r < per_rank.size(); ++r) {
    for (const auto& [name, value] : per_rank[r]) {
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
      values[r][name] = value;
    }
  }
  // 2. Per key: the distinct values in order of their lowest rank, each with its ranks.
  std::ostringstream out;
  int64_t differing = 0;
  for (const auto& name : names) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> groups;
    for (size_t r = 0; r < per_rank.size(); ++r) {
      auto it = values[r].find(name);
      const std::string v = it == values[r].end() ? "(missing)" : it->second;
      auto g =
          std::find_if(groups.begin(), groups.end(), [&](const auto& p) { return p.first == v; });
      if (g == groups.end()) {
        groups.push_back({v, {static_cast<int64_t>(r)}});
      } else {
        g->second.push_back(static_cast<int64_t>(r));
      }
    }
    if (groups.size() < 2) continue;
    out << (differing++ ? "; " : "configuration differs across ranks: ") << name << " = ";
    for (size_t i = 0; i < groups.size(); ++i) {
      out << (i == 0   ? ""
              : i == 1 ? " but "
                       : ", ")
          << groups[i].first << " on " << ranks_text(groups[i].second);
    }
  }
  return out.str();
}

void check_config_agreement(const TrainConfig& config, dist::World& world) {
  if (world.size() == 1) return;
  // 1. One small collective: every rank's hash.
  const ConfigEntries mine = fingerprint_entries(config);
  const auto hashes =
      dist::all_gather_counts(static_cast<int64_t>(config_fingerprint(mine)), world.group());
  if (std::all_of(hashes.begin(), hashes.end(), [&](int64_t h) { return h == hashes[0]; })) return;
  // 2. Only on a mismatch (every rank sees it): the entries over the store, to name the values.
  const std::string prefix =
      "hmoe/fingerprint/" + std::to_string(world.next_generation("fingerprint")) + "/";
  const auto& store = world.store();
  const std::string text = serialize(mine);
  store->set(prefix + std::to_string(world.rank()), std::vector<uint8_t>(text.begin(), text.end()));
  std::vector<ConfigEntries> per_rank;
  for (int64_t r = 0; r < world.size(); ++r) {
    const auto bytes = store->get(prefix + std::to_string(r));
    per_rank.push_back(deserialize(std::string(bytes.begin(), bytes.end()), r));
  }
  std::string why = describe_config_differences(per_rank);
  if (why.empty()) why = "configuration fingerprints differ across ranks but no key does";
  // 3. Rank 0 serves the store: it waits (bounded) until every rank has read before raising.
  const std::string read_key = prefix + "read";
  store->add(read_key, 1);
  if (world.rank() == 0) {
    const auto deadline = std::chrono::steady_clock::now() + world.timeout();
    while (store->add(read_key, 0) < world.size() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  TORCH_CHECK(false, why,
              " (every rank must be started with the same configuration and hmoe build)");
}

}  // namespace hybridmoe
