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
//
// This file holds the calls: the lists they wait on, submission (a call's
// slot and its record on the connection's queue), taking a call back, and
// replies (decoding, retry on JUKEBOX, completion). The connection itself
// (making it, its polls, recv and sendmsg, teardown, the ticker that
// reconnects and expires calls) is in nfs_conn.cc.
#include "targets/nfs/nfs_client.h"

#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

#include "targets/nfs/nfs_client_internal.h"
#include "targets/nfs/nfs_wire.h"

namespace strata {

namespace {

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

void NfsClient::resume_ready() {
  publish();
  while (!ready_.empty()) {
    std::vector<Call*> batch;
    batch.swap(ready_);
    for (Call* c : batch) c->handle.resume();
  }
}

}  // namespace strata
