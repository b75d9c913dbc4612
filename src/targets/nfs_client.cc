// Design notes
//
// libnfs's raw RPC layer is used as a codec with a socket: rpc_nfs3_*_async
// encodes a call into the context's out-queue, rpc_service() writes queued
// calls and reads and decodes replies, calling our callback for each. We poll
// the socket with one-shot io_uring polls (POLLIN while connected, POLLOUT
// while the out-queue is not empty or the connection is being made), re-armed
// after each rpc_service(); a one-shot poll reports readiness at once if data
// is already there, so nothing is missed if libnfs reads only part of it.
//
// Callbacks never resume a coroutine directly: they record the reply and put
// the call on ready_, and the calls are resumed after rpc_service() returns,
// so a resumed request can send new calls, or the connection can be torn
// down, without libnfs on the stack.
//
// Calls are sent as soon as they are made; the encoded bytes are written to
// the socket once per ring batch (flush_later, Ring::defer), so a burst of
// requests costs one send.
//
// libnfs never reconnects on its own here: a broken connection is torn down
// (its context destroyed) and its calls go back to the front of the waiting
// list; a new connection sends them again. A ticker (100 ms, only while calls
// are outstanding or a connection is being made) expires calls past their
// deadline, reconnects with backoff (50 ms doubling to 1 s), and drops a
// connection that has not answered for `stall`.
#include "targets/nfs_client.h"

#include <arpa/inet.h>
#include <poll.h>

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

// Exported by libnfs 4.0 but missing from its public headers.
extern "C" void rpc_set_autoreconnect(struct rpc_context* rpc, int num_retries);
// Decodes one RPC record (buf starts with its 4-byte record marker) and calls
// the reply's callback; the caller keeps buf.
extern "C" int rpc_process_pdu(struct rpc_context* rpc, char* buf, int size);

namespace strata {

using namespace std::chrono_literals;

namespace {

constexpr auto kTick = 100ms;
constexpr auto kMaxBackoff = std::chrono::milliseconds(1000);
constexpr auto kMinBackoff = std::chrono::milliseconds(50);

const char* kind_name(NfsClient::Kind k) {
  switch (k) {
    case NfsClient::Kind::kRead:
      return "READ";
    case NfsClient::Kind::kWrite:
      return "WRITE";
    case NfsClient::Kind::kCommit:
      return "COMMIT";
  }
  return "?";
}

const char* nfsstat_name(int s) {
  switch (s) {
    case NFS3ERR_PERM: return "NFS3ERR_PERM";
    case NFS3ERR_NOENT: return "NFS3ERR_NOENT";
    case NFS3ERR_IO: return "NFS3ERR_IO";
    case NFS3ERR_NXIO: return "NFS3ERR_NXIO";
    case NFS3ERR_ACCES: return "NFS3ERR_ACCES";
    case NFS3ERR_FBIG: return "NFS3ERR_FBIG";
    case NFS3ERR_NOSPC: return "NFS3ERR_NOSPC";
    case NFS3ERR_ROFS: return "NFS3ERR_ROFS";
    case NFS3ERR_DQUOT: return "NFS3ERR_DQUOT";
    case NFS3ERR_STALE: return "NFS3ERR_STALE";
    case NFS3ERR_BADHANDLE: return "NFS3ERR_BADHANDLE";
    case NFS3ERR_SERVERFAULT: return "NFS3ERR_SERVERFAULT";
    case NFS3ERR_JUKEBOX: return "NFS3ERR_JUKEBOX";
    case NFS3ERR_INVAL: return "NFS3ERR_INVAL";
    default: return "NFS3ERR_?";
  }
}

uint64_t verf_of(const char* v) {
  uint64_t x;
  std::memcpy(&x, v, sizeof x);
  return x;
}

}  // namespace

int nfs3_errno(int s) {
  switch (s) {
    case NFS3ERR_PERM: return EPERM;
    case NFS3ERR_NOENT: return ENOENT;
    case NFS3ERR_NXIO: return ENXIO;
    case NFS3ERR_ACCES: return EACCES;
    case NFS3ERR_FBIG: return EFBIG;
    case NFS3ERR_NOSPC: return ENOSPC;
    case NFS3ERR_ROFS: return EROFS;
    case NFS3ERR_DQUOT: return EDQUOT;
    case NFS3ERR_STALE: return ESTALE;
    case NFS3ERR_INVAL: return EINVAL;
    default: return EIO;
  }
}

// One attempt of a call, handed to libnfs as private data. Detached (call ==
// nullptr) when the call was given up or moved to another connection; the
// callback then only frees it.
struct RpcCall {
  NfsClient* client;
  NfsClient::Call* call;
};

struct PollCompletion : Completion {
  struct NfsClient::Conn* conn = nullptr;
  bool out = false;
  bool is_recv = false;  // `in` armed as a recv into Conn::rx (connected)
};

constexpr size_t kRxBytes = (2u << 20) + 16384;  // two 1 MiB READ replies

struct NfsClient::Conn {
  NfsClient* owner = nullptr;
  rpc_context* rpc = nullptr;
  PollCompletion in, out;
  bool in_armed = false, out_armed = false;
  bool dead = false;
  // Replies, read by io_uring straight into this buffer once connected and
  // cut into RPC records here (libnfs 4.0 would ioctl + recv twice + malloc
  // per reply).
  std::unique_ptr<char[]> rx;
  size_t rx_cap = 0, rx_head = 0, rx_tail = 0;
  bool parked = false;  // in parked_conns(): see ~NfsClient
};

namespace {
// Connections whose client went away while a poll or a recv into rx was
// still armed on a ring that may never report it (at exit the rings are
// closed before the targets). They stay reachable here for the life of the
// process, so the kernel never writes into freed memory; if the ring does
// report the poll, on_poll unparks and frees the connection.
std::mutex& parked_mu() {
  static std::mutex mu;
  return mu;
}
std::vector<NfsClient::Conn*>& parked_conns() {
  static auto* v = new std::vector<NfsClient::Conn*>();
  return *v;
}
void park(NfsClient::Conn* c) {
  std::lock_guard lk(parked_mu());
  c->parked = true;
  parked_conns().push_back(c);
}
void delete_conn(NfsClient::Conn* c) {
  if (c->parked) {
    std::lock_guard lk(parked_mu());
    auto& v = parked_conns();
    v.erase(std::remove(v.begin(), v.end(), c), v.end());
  }
  delete c;
}
}  // namespace

void NfsClient::List::push_back(Call* c) {
  c->next = nullptr;
  c->prev = tail;
  if (tail) tail->next = c; else head = c;
  tail = c;
}
void NfsClient::List::push_front(Call* c) {
  c->prev = nullptr;
  c->next = head;
  if (head) head->prev = c; else tail = c;
  head = c;
}
void NfsClient::List::remove(Call* c) {
  if (c->prev) c->prev->next = c->next; else head = c->next;
  if (c->next) c->next->prev = c->prev; else tail = c->prev;
  c->prev = c->next = nullptr;
}

NfsClient::NfsClient(Queue& q, const NfsEndpoint& ep) : q_(q), ep_(ep) {}

NfsClient::~NfsClient() {
  *alive_ = false;
  // Only at shutdown (no request is running): drop the connection without
  // touching the ring, which may already be gone. A poll still armed parks
  // its Conn (the ring's CQE, if it ever comes, frees it).
  if (conn_) {
    Conn* conn = conn_;
    conn_ = nullptr;
    for (Call* c = inflight_.head; c; c = c->next)
      if (c->rpc) c->rpc->call = nullptr;
    conn->dead = true;
    rpc_destroy_context(conn->rpc);
    conn->rpc = nullptr;
    if (!conn->in_armed && !conn->out_armed)
      delete conn;
    else
      park(conn);
  }
}

void NfsClient::submit(Call* c) {
  c->failed = false;
  c->rpc = nullptr;
  if (up_ && !in_service_) {
    if (!send(c)) {
      waiting_.push_back(c);
      ++n_waiting_;
      after_service();
    }
  } else {
    waiting_.push_back(c);
    ++n_waiting_;
    if (!conn_ && NfsClock::now() >= next_connect_) connect();
  }
  ensure_ticker();
}

bool NfsClient::send(Call* c) {
  auto* rc = new RpcCall{this, c};
  if (ep_.version == 4) return finish_send(c, rc, send4(c, rc));
  nfs_fh3 fh{static_cast<u_int>(ep_.fh.size()), reinterpret_cast<char*>(ep_.fh.data())};
  int r = -1;
  switch (c->kind) {
    case Kind::kRead: {
      READ3args a{};
      a.file = fh;
      a.offset = c->offset;
      a.count = c->count;
      r = rpc_nfs3_read_async(conn_->rpc, &NfsClient::on_reply, &a, rc);
      break;
    }
    case Kind::kWrite: {
      WRITE3args a{};
      a.file = fh;
      a.offset = c->offset;
      a.count = c->count;
      a.stable = static_cast<stable_how>(c->stable);
      a.data.data_len = c->count;
      a.data.data_val = const_cast<char*>(reinterpret_cast<const char*>(c->wdata));
      r = rpc_nfs3_write_async(conn_->rpc, &NfsClient::on_reply, &a, rc);
      break;
    }
    case Kind::kCommit: {
      COMMIT3args a{};
      a.file = fh;
      a.offset = 0;
      a.count = 0;  // the whole file
      r = rpc_nfs3_commit_async(conn_->rpc, &NfsClient::on_reply, &a, rc);
      break;
    }
  }
  return finish_send(c, rc, r);
}

int NfsClient::send4(Call* c, RpcCall* rc) {
  // COMPOUND { PUTFH fh; READ | WRITE | COMMIT } with the anonymous stateid
  // (all zeros): NFSv4.0 I/O without OPEN state, so nothing to recover
  // after a reconnect or a server restart but what the verifiers say.
  nfs_argop4 ops[2]{};
  ops[0].argop = OP_PUTFH;
  ops[0].nfs_argop4_u.opputfh.object.nfs_fh4_len = static_cast<u_int>(ep_.fh.size());
  ops[0].nfs_argop4_u.opputfh.object.nfs_fh4_val = reinterpret_cast<char*>(ep_.fh.data());
  switch (c->kind) {
    case Kind::kRead:
      ops[1].argop = OP_READ;
      ops[1].nfs_argop4_u.opread.offset = c->offset;
      ops[1].nfs_argop4_u.opread.count = c->count;
      break;
    case Kind::kWrite:
      ops[1].argop = OP_WRITE;
      ops[1].nfs_argop4_u.opwrite.offset = c->offset;
      ops[1].nfs_argop4_u.opwrite.stable = static_cast<stable_how4>(c->stable);
      ops[1].nfs_argop4_u.opwrite.data.data_len = c->count;
      ops[1].nfs_argop4_u.opwrite.data.data_val = const_cast<char*>(reinterpret_cast<const char*>(c->wdata));
      break;
    case Kind::kCommit:
      ops[1].argop = OP_COMMIT;
      ops[1].nfs_argop4_u.opcommit.offset = 0;
      ops[1].nfs_argop4_u.opcommit.count = 0;
      break;
  }
  COMPOUND4args args{};
  args.argarray.argarray_len = 2;
  args.argarray.argarray_val = ops;
  return rpc_nfs4_compound_async(conn_->rpc, &NfsClient::on_reply, &args, rc);
}

int NfsClient::parse4(Call* c, void* data) {
  auto* res = static_cast<COMPOUND4res*>(data);
  if (res->resarray.resarray_len < 2) return res->status != NFS4_OK ? res->status : NFS4ERR_SERVERFAULT;
  // libnfs 4.0 lays the result array out 4-byte aligned: copy the entry
  // rather than bind a reference to it (UBSan: misaligned nfs_resop4).
  nfs_resop4 op;
  std::memcpy(&op, reinterpret_cast<const char*>(res->resarray.resarray_val) + sizeof(nfs_resop4), sizeof op);
  switch (c->kind) {
    case Kind::kRead: {
      const READ4res& r = op.nfs_resop4_u.opread;
      if (r.status != NFS4_OK) return r.status;
      uint32_t n = std::min<uint32_t>(r.READ4res_u.resok4.data.data_len, c->count);
      std::memcpy(c->rdata, r.READ4res_u.resok4.data.data_val, n);
      c->done_count = n;
      c->eof = r.READ4res_u.resok4.eof;
      return NFS4_OK;
    }
    case Kind::kWrite: {
      const WRITE4res& r = op.nfs_resop4_u.opwrite;
      if (r.status != NFS4_OK) return r.status;
      c->done_count = r.WRITE4res_u.resok4.count;
      c->committed = r.WRITE4res_u.resok4.committed;
      c->verf = verf_of(r.WRITE4res_u.resok4.writeverf);
      return NFS4_OK;
    }
    case Kind::kCommit: {
      const COMMIT4res& r = op.nfs_resop4_u.opcommit;
      if (r.status != NFS4_OK) return r.status;
      c->verf = verf_of(r.COMMIT4res_u.resok4.writeverf);
      return NFS4_OK;
    }
  }
  return NFS4ERR_SERVERFAULT;
}

bool NfsClient::finish_send(Call* c, RpcCall* rc, int r) {
  if (r != 0) {
    delete rc;
    broken_ = true;
    broken_why_ = fmt::format("cannot queue {}: {}", kind_name(c->kind), rpc_get_error(conn_->rpc));
    return false;
  }
  if (n_inflight_ == 0) last_rx_ = NfsClock::now();  // the stall clock starts now
  c->rpc = rc;
  inflight_.push_back(c);
  ++n_inflight_;
  if (c->sent_once) stats_.resent.fetch_add(1, std::memory_order_relaxed);
  c->sent_once = true;
  schedule_flush();
  return true;
}

void NfsClient::send_waiting() {
  while (Call* c = waiting_.head) {
    waiting_.remove(c);
    --n_waiting_;
    if (!send(c)) {
      waiting_.push_front(c);
      ++n_waiting_;
      break;
    }
  }
}

void NfsClient::on_reply(rpc_context* rpc, int status, void* data, void* priv) {
  (void)rpc;
  auto* rc = static_cast<RpcCall*>(priv);
  Call* c = rc->call;
  NfsClient* self = rc->client;
  delete rc;
  if (!c) return;
  c->rpc = nullptr;
  self->inflight_.remove(c);
  --self->n_inflight_;
  if (status != RPC_STATUS_SUCCESS) {
    // The connection failed under this call: send it again on the next one.
    self->waiting_.push_front(c);
    ++self->n_waiting_;
    if (!self->broken_) {
      self->broken_ = true;
      self->broken_why_ = status == RPC_STATUS_ERROR && data ? static_cast<const char*>(data) : "connection lost";
    }
    return;
  }
  self->last_rx_ = NfsClock::now();
  int st = 0;
  if (self->ep_.version == 4) {
    st = parse4(c, data);
    if (st == NFS4ERR_GRACE) st = NFS3ERR_JUKEBOX;  // the server is recovering: try again
  } else switch (c->kind) {
    case Kind::kRead: {
      auto* res = static_cast<READ3res*>(data);
      st = res->status;
      if (st == NFS3_OK) {
        const auto& ok = res->READ3res_u.resok;
        uint32_t n = std::min<uint32_t>(ok.data.data_len, c->count);
        std::memcpy(c->rdata, ok.data.data_val, n);
        c->done_count = n;
        c->eof = ok.eof;
      }
      break;
    }
    case Kind::kWrite: {
      auto* res = static_cast<WRITE3res*>(data);
      st = res->status;
      if (st == NFS3_OK) {
        const auto& ok = res->WRITE3res_u.resok;
        c->done_count = ok.count;
        c->committed = ok.committed;
        c->verf = verf_of(ok.verf);
      }
      break;
    }
    case Kind::kCommit: {
      auto* res = static_cast<COMMIT3res*>(data);
      st = res->status;
      if (st == NFS3_OK) c->verf = verf_of(res->COMMIT3res_u.resok.verf);
      break;
    }
  }
  if (st == NFS3ERR_JUKEBOX) {
    // The server asks to try again later: the ticker sends it again.
    self->waiting_.push_back(c);
    ++self->n_waiting_;
    return;
  }
  if (st != NFS3_OK) {
    c->failed = true;
    c->error = Error{nfs3_errno(st), fmt::format("NFS {} at {}: {} ({})", kind_name(c->kind), c->offset,
                                                 nfsstat_name(st), st)};
  }
  self->ready_.push_back(c);
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
  conn->in.conn = conn->out.conn = conn;
  conn->in.callback = conn->out.callback = &NfsClient::on_poll;
  conn->out.out = true;
  if (rpc_connect_port_async(rpc, ep_.server.c_str(), ep_.port, NFS_PROGRAM, ep_.version == 4 ? 4 : NFS_V3,
                             &NfsClient::on_connect, conn) != 0) {
    last_error_ = fmt::format("connect to {}:{}: {}", ep_.server, ep_.port, rpc_get_error(rpc));
    rpc_destroy_context(rpc);
    delete conn;
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
  (void)rpc;
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
  self->up_ = true;
  self->backoff_ = std::chrono::milliseconds(0);
  if (self->stats_.connects++ > 0)
    LOG_INFO("nfs {}:{}: reconnected; sending {} waiting calls", self->ep_.server, self->ep_.port,
             self->n_waiting_);
  self->last_error_.clear();
  // Send everything that waited for the connection (we are inside
  // rpc_service, which writes them out before it returns or on the next
  // POLLOUT).
  self->send_waiting();
}

void NfsClient::on_poll(Completion* cc) {
  auto* pc = static_cast<PollCompletion*>(cc);
  Conn* conn = pc->conn;
  if (pc->out) conn->out_armed = false; else conn->in_armed = false;
  if (conn->dead) {
    if (!conn->in_armed && !conn->out_armed) delete_conn(conn);
    return;
  }
  if (!pc->out && pc->is_recv) {
    conn->owner->on_recv(conn, cc->res);
    return;
  }
  int revents = cc->res < 0 ? POLLERR : cc->res;
  conn->owner->service(conn, revents);
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
    in_service_ = true;
    int r = rpc_process_pdu(conn->rpc, rx + conn->rx_head, static_cast<int>(4 + len));
    in_service_ = false;
    conn->rx_head += 4 + len;
    if (r != 0 && !broken_) {
      broken_ = true;
      broken_why_ = "garbage RPC reply from the server";
    }
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

void NfsClient::service(Conn* conn, int revents) {
  in_service_ = true;
  int r = rpc_service(conn->rpc, revents);
  in_service_ = false;
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
    arm_polls();
  }
  resume_ready();
}

void NfsClient::arm_polls() {
  Conn* conn = conn_;
  if (!conn || conn->dead) return;
  int fd = rpc_get_fd(conn->rpc);
  if (fd < 0) return;
  Ring& ring = q_.ring();
  const int want = rpc_which_events(conn->rpc);
  if (up_ && !conn->in_armed) {
    if (!conn->rx) {
      conn->rx.reset(new char[kRxBytes]);
      conn->rx_cap = kRxBytes;
    }
    io_uring_sqe* sqe = ring.get_sqe();
    io_uring_prep_recv(sqe, fd, conn->rx.get() + conn->rx_tail, conn->rx_cap - conn->rx_tail, 0);
    io_uring_sqe_set_data(sqe, static_cast<Completion*>(&conn->in));
    conn->in.is_recv = true;
    conn->in_armed = true;
  } else if ((want & POLLIN) && !conn->in_armed) {
    // Connecting: libnfs reads the NULL call's reply itself.
    io_uring_sqe* sqe = ring.get_sqe();
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data(sqe, static_cast<Completion*>(&conn->in));
    conn->in.is_recv = false;
    conn->in_armed = true;
  }
  bool want_out = want & POLLOUT;
  if (want_out && !conn->out_armed) {
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

void NfsClient::flush_out() {
  if (!conn_ || !up_ || in_service_) return;
  if (rpc_which_events(conn_->rpc) & POLLOUT)
    service(conn_, POLLOUT);
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
  // Calls in flight go back in front of the waiting ones, in order.
  while (Call* c = inflight_.tail) {
    inflight_.remove(c);
    if (c->rpc) c->rpc->call = nullptr;
    c->rpc = nullptr;
    waiting_.push_front(c);
  }
  n_waiting_ += n_inflight_;
  n_inflight_ = 0;
  conn->dead = true;
  Ring& ring = q_.ring();
  for (PollCompletion* pc : {&conn->in, &conn->out}) {
    bool armed = pc->out ? conn->out_armed : conn->in_armed;
    if (!armed) continue;
    io_uring_sqe* sqe = ring.get_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<uint64_t>(static_cast<Completion*>(pc)), 0);  // a poll or a recv
    io_uring_sqe_set_data(sqe, nullptr);
  }
  rpc_destroy_context(conn->rpc);
  conn->rpc = nullptr;
  if (!conn->in_armed && !conn->out_armed) delete conn;
  backoff_ = std::clamp(backoff_ * 2, std::chrono::milliseconds(kMinBackoff), kMaxBackoff);
  // The first attempt right away (a restarted server is usually back).
  next_connect_ = was_up ? NfsClock::now() : NfsClock::now() + backoff_;
  ensure_ticker();
}

void NfsClient::resume_ready() {
  publish();
  while (!ready_.empty()) {
    std::vector<Call*> batch;
    batch.swap(ready_);
    for (Call* c : batch) c->handle.resume();
  }
}

void NfsClient::ensure_ticker() {
  if (ticking_) return;
  ticking_ = true;
  spawn(ticker());
}

void NfsClient::expire(NfsClock::time_point now) {
  for (List* l : {&waiting_, &inflight_}) {
    Call* c = l->head;
    while (c) {
      Call* next = c->next;
      if (now >= c->deadline) {
        l->remove(c);
        if (l == &waiting_) --n_waiting_; else --n_inflight_;
        if (c->rpc) c->rpc->call = nullptr;
        c->rpc = nullptr;
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

Task<void> NfsClient::ticker() {
  auto alive = alive_;
  for (;;) {
    co_await q_.ring().sleep(kTick);
    if (!*alive) co_return;
    auto now = NfsClock::now();
    expire(now);
    if (up_ && n_inflight_ > 0 && now - last_rx_ > ep_.stall) {
      teardown(fmt::format("no reply for {} ms", std::chrono::duration_cast<std::chrono::milliseconds>(now - last_rx_).count()));
    }
    if (!conn_ && n_waiting_ > 0 && now >= next_connect_) connect();
    if (up_ && n_waiting_ > 0) {
      send_waiting();
      if (broken_) {
        broken_ = false;
        teardown(broken_why_);
      }
    }
    resume_ready();
    if (n_waiting_ == 0 && n_inflight_ == 0 && (up_ || !conn_)) {
      ticking_ = false;
      co_return;
    }
  }
}

}  // namespace strata
