// bench_a2a_command.cpp — `hmoe bench a2a`: the flat and the two-level (Tutel 2DH) all-to-all over
// the world, side by side: the rows and messages that cross nodes (counted by the exchange, summed
// over ranks) and the time per exchange (slowest rank). Both must give the same rows; the JSON
// says whether they did. Nodes: --ranks-per-node, else the launcher's ranks per node.
#include <chrono>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "hmoe/commands.h"
#include "hybridmoe/collectives.h"
#include "hybridmoe/detail/hierarchical_all_to_all.h"
#include "hybridmoe/dist.h"

namespace hybridmoe::cli {

namespace {

struct A2aArgs {
  int64_t nproc = 4;
  int64_t rows = 2048;  // rows each rank sends, over all destinations
  int64_t d = 256;
  int64_t iters = 5;
  int64_t ranks_per_node = 0;
  std::string algorithms = "flat,hierarchical";
};

// Rows from rank s to rank d: an uneven share of `rows` (1/2 to 3/2 of the mean), the same table
// on every rank.
int64_t rows_between(const A2aArgs& a, int64_t P, int64_t s, int64_t d) {
  const int64_t mean = a.rows / P;
  return mean / 2 + (mean * ((s * 7 + d * 3) % P)) / std::max<int64_t>(P - 1, 1);
}

int run_a2a(const A2aArgs& a) {
  auto world = dist::init();
  at::set_num_threads(1);
  const dist::Group& g = world->group();
  const int64_t P = world->size(), me = world->rank();
  const int64_t per_node = a.ranks_per_node > 0 ? a.ranks_per_node : world->env().local_world_size;
  std::vector<int64_t> in(P), out(P);
  for (int64_t k = 0; k < P; ++k) {
    in[k] = rows_between(a, P, me, k);
    out[k] = rows_between(a, P, k, me);
  }
  int64_t rows = 0;
  for (int64_t v : in) rows += v;
  auto x = torch::arange(rows * a.d, torch::kFloat32).view({rows, a.d}) + 1e4f * me;
  nlohmann::json j{{"world", P},
                   {"ranks_per_node", per_node},
                   {"rows_per_rank", rows},
                   {"d", a.d},
                   {"iters", a.iters}};
  torch::Tensor first;
  bool equal = true;
  for (const std::string& algo : {std::string("flat"), std::string("hierarchical")}) {
    if (a.algorithms.find(algo) == std::string::npos) continue;
    const bool two_level = algo == "hierarchical";
    dist::CrossNodeTraffic traffic;
    auto run = [&] {
      if (!two_level) {
        traffic = dist::flat_cross_node_traffic(in, a.d * 4, g, per_node);
        return dist::all_to_all(x, out, in, g);
      }
      return dist::hierarchical_all_to_all(x, out, in, g, per_node, &traffic);
    };
    torch::Tensor y = run();  // warm-up, and the result to compare
    if (!first.defined()) {
      first = y;
    } else {
      equal = equal && torch::equal(first, y);
    }
    dist::barrier(g);
    const auto start = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < a.iters; ++i) run();
    dist::barrier(g);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count() /
        static_cast<double>(std::max<int64_t>(a.iters, 1));
    auto sums =
        dist::all_reduce_sum(torch::tensor({traffic.bytes, traffic.messages}, torch::kInt64), g);
    j[algo] = {{"cross_node_bytes", sums[0].item<int64_t>()},
               {"cross_node_messages", sums[1].item<int64_t>()},
               {"ms_per_exchange", ms}};
  }
  auto all_equal = dist::all_reduce_sum(torch::tensor({equal ? 0 : 1}, torch::kInt64), g);
  j["equal"] = all_equal[0].item<int64_t>() == 0;
  if (me == 0) std::cout << j.dump() << std::endl;
  world->finalize();
  return j["equal"].get<bool>() ? 0 : 1;
}

}  // namespace

void add_bench_a2a_command(CLI::App* bench) {
  auto a = std::make_shared<A2aArgs>();
  auto* cmd = bench->add_subcommand(
      "a2a",
      "The flat and the two-level (Tutel 2DH) all-to-all over the world: rows, bytes and "
      "messages crossing nodes and time per exchange");
  cmd->add_option("--nproc", a->nproc, "Ranks (over all nodes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--rows", a->rows, "Rows each rank sends")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--d", a->d, "Row width (float32)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--iters", a->iters, "Timed exchanges per algorithm")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--ranks-per-node", a->ranks_per_node,
                  "Ranks per node (0: the launcher's LOCAL_WORLD_SIZE)")
      ->capture_default_str();
  cmd->add_option("--algorithms", a->algorithms, "flat, hierarchical or both (comma-separated)")
      ->capture_default_str();
  add_node_flags(cmd);
  cmd->callback([a] {
    const int code = run_here_or_on_local_ranks(a->nproc, [&] { return run_a2a(*a); });
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace hybridmoe::cli
