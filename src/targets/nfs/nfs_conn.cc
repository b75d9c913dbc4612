// NfsClient's connection (see the design notes in nfs_client.cc): making
// it with libnfs (connect, the polls of the connecting phase, on_connect),
// then io_uring recv of replies (cut into records and handed to reply()) and
// sendmsg of the queued records, teardown of a broken connection, the
// ticker that expires calls, reconnects with backoff and drops a stalled
// connection, and the client's construction and shutdown (parking what is
// still armed on a ring). The calls themselves are in nfs_client.cc.
#include "targets/nfs/nfs_client.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include <fmt/core.h>

#include "core/log.h"
#include "core/queue.h"
#include "targets/nfs/nfs_client_internal.h"
#include "targets/nfs/nfs_wire.h"

// Exported by libnfs 4.0 but missing from its public headers.
extern "C" void rpc_set_autoreconnect(struct rpc_context* rpc, int num_retries);

namespace strata {

using namespace std::chrono_literals;

namespace {

// Resets a TCP connection (RST; what is still queued to send is dropped) and
// shuts the socket down; the fd stays open.
void abort_socket(int fd) {
  if (fd < 0) return;
  sockaddr unspec{};
  unspec.sa_family = AF_UNSPEC;
  (void)::connect(fd, &unspec, sizeof unspec);
  ::shutdown(fd, SHUT_RDWR);
}

constexpr auto kTick = 100ms;
constexpr auto kMaxBackoff = std::chrono::milliseconds(1000);
constexpr auto kMinBackoff = std::chrono::milliseconds(50);

}  // namespace

// The ticker's timer: an io_uring timeout whose CQE calls NfsClient::tick.
// Not a coroutine: at exit the rings are closed with the timer still armed,
// and a suspended coroutine frame would never be freed.
struct Tick : Completion {
  NfsClient* owner = nullptr;  // nullptr: the client went while it was armed
  __kernel_timespec ts{};
  bool armed = false;
  bool parked = false;
};

namespace {
const std::byte kZeros[4] = {};

// Connections and timers whose client went away while a completion of
// theirs was still armed on a ring that may never report it (at exit the
// rings are closed before the targets). They stay reachable here for the
// life of the process, so the kernel never writes into freed memory; if the
// ring does report it, the completion unparks and frees its object.
std::mutex& parked_mu() {
  static std::mutex mu;
  return mu;
}
template <typename T>
std::vector<T*>& parked() {
  static auto* v = new std::vector<T*>();
  return *v;
}
template <typename T>
void park(T* x) {
  std::lock_guard lk(parked_mu());
  x->parked = true;
  parked<T>().push_back(x);
}
template <typename T>
void unpark_delete(T* x) {
  if (x->parked) {
    std::lock_guard lk(parked_mu());
    auto& v = parked<T>();
    v.erase(std::remove(v.begin(), v.end(), x), v.end());
  }
  delete x;
}
}  // namespace

NfsClient::NfsClient(Queue& q, const NfsEndpoint& ep) : q_(q), ep_(ep) {}

NfsClient::~NfsClient() {
  *alive_ = false;
  if (tick_) {
    tick_->owner = nullptr;
    if (tick_->armed)
      park(tick_);
    else
      delete tick_;
  }
  // Only at shutdown (no request is running): drop the connection without
  // touching the ring, which may already be gone. A recv, send or poll still
  // armed parks its Conn (the ring's CQE, if it ever comes, frees it).
  if (conn_) {
    Conn* conn = conn_;
    conn_ = nullptr;
    conn->dead = true;
    if (conn->fd >= 0) ::shutdown(conn->fd, SHUT_RDWR);
    if (!conn->armed())
      delete conn;
    else
      park(conn);
  }
}

void NfsClient::connect() {
  rpc_context* rpc = rpc_init_context();
  if (!rpc) {
    last_error_ = "rpc_init_context failed";
    return;
  }
  rpc_set_autoreconnect(rpc, 0);
  rpc_set_uid(rpc, ep_.uid);
  rpc_set_gid(rpc, ep_.gid);
  auto* conn = new Conn;
  conn->owner = this;
  conn->rpc = rpc;
  for (ConnCompletion* cc : {&conn->in, &conn->out, &conn->snd}) {
    cc->conn = conn;
    cc->callback = &NfsClient::on_poll;
  }
  conn->out.out = true;
  conn->snd.kind = CompletionKind::kSend;
  if (rpc_connect_port_async(rpc, ep_.server.c_str(), ep_.port, NFS_PROGRAM, ep_.version == 4 ? 4 : NFS_V3,
                             &NfsClient::on_connect, conn) != 0) {
    last_error_ = fmt::format("connect to {}:{}: {}", ep_.server, ep_.port, rpc_get_error(rpc));
    conn->dead = true;
    delete conn;  // destroys rpc
    stats_.connect_failures.fetch_add(1, std::memory_order_relaxed);
    backoff_ = std::clamp(backoff_ * 2, std::chrono::milliseconds(kMinBackoff), kMaxBackoff);
    next_connect_ = NfsClock::now() + backoff_;
    ensure_ticker();
    return;
  }
  conn_ = conn;
  up_ = false;
  arm_polls();
}

void NfsClient::on_connect(rpc_context* rpc, int status, void* data, void* priv) {
  auto* conn = static_cast<Conn*>(priv);
  if (conn->dead) return;
  NfsClient* self = conn->owner;
  if (status != RPC_STATUS_SUCCESS) {
    self->stats_.connect_failures.fetch_add(1, std::memory_order_relaxed);
    self->broken_ = true;
    self->broken_why_ = fmt::format("connect to {}:{}: {}", self->ep_.server, self->ep_.port,
                                    status == RPC_STATUS_ERROR && data ? static_cast<const char*>(data)
                                                                       : "cancelled");
    return;
  }
  // From here on the socket is ours: libnfs is never serviced again.
  conn->fd = rpc_get_fd(rpc);
  self->up_ = true;
  self->backoff_ = std::chrono::milliseconds(0);
  if (self->stats_.connects++ > 0)
    LOG_INFO("nfs {}:{}: reconnected; sending {} waiting calls", self->ep_.server, self->ep_.port,
             self->n_waiting_);
  self->last_error_.clear();
  self->send_waiting();
}

void NfsClient::on_poll(Completion* cc) {
  auto* pc = static_cast<ConnCompletion*>(cc);
  Conn* conn = pc->conn;
  switch (pc->kind) {
    case CompletionKind::kSend: conn->snd_armed = false; break;
    case CompletionKind::kRecv: conn->in_armed = false; break;
    case CompletionKind::kPoll: (pc->out ? conn->out_armed : conn->in_armed) = false; break;
  }
  if (conn->dead) {
    if (!conn->armed()) unpark_delete(conn);
    return;
  }
  NfsClient* self = conn->owner;
  switch (pc->kind) {
    case CompletionKind::kSend:
      self->on_send(conn, cc->res);
      return;
    case CompletionKind::kRecv:
      self->on_recv(conn, cc->res);
      return;
    case CompletionKind::kPoll:
      if (conn->fd >= 0) {
        // A poll of the connecting phase, after the connection came up.
        self->after_service();
        return;
      }
      self->service(conn, cc->res < 0 ? POLLERR : cc->res);
      return;
  }
}

void NfsClient::on_recv(Conn* conn, int res) {
  if (res <= 0) {
    if (!broken_) {
      broken_ = true;
      broken_why_ = res == 0 ? "the server closed the connection" : fmt::format("recv: {}", std::strerror(-res));
    }
    after_service();
    return;
  }
  last_rx_ = NfsClock::now();
  conn->rx_tail += static_cast<size_t>(res);
  char* rx = conn->rx.get();
  while (conn->rx_tail - conn->rx_head >= 4) {
    uint32_t marker;
    std::memcpy(&marker, rx + conn->rx_head, 4);
    marker = ntohl(marker);
    const size_t len = marker & 0x7fffffffu;
    if (!(marker & 0x80000000u) || len > kRxBytes - 4) {
      broken_ = true;
      broken_why_ = (marker & 0x80000000u) ? fmt::format("RPC record of {} bytes is too large", len)
                                           : "fragmented RPC record (not supported)";
      break;
    }
    if (conn->rx_tail - conn->rx_head < 4 + len) break;
    std::span<const std::byte> body(reinterpret_cast<const std::byte*>(rx + conn->rx_head + 4), len);
    conn->rx_head += 4 + len;
    uint32_t xid;
    if (!nfswire::peek_xid(body, &xid)) {
      broken_ = true;
      broken_why_ = "RPC record without an xid";
      break;
    }
    const uint32_t slot = xid & 0xffff;
    Call* c = slot < conn->slots.size() ? conn->slots[slot] : nullptr;
    if (!c || c->xid != xid) continue;  // a reply to a call given up: dropped
    reply(c, body);
    if (broken_) break;
  }
  if (conn->rx_head == conn->rx_tail) {
    conn->rx_head = conn->rx_tail = 0;
  } else if (conn->rx_cap - conn->rx_tail < (1u << 20) + 8192) {
    // Keep room for a whole 1 MiB reply after the partial one.
    std::memmove(rx, rx + conn->rx_head, conn->rx_tail - conn->rx_head);
    conn->rx_tail -= conn->rx_head;
    conn->rx_head = 0;
  }
  after_service();
}

void NfsClient::on_send(Conn* conn, int res) {
  if (res < 0) {
    if (!broken_) {
      broken_ = true;
      broken_why_ = fmt::format("send: {}", std::strerror(-res));
    }
    after_service();
    return;
  }
  // Retire the records now wholly on the socket.
  auto left = static_cast<size_t>(res);
  size_t asked = 0;
  for (const iovec& v : conn->iov) asked += v.iov_len;
  if (left < asked) stats_.partial_sends.fetch_add(1, std::memory_order_relaxed);
  while (OutRecord* r = conn->oq_head) {
    const size_t rest = r->size() - conn->front_done;
    if (left < rest) {
      conn->front_done += left;
      break;
    }
    left -= rest;
    conn->front_done = 0;
    conn->oq_head = r->next;
    if (!conn->oq_head) conn->oq_tail = nullptr;
    if (r->replied)
      ready_.push_back(r->call);  // answered already: now its data is free
    else if (r->call)
      r->call->out = nullptr;
    r->replied = false;
    conn->spare.push_back(r);
  }
  flush_out();
  after_service();
}

void NfsClient::service(Conn* conn, int revents) {
  int r = rpc_service(conn->rpc, revents);
  if (r < 0 && !broken_) {
    broken_ = true;
    const char* e = rpc_get_error(conn->rpc);
    broken_why_ = e ? e : "socket error";
  }
  after_service();
}

void NfsClient::after_service() {
  if (broken_) {
    broken_ = false;
    teardown(broken_why_);
  } else {
    // Calls that waited for a free slot (65536 in flight) go now.
    if (up_ && n_waiting_ > 0) send_waiting();
    arm_polls();
  }
  resume_ready();
}

void NfsClient::arm_polls() {
  Conn* conn = conn_;
  if (!conn || conn->dead) return;
  Ring& ring = q_.ring();
  if (conn->fd >= 0) {
    // Up: replies come in by recv straight into rx.
    if (!conn->in_armed) {
      if (!conn->rx) {
        conn->rx.reset(new char[kRxBytes]);
        conn->rx_cap = kRxBytes;
      }
      io_uring_sqe* sqe = ring.get_sqe();
      io_uring_prep_recv(sqe, conn->fd, conn->rx.get() + conn->rx_tail, conn->rx_cap - conn->rx_tail, 0);
      io_uring_sqe_set_data(sqe, static_cast<Completion*>(&conn->in));
      conn->in.kind = CompletionKind::kRecv;
      conn->in_armed = true;
    }
    return;
  }
  // Connecting: libnfs moves the bytes; we poll for it.
  int fd = rpc_get_fd(conn->rpc);
  if (fd < 0) return;
  const int want = rpc_which_events(conn->rpc);
  if ((want & POLLIN) && !conn->in_armed) {
    io_uring_sqe* sqe = ring.get_sqe();
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data(sqe, static_cast<Completion*>(&conn->in));
    conn->in.kind = CompletionKind::kPoll;
    conn->in_armed = true;
  }
  if ((want & POLLOUT) && !conn->out_armed) {
    io_uring_sqe* sqe = ring.get_sqe();
    io_uring_prep_poll_add(sqe, fd, POLLOUT);
    io_uring_sqe_set_data(sqe, static_cast<Completion*>(&conn->out));
    conn->out_armed = true;
  }
}

void NfsClient::schedule_flush() {
  if (flush_scheduled_) return;
  flush_scheduled_ = true;
  spawn(flush_later());
}

Task<void> NfsClient::flush_later() {
  auto alive = alive_;
  co_await q_.ring().defer();
  if (!*alive) co_return;
  flush_scheduled_ = false;
  flush_out();
}

// Sends the queued records (as many as one sendmsg takes) unless a send is
// already under way; on_send sends the rest.
void NfsClient::flush_out() {
  Conn* conn = conn_;
  if (!conn || conn->fd < 0 || conn->dead || conn->snd_armed) return;
  conn->iov.clear();
  OutRecord* prev = nullptr;
  OutRecord* r = conn->oq_head;
  while (r && conn->iov.size() + 3 <= kMaxIov) {
    if (!r->call && !r->started) {
      // Withdrawn before any of it went out: skipped.
      OutRecord* next = r->next;
      if (prev) prev->next = next; else conn->oq_head = next;
      if (conn->oq_tail == r) conn->oq_tail = prev;
      conn->spare.push_back(r);
      r = next;
      continue;
    }
    r->started = true;
    // The head may be partly sent already.
    size_t skip = r == conn->oq_head ? conn->front_done : 0;
    auto add = [&](const void* p, size_t n) {
      if (skip >= n) {
        skip -= n;
        return;
      }
      conn->iov.push_back({const_cast<std::byte*>(static_cast<const std::byte*>(p)) + skip, n - skip});
      skip = 0;
    };
    add(r->hdr, r->hdr_len);
    if (r->data_len) {
      add(r->data, r->data_len);
      add(kZeros, nfswire::pad_of(r->data_len));
    }
    prev = r;
    r = r->next;
  }
  if (conn->iov.empty()) return;
  conn->msg = {};
  conn->msg.msg_iov = conn->iov.data();
  conn->msg.msg_iovlen = conn->iov.size();
  io_uring_sqe* sqe = q_.ring().get_sqe();
  io_uring_prep_sendmsg(sqe, conn->fd, &conn->msg, MSG_NOSIGNAL);
  io_uring_sqe_set_data(sqe, static_cast<Completion*>(&conn->snd));
  conn->snd_armed = true;
}

void NfsClient::teardown(std::string_view why) {
  Conn* conn = conn_;
  if (!conn) return;
  conn_ = nullptr;
  bool was_up = up_;
  up_ = false;
  last_error_ = std::string(why);
  if (was_up) {
    stats_.disconnects.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("nfs {}:{}: connection lost ({}); {} calls will be sent again", ep_.server, ep_.port, why,
             n_inflight_ + n_waiting_);
  }
  // No byte goes out on this socket from now on: a sendmsg still armed can
  // only fail, so the data of the calls below may be freed once they finish
  // on another connection. Aborted, not closed politely: connect(AF_UNSPEC)
  // resets the connection (RST) and drops what is still queued in our send
  // buffer, so the calls given up on do not reach a server that resumes
  // reading later (with a FIN it would read them all); then shutdown, so
  // the socket refuses any further send or receive.
  abort_socket(conn->fd);
  for (OutRecord* r = conn->oq_head; r; r = r->next) {
    if (r->replied) ready_.push_back(r->call);  // answered: done
    r->call = nullptr;
    r->replied = false;
  }
  // Calls in flight go back in front of the waiting ones, in order.
  while (Call* c = inflight_.tail) {
    inflight_.remove(c);
    c->out = nullptr;
    waiting_.push_front(c);
  }
  n_waiting_ += n_inflight_;
  n_inflight_ = 0;
  conn->dead = true;
  Ring& ring = q_.ring();
  for (ConnCompletion* cc : {&conn->in, &conn->out, &conn->snd}) {
    bool armed = cc == &conn->snd ? conn->snd_armed : cc->out ? conn->out_armed : conn->in_armed;
    if (!armed) continue;
    io_uring_sqe* sqe = ring.get_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(static_cast<Completion*>(cc)), 0);
    io_uring_sqe_set_data(sqe, nullptr);
  }
  // The socket stays open (shut down) until its last completion: see ~Conn.
  if (!conn->armed()) delete conn;
  backoff_ = std::clamp(backoff_ * 2, std::chrono::milliseconds(kMinBackoff), kMaxBackoff);
  // The first attempt right away (a restarted server is usually back).
  next_connect_ = was_up ? NfsClock::now() : NfsClock::now() + backoff_;
  ensure_ticker();
}

void NfsClient::ensure_ticker() {
  if (ticking_) return;
  ticking_ = true;
  arm_tick();
}

void NfsClient::arm_tick() {
  if (!tick_) {
    tick_ = new Tick;
    tick_->owner = this;
    tick_->callback = [](Completion* c) {
      auto* t = static_cast<Tick*>(c);
      t->armed = false;
      if (t->owner)
        t->owner->tick();
      else
        unpark_delete(t);
    };
  }
  tick_->ts = Ring::to_timespec(kTick);
  io_uring_sqe* sqe = q_.ring().get_sqe();
  io_uring_prep_timeout(sqe, &tick_->ts, 0, 0);
  io_uring_sqe_set_data(sqe, static_cast<Completion*>(tick_));
  tick_->armed = true;
}

void NfsClient::expire(NfsClock::time_point now) {
  // A call past its deadline whose record has started going out cannot be
  // taken back from the stream: the connection goes (its calls return to the
  // waiting list, from where they expire below).
  for (Call* c = inflight_.head; c; c = c->next) {
    if (now >= c->deadline && c->out && c->out->started) {
      teardown("a call timed out while being sent");
      break;
    }
  }
  for (List* l : {&waiting_, &retry_, &inflight_}) {
    Call* c = l->head;
    while (c) {
      Call* next = c->next;
      if (now >= c->deadline) {
        if (l == &waiting_) {
          l->remove(c);
          --n_waiting_;
        } else if (l == &retry_) {
          l->remove(c);
          --n_retry_;
        } else {
          withdraw(c);
        }
        c->failed = true;
        c->error = Error{EIO, fmt::format("NFS {} at {} on {}:{}: no answer before the timeout{}{}",
                                          kind_name(c->kind), c->offset, ep_.server, ep_.port,
                                          last_error_.empty() ? "" : "; last error: ", last_error_)};
        stats_.timeouts.fetch_add(1, std::memory_order_relaxed);
        ready_.push_back(c);
      }
      c = next;
    }
  }
}

void NfsClient::tick() {
  auto now = NfsClock::now();
  expire(now);
  if (up_ && n_inflight_ > 0 && now - last_rx_ > ep_.stall) {
    teardown(fmt::format("no reply for {} ms",
                         std::chrono::duration_cast<std::chrono::milliseconds>(now - last_rx_).count()));
  }
  // Calls the server asked to retry (JUKEBOX) join the waiting ones.
  while (Call* c = retry_.head) {
    retry_.remove(c);
    --n_retry_;
    waiting_.push_back(c);
    ++n_waiting_;
  }
  if (!conn_ && n_waiting_ > 0 && now >= next_connect_) connect();
  if (up_ && n_waiting_ > 0) send_waiting();
  if (broken_) {
    broken_ = false;
    teardown(broken_why_);
  }
  if (n_waiting_ == 0 && n_retry_ == 0 && n_inflight_ == 0 && (up_ || !conn_))
    ticking_ = false;
  else
    arm_tick();
  // Last: a resumed request may send calls (and call ensure_ticker).
  resume_ready();
}

}  // namespace strata
