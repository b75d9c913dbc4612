#include "exports/nbd/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <thread>

#include <fmt/core.h>

#include "core/buffer.h"
#include "core/log.h"
#include "core/socket.h"
#include "exports/nbd/connection.h"

namespace strata::nbd {

namespace {
// Connections wait here, in the kernel, while every handshake slot is taken
// by a handshake too young to evict (capped by net.core.somaxconn).
constexpr int kListenBacklog = 4096;
// A handshake is never evicted before this age: every client has this long
// to send its first bytes, however fast others connect.
constexpr std::chrono::milliseconds kMinHandshakeAge{50};
}  // namespace

Server::Server(std::vector<Queue*> queues, const DeviceRegistry& devices, ServerOptions opts)
    : queues_(std::move(queues)),
      devices_(devices),
      opts_(opts),
      budget_(opts.max_memory ? opts.max_memory : MemoryBudget::default_total(), opts.max_connections) {
  CHECK(!queues_.empty());
  // Spare request and reply buffers count in the budget too.
  Buffer::set_spare_limit(budget_.spare());
}

Server::~Server() {
  for (auto& l : listeners_) {
    if (l->fd >= 0) ::close(l->fd);
    if (!l->unlink_path.empty()) ::unlink(l->unlink_path.c_str());
  }
}

std::size_t Server::connections_to(const Target* t) const {
  MutexLock l(mu_);
  return static_cast<std::size_t>(std::count_if(conns_.begin(), conns_.end(), [&](Connection* c) { return c->serving() == t; }));
}

strata::Export::Users Server::users_of(const Target* t) const {
  std::size_t n = connections_to(t);
  return {n, true, fmt::format("has {} NBD client(s) connected", n)};
}

void Server::stop_connections_to(const Target* t) {
  MutexLock l(mu_);
  for (Connection* c : conns_)
    if (c->serving() == t) c->stop_reading();
}

uint64_t Server::oldest_connection_id() const {
  // Read before the list: a connection registered after it has a higher id.
  uint64_t oldest = next_id_.load();
  MutexLock l(mu_);
  for (Connection* c : conns_) oldest = std::min(oldest, c->id());
  return oldest;
}

std::shared_ptr<const Device> Server::find_export(std::string_view name) const { return devices_.find(name); }

std::vector<std::shared_ptr<const Device>> Server::exports() const { return devices_.list(); }

Result<> Server::listen_unix(const std::string& path) {
  // The process umask decides who may connect (as for nbdkit and qemu-nbd).
  mode_t um = ::umask(0);
  ::umask(um);
  int fd = TRY(strata::listen_unix(path, kListenBacklog, 0777 & ~um));
  auto l = std::make_unique<Listener>();
  l->fd = fd;
  l->unlink_path = path;
  listeners_.push_back(std::move(l));
  uris_.push_back(fmt::format("nbd+unix:///?socket={}", path));
  return {};
}

Result<> Server::listen_tcp(const std::string& host, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int gai = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0) return fail(EINVAL, fmt::format("tcp {}:{}: {}", host, port, gai_strerror(gai)));
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
  Error last{EADDRNOTAVAIL, fmt::format("tcp {}:{}: no address", host, port)};
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || ::listen(fd, kListenBacklog) < 0) {
      last = posix_error(fmt::format("tcp {}:{}", host, port), errno).error();
      ::close(fd);
      continue;
    }
    char hbuf[NI_MAXHOST], sbuf[NI_MAXSERV];
    ::getnameinfo(ai->ai_addr, ai->ai_addrlen, hbuf, sizeof hbuf, sbuf, sizeof sbuf, NI_NUMERICHOST | NI_NUMERICSERV);
    auto l = std::make_unique<Listener>();
    l->fd = fd;
    listeners_.push_back(std::move(l));
    std::string h = ai->ai_family == AF_INET6 ? fmt::format("[{}]", hbuf) : std::string(hbuf);
    uris_.push_back(fmt::format("nbd://{}:{}", h, sbuf));
    return {};
  }
  return fail(std::move(last));
}

Result<> Server::listen_fd(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return posix_error("passed socket", errno);
  // Accepts go through io_uring, which waits for a connection itself.
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  auto l = std::make_unique<Listener>();
  l->fd = fd;  // never unlinked: the socket file belongs to the service manager
  listeners_.push_back(std::move(l));
  if (ss.ss_family == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(&ss);
    std::size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    std::string path(un->sun_path, strnlen(un->sun_path, n));
    uris_.push_back(fmt::format("nbd+unix:///?socket={}", path));
  } else {
    char h[NI_MAXHOST], s[NI_MAXSERV];
    if (::getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, h, sizeof h, s, sizeof s,
                      NI_NUMERICHOST | NI_NUMERICSERV) != 0)
      return {};
    uris_.push_back(ss.ss_family == AF_INET6 ? fmt::format("nbd://[{}]:{}", h, s) : fmt::format("nbd://{}:{}", h, s));
  }
  return {};
}

namespace {
struct AcceptAwaiter {
  Ring& ring;
  int fd;
  Completion& c;
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) {
    c.handle = h;
    io_uring_sqe* sqe = ring.get_sqe();
    io_uring_prep_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &c);
  }
  int await_resume() const noexcept { return c.res; }
};

std::string peer_name(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return "?";
  if (ss.ss_family == AF_UNIX) return "unix";
  char h[NI_MAXHOST], s[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, h, sizeof h, s, sizeof s,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "?";
  return fmt::format("{}:{}", h, s);
}
}  // namespace

void Server::start() {
  for (auto& l : listeners_) {
    accept_loops_.fetch_add(1);
    Listener* lp = l.get();
    queues_[0]->post([this, lp] { spawn(accept_loop(lp)); });
  }
}

Task<void> Server::accept_loop(Listener* l) {
  Ring& ring = queues_[0]->ring();
  Completion c;
  l->pending = &c;
  while (!stopping_.load()) {
    // Every handshake slot taken by a handshake too young to evict: leave new
    // connections in the listen backlog until one is old enough.
    if (auto wait = make_handshake_room(); wait.count() > 0) {
      co_await ring.sleep(wait);
      continue;
    }
    int fd = co_await AcceptAwaiter{ring, l->fd, c};
    if (fd < 0) {
      if (fd == -ECANCELED || stopping_.load()) break;
      if (fd == -EINTR || fd == -EAGAIN || fd == -ECONNABORTED) continue;
      LOG_WARN("accept: {}", std::strerror(-fd));
      // EMFILE and friends: back off rather than spin.
      co_await ring.sleep(std::chrono::milliseconds(100));
      continue;
    }
    bool full;
    {
      MutexLock lk(mu_);
      full = transmitting_ >= opts_.max_connections;
    }
    if (full) {
      refused_.fetch_add(1);
      LOG_WARN("refusing a connection: {} clients already (--max-connections)", opts_.max_connections);
      ::close(fd);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on unix sockets
    // Room for a few 1 MiB replies, so large reads do not stall on the
    // default (~200 KiB) buffer. FORCE works as root, beyond wmem_max.
    int sndbuf = 4 << 20;
    if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
      ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    total_.fetch_add(1);
    active_.fetch_add(1);
    uint64_t id = next_id_.fetch_add(1);
    Queue* q = queues_[next_queue_.fetch_add(1) % queues_.size()];
    auto* c = new Connection(*this, *q, fd, id, peer_name(fd));
    take_handshake_slot(c);
    q->post([c] { c->start(); });
  }
  l->pending = nullptr;
  accept_loops_.fetch_sub(1);
}

std::chrono::nanoseconds Server::make_handshake_room() {
  MutexLock l(mu_);
  if (handshakes_.size() < std::max<std::size_t>(opts_.max_handshakes, 1)) return {};
  // The oldest that has not sent a byte (a client that connects and waits),
  // else the oldest; never one younger than kMinHandshakeAge. A good client
  // sends at once and finishes in a few round trips.
  const auto now = std::chrono::steady_clock::now();
  auto old = [&](Connection* h) { return now - h->accepted() >= kMinHandshakeAge; };
  auto victim = std::find_if(handshakes_.begin(), handshakes_.end(),
                             [&](Connection* h) { return !h->heard() && old(h); });
  if (victim == handshakes_.end()) victim = handshakes_.begin();
  if (!old(*victim)) return handshakes_.front()->accepted() + kMinHandshakeAge - now;
  LOG_DEBUG("conn {}: handshake evicted ({} handshakes at once: --max-handshakes)", (*victim)->id(),
            handshakes_.size());
  (*victim)->evict();
  handshakes_.erase(victim);
  evicted_.fetch_add(1);
  return {};
}

void Server::take_handshake_slot(Connection* c) {
  MutexLock l(mu_);
  handshakes_.push_back(c);
}

bool Server::handshake_done(Connection* c) {
  MutexLock l(mu_);
  auto it = std::find(handshakes_.begin(), handshakes_.end(), c);
  if (it == handshakes_.end()) return false;  // evicted meanwhile
  handshakes_.erase(it);
  if (transmitting_ >= opts_.max_connections) {
    refused_.fetch_add(1);
    return false;
  }
  ++transmitting_;
  c->set_transmitting();
  return true;
}

void Server::connection_opened(Connection* c) {
  MutexLock l(mu_);
  conns_.push_back(c);
}

void Server::connection_closed(Connection* c) {
  {
    MutexLock l(mu_);
    conns_.erase(std::remove(conns_.begin(), conns_.end(), c), conns_.end());
    std::erase(handshakes_, c);
    if (c->transmitting()) --transmitting_;
  }
  active_.fetch_sub(1);
}

void Server::shutdown() {
  stopping_.store(true);
  queues_[0]->post([this] {
    for (auto& l : listeners_) {
      if (!l->pending) continue;
      io_uring_sqe* sqe = queues_[0]->ring().get_sqe();
      io_uring_prep_cancel(sqe, l->pending, 0);
      io_uring_sqe_set_data(sqe, nullptr);
    }
  });
  while (accept_loops_.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  // Connections handed to a queue but not started yet register soon; keep
  // asking until every one has gone.
  while (active_.load() > 0) {
    {
      MutexLock l(mu_);
      for (Connection* c : conns_) c->stop_reading();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Server::Stats Server::stats() const {
  return {active_.load(), total_.load(), refused_.load(), evicted_.load(), handshake_timeouts_.load()};
}

}  // namespace strata::nbd
