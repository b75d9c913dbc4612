// The connection's life cycle: the handshake, then transmission, then the
// close, once every request has replied and the send queue is empty. The
// design notes of each phase are at the top of handshake.cc, transmission.cc
// and reply_queue.cc.
#include "exports/nbd/connection.h"

#include <sys/socket.h>

#include "core/log.h"

namespace strata::nbd {

Connection::Connection(Server& server, Queue& q, int fd, uint64_t id, std::string peer)
    : server_(server),
      q_(q),
      id_(id),
      peer_(std::move(peer)),
      accepted_(std::chrono::steady_clock::now()),
      splicer_(fd),
      stream_(q, fd, accepted_ + server_.options().handshake_timeout,
              accepted_ + server_.options().first_bytes_timeout) {}

Connection::~Connection() = default;

void Connection::start() { run(); }

void Connection::stop_reading() { ::shutdown(stream_.fd(), SHUT_RD); }

void Connection::evict() {
  evicted_.store(true, std::memory_order_relaxed);
  ::shutdown(stream_.fd(), SHUT_RDWR);
}

Detached Connection::run() {
  server_.connection_opened(this);
  LOG_DEBUG("conn {}: connected from {}", id_, peer_);
  bool go = co_await handshake();
  if (go && !server_.handshake_done(this)) {
    LOG_INFO("conn {} ({}): no connection slot free (--max-connections) or evicted; closing", id_, peer_);
    go = false;
  }
  if (go) {
    stream_.end_handshake();
    server_.budget().joined();
    member_ = true;
    co_await transmission();
  }
  // Wait for every request to reply and the send queue to drain.
  reader_closing_ = true;
  while (in_flight_ > 0 || sending_) co_await Park{reader_waiting_};
  for (auto& r : out_) drop(r);
  out_.clear();
  CHECK(held_ == 0);
  if (member_) server_.budget().left();
  LOG_DEBUG("conn {}: closed", id_);
  server_.connection_closed(this);
  delete this;
}

}  // namespace strata::nbd
