// Gate: a per-queue freeze/park/drain gate in front of a target's requests.
//
// Requests pass the gate on their queue's thread: enter() when they start,
// leave() when they are done. A control-thread operation (a snapshot, a
// merge's layer swap, a dirty map's point-in-time copy) calls freeze(): every
// queue stops letting the frozen kinds of request in (new ones park), and
// freeze() returns once the requests of those kinds in flight on every queue
// are done. thaw() lets them go on: the parked requests resume, in the order
// they arrived.
//
// Two kinds of request: writes (anything that changes data) and reads. A
// freeze says which kinds it holds: a snapshot holds writes only (reads go on,
// so a steady read load cannot hold it off), a merge's layer swap holds both.
//
// Threads. Each queue's lane (what is frozen, requests in flight, parked
// requests) is touched only on that queue's thread: enter() and leave() take
// no lock, allocate nothing (but to park) and make no virtual call. freeze()
// and thaw() post to every attached queue and wait; call them from a thread
// that is not a queue's (the control thread), never concurrently with each
// other. The gate is a capability: freeze() acquires it and thaw() releases
// it, so code that must run with requests held says REQUIRES(gate_) and
// clang's -Wthread-safety checks every path thaws.
#pragma once

#include <coroutine>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <vector>

#include "core/queue.h"
#include "core/thread_annotations.h"

namespace strata {

class CAPABILITY("gate") Gate {
 public:
  enum Kind : uint8_t { kWrite = 0, kRead = 1 };
  // What a freeze holds: a set of kinds.
  static constexpr uint8_t kWrites = 1 << kWrite;
  static constexpr uint8_t kReads = 1 << kRead;
  static constexpr uint8_t kAll = kWrites | kReads;

  Gate() = default;
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;

  // Any thread: the queue's requests pass this gate from now on, and
  // freeze(), thaw() and on_every_queue() reach it.
  void attach(Queue& q) EXCLUDES(mu_);

  // Control thread: holds new requests of the `kinds` on every queue, and
  // returns once those in flight are done.
  void freeze(uint8_t kinds = kWrites) ACQUIRE() EXCLUDES(mu_);
  // Control thread: ends the freeze; the parked requests resume.
  void thaw() RELEASE() EXCLUDES(mu_);

  // Not on a queue thread: runs fn on each attached queue's thread, one after
  // the other, and returns when all have run.
  void on_every_queue(const std::function<void(Queue&)>& fn) EXCLUDES(mu_);

  // ---- on the queue's thread

 private:
  struct alignas(64) Lane {
    uint8_t frozen = 0;   // kinds held
    uint8_t waiting = 0;  // kinds a freeze waits to drain
    uint64_t in_flight[2] = {0, 0};
    std::shared_ptr<std::promise<void>> drained;  // set by a freeze waiting for `waiting`
    std::vector<std::coroutine_handle<>> parked;
    bool idle(uint8_t kinds) const {
      return (!(kinds & kWrites) || in_flight[kWrite] == 0) && (!(kinds & kReads) || in_flight[kRead] == 0);
    }
  };

 public:
  // `co_await gate.enter(q, kind)`: passes at once (no suspension) unless
  // the kind is frozen; then parks until thaw(). Pair with leave().
  class [[nodiscard]] Entry {
   public:
    bool await_ready() const noexcept { return !(lane_.frozen & (1 << kind_)); }
    void await_suspend(std::coroutine_handle<> h) { lane_.parked.push_back(h); }
    // After a park, thaw() has cleared the freeze before resuming.
    void await_resume() const noexcept { ++lane_.in_flight[kind_]; }

   private:
    friend class Gate;
    Entry(Lane& lane, Kind kind) : lane_(lane), kind_(kind) {}
    Lane& lane_;
    Kind kind_;
  };
  Entry enter(Queue& q, Kind kind = kWrite) { return Entry(lanes_[q.id()], kind); }

  // The request that entered with `kind` is done.
  void leave(Queue& q, Kind kind = kWrite) {
    Lane& l = lanes_[q.id()];
    if (--l.in_flight[kind] == 0 && l.drained && l.idle(l.waiting)) std::exchange(l.drained, nullptr)->set_value();
  }

  // Whether requests of `kind` are held on this queue now.
  bool frozen(Queue& q, Kind kind) const { return lanes_[q.id()].frozen & (1 << kind); }

 private:
  std::vector<Queue*> queues() EXCLUDES(mu_);

  std::unique_ptr<Lane[]> lanes_{new Lane[kMaxQueues]};
  Mutex mu_;
  std::vector<Queue*> queues_ GUARDED_BY(mu_);
};

}  // namespace strata
