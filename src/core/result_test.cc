#include "core/result.h"

#include <gtest/gtest.h>

namespace strata {
namespace {

Result<int> half(int x) {
  if (x % 2) return fail(EINVAL, "odd");
  return x / 2;
}

Result<int> quarter(int x) {
  int h = TRY(half(x));
  return TRY(half(h));
}

Result<> check_even(int x) {
  TRY(half(x));
  return {};
}

TEST(Result, ValueAndError) {
  auto ok = half(8);
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, 4);
  auto bad = half(3);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_EQ(bad.error().message, "odd");
}

TEST(Result, TryPropagatesTheFirstError) {
  EXPECT_EQ(*quarter(8), 2);
  auto r = quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_TRUE(check_even(4));
  EXPECT_FALSE(check_even(5));
}

TEST(Result, PosixErrorCarriesErrnoAndContext) {
  Result<> r = posix_error("pread base.img@4096", EIO);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
  EXPECT_EQ(r.error().message, "pread base.img@4096: Input/output error");
  Error e = with_context(r.error(), "layer 2");
  EXPECT_EQ(e.code, EIO);
  EXPECT_EQ(e.message, "layer 2: pread base.img@4096: Input/output error");
}

}  // namespace
}  // namespace strata
