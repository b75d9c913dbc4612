// libFuzzer: the NBD server as a client sees it, from the first byte on: the
// handshake (option haggling, STARTTLS into a TLS handshake with a PSK
// configuration, INFO/GO, meta contexts) and the transmission request parser
// (requests, payloads, disconnects). One server runs for the whole process,
// on one queue thread, with a read-write and a read-only export; each input
// is what one client sends on one connection. The harness reads and drops
// what the server sends, then closes its side and waits for the server to
// close: a server that never does is a finding (the per-input timeout).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

#include "core/log.h"
#include "core/queue.h"
#include "exports/nbd/server.h"
#include "targets/memory.h"

namespace {

struct Fixture {
  std::unique_ptr<strata::Queue> q;
  strata::DeviceRegistry devices;
  std::unique_ptr<strata::nbd::Server> server;
  std::string sock;

  void add(std::string name, std::string description, std::shared_ptr<strata::Target> t, bool ro) {
    auto d = std::make_shared<strata::Device>();
    d->name = std::move(name);
    d->description = std::move(description);
    d->target = std::move(t);
    d->read_only = ro;
    devices.put(std::move(d));
  }

  Fixture() {
    std::string dir = "/tmp/strata-fuzz-" + std::to_string(::getpid());
    ::mkdir(dir.c_str(), 0700);
    sock = dir + "/nbd.sock";
    std::string psk = dir + "/keys.psk";
    std::ofstream(psk) << "alice:0123456789abcdef0123456789abcdef\n";
    ::chmod(psk.c_str(), 0600);
    // Warnings and errors only: a line per connection would be most of the run.
    strata::set_log_level(strata::LogLevel::kWarn);
    q = std::make_unique<strata::Queue>(0);
    if (!q->start()) __builtin_trap();
    strata::nbd::ServerOptions o;
    o.max_connections = 4;
    o.max_handshakes = 4;
    o.max_memory = strata::nbd::MemoryBudget::minimum(4);
    o.handshake_timeout = std::chrono::milliseconds(2000);
    auto tls = strata::nbd::TlsConfig::load(strata::nbd::TlsMode::kOn, "", psk, false);
    if (!tls) __builtin_trap();
    o.tls = *tls;
    server = std::make_unique<strata::nbd::Server>(std::vector<strata::Queue*>{q.get()}, devices, o);
    auto mem = std::make_shared<strata::MemoryTarget>(1 << 20);
    add("", "a memory disk", mem, false);
    add("ro", "", mem, true);
    if (!server->listen_unix(sock)) __builtin_trap();
    server->start();
  }
};

Fixture& fixture() {
  static Fixture* f = new Fixture();  // never destroyed: the queue thread runs until exit
  return *f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, f.sock.c_str(), sizeof a.sun_path - 1);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) __builtin_trap();
  ::fcntl(fd, F_SETFL, O_NONBLOCK);
  size_t sent = 0;
  bool shut = false;
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::seconds(10);
  static char sink[1 << 16];
  for (;;) {
    if (sent == size && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (shut ? 0 : POLLOUT)), 0};
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now()).count());
    int n = ::poll(&p, 1, std::max(left, 0));
    if (n < 0 && errno == EINTR) continue;  // libFuzzer's alarm
    if (n <= 0) __builtin_trap();  // 10 s: the server neither reads nor closes
    if (p.revents & POLLIN) {
      ssize_t n = ::recv(fd, sink, sizeof sink, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN)) break;  // the server closed
    }
    if (!shut && (p.revents & POLLOUT)) {
      ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
      if (n < 0 && errno != EAGAIN) {
        sent = size;  // the server closed its read side: stop sending
      }
    }
    if ((p.revents & (POLLHUP | POLLERR)) && !(p.revents & POLLIN)) break;
  }
  ::close(fd);
  return 0;
}
