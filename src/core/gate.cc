#include "core/gate.h"

namespace strata {

void Gate::attach(Queue& q) {
  MutexLock l(mu_);
  queues_.push_back(&q);
}

std::vector<Queue*> Gate::queues() {
  MutexLock l(mu_);
  return queues_;
}

void Gate::on_every_queue(const std::function<void(Queue&)>& fn) {
  const std::vector<Queue*> qs = queues();
  std::vector<std::promise<void>> done(qs.size());
  std::vector<std::future<void>> done_f;
  for (auto& d : done) done_f.push_back(d.get_future());
  for (std::size_t i = 0; i < qs.size(); ++i)
    qs[i]->post([&fn, &done, q = qs[i], i] {
      fn(*q);
      done[i].set_value();
    });
  for (auto& f : done_f) f.get();
}

// The capability is the freeze itself, which this function starts (and
// thaw() ends): there is no lock to take here for the analysis to follow.
void Gate::freeze(uint8_t kinds) NO_THREAD_SAFETY_ANALYSIS {
  const std::vector<Queue*> qs = queues();
  // Per queue: a promise set once the closure ran, and one set once the
  // lane has drained (shared with the lane: the last leave() sets it after
  // this call may have returned).
  std::vector<std::promise<void>> posted(qs.size());
  std::vector<std::shared_ptr<std::promise<void>>> drained;
  std::vector<std::future<void>> drained_f, posted_f;
  for (std::size_t i = 0; i < qs.size(); ++i) {
    drained.push_back(std::make_shared<std::promise<void>>());
    drained_f.push_back(drained[i]->get_future());
    posted_f.push_back(posted[i].get_future());
  }
  for (std::size_t i = 0; i < qs.size(); ++i) {
    qs[i]->post([this, &drained, &posted, kinds, q = qs[i], i] {
      Lane& l = lanes_[q->id()];
      l.frozen = kinds;
      if (l.idle(kinds)) {
        drained[i]->set_value();
      } else {
        l.waiting = kinds;
        l.drained = drained[i];
      }
      posted[i].set_value();
    });
  }
  for (auto& f : posted_f) f.get();
  for (auto& f : drained_f) f.get();
}

void Gate::thaw() NO_THREAD_SAFETY_ANALYSIS {
  on_every_queue([this](Queue& q) {
    Lane& l = lanes_[q.id()];
    l.frozen = 0;
    l.waiting = 0;
    auto parked = std::move(l.parked);
    l.parked.clear();
    for (auto h : parked) h.resume();
  });
}

}  // namespace strata
