// DeviceRegistry: the one set of devices a server serves, by name. Control
// changes it (create, reload + resume, remove); the exports read it: an NBD
// client's export name is looked up here at its handshake, a FUSE mount shows
// the devices it holds when mounted, the metrics and status pages list it.
//
// A record is immutable once published: a change publishes a new record
// (sharing the same targets) under the same name, so a reader keeps a
// consistent snapshot with no further lock. Control publishes records of its
// own type, derived from Device (control/devices.h): every record in a
// server's registry is one of those.
//
// Threads: every member from any thread.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/target.h"
#include "core/thread_annotations.h"

namespace strata {

struct Device {
  virtual ~Device() = default;
  std::string name;
  std::string description;          // NBD_INFO_DESCRIPTION ("" = none)
  std::shared_ptr<Target> target;   // its top target (the dirty-map wrapper): what exports serve
  bool read_only = false;           // as configured; exports also refuse writes when !caps().can_write
  std::vector<std::string> uses;    // devices its table refers to (linear, cow base=)
};

class DeviceRegistry {
 public:
  std::vector<std::shared_ptr<const Device>> list() const EXCLUDES(mu_);  // in creation order
  std::shared_ptr<const Device> find(std::string_view name) const EXCLUDES(mu_);
  // Adds, or replaces the record of the same name (keeping its place).
  void put(std::shared_ptr<const Device> d) EXCLUDES(mu_);
  void erase(std::string_view name) EXCLUDES(mu_);

 private:
  mutable Mutex mu_;
  std::vector<std::shared_ptr<const Device>> devices_ GUARDED_BY(mu_);
};

}  // namespace strata
