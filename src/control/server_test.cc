#include "control/server.h"

#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <sstream>
#include <string>
#include <thread>

namespace strata::control {
namespace {

struct SocketPair {
  int fd[2] = {-1, -1};
  SocketPair() {
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd), 0);
    // The server's settings: a small buffer fills at once; a blocking send
    // would wait 5 s on it.
    int sz = 4096;
    ::setsockopt(fd[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    timeval tv{5, 0};
    ::setsockopt(fd[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  ~SocketPair() {
    for (int f : fd)
      if (f >= 0) ::close(f);
  }
};

std::string read_all(int fd) {
  std::string s;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) s.append(buf, static_cast<std::size_t>(n));
  return s;
}

// A client that never reads while a merge reports progress: the reporting
// thread (a queue thread) must not wait on it, and what it finally reads is
// whole lines in order, ending with the reply.
TEST(LineWriter, ProgressNeverBlocksOnAClientThatDoesNotRead) {
  SocketPair sp;
  LineWriter out(sp.fd[0], std::chrono::milliseconds(0));
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20000; ++i) out.progress(nlohmann::json{{"progress", {{"n", i}}}}.dump() + "\n");
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(took, std::chrono::seconds(2)) << "progress() waited for the client";
  EXPECT_GT(out.dropped(), 0u) << "20000 lines cannot all fit; some must have been dropped";

  std::string got;
  std::thread reader([&] { got = read_all(sp.fd[1]); });
  EXPECT_TRUE(out.reply("{\"ok\":true}\n"));
  ::shutdown(sp.fd[0], SHUT_WR);
  reader.join();

  std::istringstream in(got);
  std::string line, last;
  int prev = -1, lines = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);  // throws on a torn line
    ++lines;
    last = line;
    if (j.contains("progress")) {
      int n = j["progress"]["n"].get<int>();
      EXPECT_GT(n, prev) << "progress lines out of order";
      prev = n;
    }
  }
  EXPECT_EQ(last, "{\"ok\":true}") << "the reply must come last";
  EXPECT_GT(lines, 1);
  EXPECT_EQ(got.back(), '\n');
}

TEST(LineWriter, ProgressIsRateLimited) {
  SocketPair sp;
  LineWriter out(sp.fd[0], std::chrono::milliseconds(100));
  for (int i = 0; i < 1000; ++i) out.progress("{\"progress\":1}\n");
  EXPECT_TRUE(out.reply("{\"ok\":true}\n"));
  ::shutdown(sp.fd[0], SHUT_WR);
  EXPECT_EQ(read_all(sp.fd[1]), "{\"progress\":1}\n{\"ok\":true}\n");
}

TEST(LineWriter, ReplyFailsWhenTheClientIsGone) {
  SocketPair sp;
  LineWriter out(sp.fd[0], std::chrono::milliseconds(0));
  ::close(sp.fd[1]);
  sp.fd[1] = -1;
  out.progress("{\"progress\":1}\n");
  EXPECT_FALSE(out.reply("{\"ok\":true}\n"));
}

}  // namespace
}  // namespace strata::control
