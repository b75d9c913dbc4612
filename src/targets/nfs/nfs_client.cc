// Design notes
//
// libnfs makes each connection: rpc_connect_port_async() connects (from a
// reserved port when it can) and pings the program with a NULL call; we poll
// its socket with one-shot io_uring polls and call rpc_service() until
// on_connect. From then on the socket is ours and libnfs is never serviced
// again: calls are encoded by nfs_wire into OutRecords (a WRITE's data stays
// in the caller's buffer), queued in order, and written by one io_uring
// sendmsg per ring batch (flush_later, Ring::defer), so a burst of requests
// costs no syscall of its own; replies are read by io_uring recv into a
// per-connection buffer, cut into records and matched to calls by xid.
//
// A record's memory is in the socket's hands once a sendmsg holding it is
// submitted. So a WRITE is completed (and its caller may free its data) only
// once the sendmsg holding its record has completed and a reply came (a
// reply can come first: reply()), or after its connection was reset and shut
// down (a sendmsg still armed then only fails: tcp_sendmsg checks the
// socket's state under the socket lock before each copy), or if none of
// its record was submitted yet (the record is then skipped). The socket is
// closed only when no SQE can name its fd any more (~Conn), so an SQE
// prepared before a teardown never lands on a socket that reuses the number.
//
// Replies never resume a coroutine directly: they put the call on ready_,
// and the calls are resumed after the buffer is parsed, so a resumed request
// can send new calls, or the connection can be torn down, with no parser on
// the stack.
//
// A broken connection is torn down (reset and shut down; closed with its last
// completion) and its calls go back to the front of the waiting list; a new
// connection sends them again. A ticker (100 ms, only while calls are
// outstanding or a connection is being made) expires calls past their
// deadline, reconnects with backoff (50 ms doubling to 1 s), and drops a
// connection that has not answered for `stall`.
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

// One call's record on its way to the socket: the encoded header, then (a
// WRITE) the caller's data and its padding. Records of a connection form a
// FIFO; a batch of them goes out in one io_uring sendmsg.
struct OutRecord {
  std::byte hdr[nfswire::kMaxHeader];
  uint32_t hdr_len = 0;
  const std::byte* data = nullptr;
  uint32_t data_len = 0;
  NfsClient::Call* call = nullptr;  // nullptr: withdrawn, or its call was answered
  bool started = false;             // some of it is (or was) in a submitted sendmsg
  bool replied = false;             // `call` (a WRITE) was answered before this record's
                                    // sendmsg completed: it completes when it does
  OutRecord* next = nullptr;
  size_t size() const { return hdr_len + size_t{data_len} + nfswire::pad_of(data_len); }
};

enum class CompletionKind { kPoll, kRecv, kSend };

struct ConnCompletion : Completion {
  struct NfsClient::Conn* conn = nullptr;
  CompletionKind kind = CompletionKind::kPoll;
  bool out = false;  // the POLLOUT poll of the connecting phase
};

constexpr size_t kRxBytes = (2u << 20) + 16384;  // two 1 MiB READ replies
constexpr size_t kMaxIov = 1020;                 // under IOV_MAX (1024)
constexpr uint32_t kMaxSlots = 1u << 16;         // calls in flight per connection

struct NfsClient::Conn {
  NfsClient* owner = nullptr;
  rpc_context* rpc = nullptr;  // libnfs: the connection and its NULL ping only
  int fd = -1;                 // once up
  ConnCompletion in, out, snd;
  bool in_armed = false, out_armed = false, snd_armed = false;
  bool dead = false;
  bool parked = false;  // in parked<Conn>(): see ~NfsClient
  // Replies, read by io_uring straight into this buffer and cut into RPC
  // records here.
  std::unique_ptr<char[]> rx;
  size_t rx_cap = 0, rx_head = 0, rx_tail = 0;
  // Records waiting to go out or going out; the first `front_done` bytes
  // of the head are on the socket.
  OutRecord *oq_head = nullptr, *oq_tail = nullptr;
  size_t front_done = 0;
  std::vector<OutRecord*> spare;  // records to reuse
  std::vector<iovec> iov;
  msghdr msg{};
  // xid -> call: the low 16 bits index `slots`, the high 16 count that
  // slot's uses, so a late reply to a call given up does not match the next
  // call in its slot.
  std::vector<Call*> slots;
  std::vector<uint16_t> slot_uses;
  std::vector<uint32_t> free_slots;

  bool armed() const { return in_armed || out_armed || snd_armed; }
  OutRecord* new_record() {
    if (spare.empty()) return new OutRecord;
    OutRecord* r = spare.back();
    spare.pop_back();
    return r;
  }
  // The socket is closed only here, once no SQE can name its fd: an SQE
  // prepared but not yet submitted would otherwise land on whatever socket
  // reuses the number.
  ~Conn() {
    if (rpc) rpc_destroy_context(rpc);  // closes the socket; callbacks see `dead`
    for (OutRecord* r : spare) delete r;
    while (OutRecord* r = oq_head) {
      oq_head = r->next;
      delete r;
    }
  }
};

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

void NfsClient::submit(Call* c) {
  c->failed = false;
  c->out = nullptr;
  if (up_ && n_waiting_ == 0 && send(c)) {
    // queued on the connection
  } else {
    waiting_.push_back(c);
    ++n_waiting_;
    if (!conn_ && NfsClock::now() >= next_connect_) connect();
  }
  publish();
  ensure_ticker();
}

bool NfsClient::send(Call* c) {
  Conn* conn = conn_;
  uint32_t slot;
  if (!conn->free_slots.empty()) {
    slot = conn->free_slots.back();
    conn->free_slots.pop_back();
  } else if (conn->slots.size() < kMaxSlots) {
    slot = static_cast<uint32_t>(conn->slots.size());
    conn->slots.push_back(nullptr);
    conn->slot_uses.push_back(0);
  } else {
    return false;  // 65536 calls in flight: this one waits
  }
  c->xid = (uint32_t{++conn->slot_uses[slot]} << 16) | slot;
  conn->slots[slot] = c;

  OutRecord* r = conn->new_record();
  // COMMIT: offset 0, count 0 = the whole file.
  const uint64_t offset = c->kind == Kind::kCommit ? 0 : c->offset;
  const uint32_t count = c->kind == Kind::kCommit ? 0 : c->count;
  r->hdr_len = static_cast<uint32_t>(nfswire::encode_call(r->hdr, c->xid, ep_.version,
                                                          {static_cast<uint32_t>(ep_.uid), static_cast<uint32_t>(ep_.gid)},
                                                          ep_.fh, c->kind, offset, count, c->stable));
  r->data = c->kind == Kind::kWrite ? c->wdata : nullptr;
  r->data_len = c->kind == Kind::kWrite ? c->count : 0;
  r->call = c;
  r->started = false;
  r->replied = false;
  r->next = nullptr;
  if (conn->oq_tail) conn->oq_tail->next = r; else conn->oq_head = r;
  conn->oq_tail = r;
  c->out = r;

  if (n_inflight_ == 0) last_rx_ = NfsClock::now();  // the stall clock starts now
  inflight_.push_back(c);
  ++n_inflight_;
  if (c->sent_once) stats_.resent.fetch_add(1, std::memory_order_relaxed);
  c->sent_once = true;
  if (c->kind == Kind::kRead) stats_.read_calls.fetch_add(1, std::memory_order_relaxed);
  if (c->kind == Kind::kWrite) stats_.write_calls.fetch_add(1, std::memory_order_relaxed);
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

// Takes an in-flight call off the current connection: its slot is freed (a
// late reply is ignored) and its record, if none of it went out yet, is
// skipped. The caller must not do this to a call whose record has started
// going out (tear the connection down instead).
void NfsClient::withdraw(Call* c) {
  inflight_.remove(c);
  --n_inflight_;
  if (Conn* conn = conn_) {
    const uint32_t slot = c->xid & 0xffff;
    if (slot < conn->slots.size() && conn->slots[slot] == c) {
      conn->slots[slot] = nullptr;
      conn->free_slots.push_back(slot);
    }
  }
  if (c->out) c->out->call = nullptr;
  c->out = nullptr;
}

void NfsClient::reply(Call* c, std::span<const std::byte> body) {
  nfswire::Reply r;
  std::string why;
  if (!nfswire::decode_reply(body, ep_.version, c->kind, &r, &why)) {
    broken_ = true;
    broken_why_ = fmt::format("{} reply of {} bytes: {}", kind_name(c->kind), body.size(), why);
    return;
  }
  // The server can answer a call whose record went out in a sendmsg that
  // has not completed yet (later records of the same sendmsg still wait for
  // room in the socket). It has all of this record, but the kernel may still
  // hold the iovec: a WRITE (whose record points at the caller's data)
  // completes only when that sendmsg does (on_send) or the socket is shut
  // down (teardown). A READ's or COMMIT's record holds no caller memory.
  OutRecord* rec = c->out;
  withdraw(c);
  if (r.rpc_errno != 0) {
    c->failed = true;
    c->error = Error{r.rpc_errno, fmt::format("NFS {} at {} on {}:{}: {}", kind_name(c->kind), c->offset,
                                              ep_.server, ep_.port, r.rpc_why)};
  } else {
    int st = r.status;
    if (ep_.version == 4 && (st == NFS4ERR_GRACE || st == NFS4ERR_DELAY)) st = NFS3ERR_JUKEBOX;
    if (st == NFS3ERR_JUKEBOX) {
      // The server asks to try again later: the next tick sends it again (the
      // caller's data stays alive meanwhile, so an unfinished sendmsg is fine).
      retry_.push_back(c);
      ++n_retry_;
      return;
    }
    decode_into(c, st, r);
  }
  if (rec && c->kind == Kind::kWrite) {
    rec->call = c;
    rec->replied = true;
    return;
  }
  ready_.push_back(c);
}

void NfsClient::decode_into(Call* c, int st, const nfswire::Reply& r) {
  if (st != NFS3_OK) {
    c->failed = true;
    c->error = Error{nfs3_errno(st), fmt::format("NFS {} at {}: {} ({})", kind_name(c->kind), c->offset,
                                                 ep_.version == 4 ? "NFS4ERR" : nfsstat_name(st), st)};
  } else if (c->kind == Kind::kRead) {
    const uint32_t n = std::min(r.count, c->count);
    std::memcpy(c->rdata, r.data, n);
    c->done_count = n;
    c->eof = r.eof;
  } else {
    c->done_count = r.count;
    c->committed = r.committed;
    c->verf = r.verf;
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
