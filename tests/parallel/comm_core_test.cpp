// comm_core_test.cpp — the comm core (src/parallel/comm/work.cpp) on one process: a ready handle
// returns its tensor without communicating, an empty one is done and refuses to wait. The
// asynchronous collectives on real ranks are in comm_core_dist_test.cpp.
#include <gtest/gtest.h>

#include "hybridmoe/collectives.h"

namespace hybridmoe {
namespace {

TEST(CommCore, ReadyWorkNeedsNoCommunication) {
  auto t = torch::arange(3);
  auto w = dist::PendingWork::ready(t);
  EXPECT_TRUE(w.done());
  EXPECT_TRUE(w.wait().is_same(t));
  dist::PendingWork nothing;
  EXPECT_TRUE(nothing.done());
  EXPECT_THROW(nothing.wait(), c10::Error);
}

}  // namespace
}  // namespace hybridmoe
