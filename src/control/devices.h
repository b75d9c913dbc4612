// Devices: control's view of the server's DeviceRegistry (core/device_registry.h),
// changed at runtime (dmsetup's model: create, reload + suspend/resume,
// remove). Each device is
//   DirtyTarget (dirty maps; what exports and jobs see)
//     -> LiveTarget (suspend gate; active and inactive tables)
//       -> TableTarget (the segments)
// so that a reload keeps the dirty maps and NBD connections, which hold the
// DirtyTarget, stay connected through it.
//
// Threads: list()/find() from any thread; the changes (put, erase) from the
// thread that runs control requests that change devices (one at a time, see
// server.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "control/live_target.h"
#include "core/device_registry.h"
#include "core/queue.h"
#include "core/thread_annotations.h"
#include "table/table.h"
#include "targets/dirty/dirty.h"

namespace strata::control {

// The registry's record of a device: what every part reads (core's Device:
// name, top target, read-only, the devices it uses) and what control keeps.
struct Device : strata::Device {
  DeviceSpec spec;                 // the segments it was made from (for dump)
  std::shared_ptr<LiveTarget> live;
  std::shared_ptr<DirtyTarget> dirty;  // == target
  // A reload waiting for resume: its spec and references.
  std::shared_ptr<const DeviceSpec> inactive;
  std::vector<std::string> inactive_uses;
  bool effective_read_only() const { return read_only || !live->caps().can_write; }
};

// The registry's records as control's Devices (all of them are: control is
// the only writer).
class Devices {
 public:
  explicit Devices(DeviceRegistry& registry) : registry_(registry) {}
  std::vector<std::shared_ptr<const Device>> list() const;
  std::shared_ptr<const Device> find(std::string_view name) const;
  // Adds, or replaces the record of the same name.
  void put(std::shared_ptr<const Device> d) { registry_.put(std::move(d)); }
  void erase(std::string_view name) { registry_.erase(name); }
  // The devices whose active or inactive table refers to `name`.
  std::vector<std::string> users_of(std::string_view name) const;
  DeviceRegistry& registry() const { return registry_; }

 private:
  DeviceRegistry& registry_;
};

// Resolves the device references of a table being built (`linear`, cow
// `base=`) to devices of the registry, and to devices built earlier in the
// same batch; records which it resolved.
class RegistryResolver final : public Resolver {
 public:
  RegistryResolver(const Devices& devices, std::string self) : devices_(devices), self_(std::move(self)) {}
  Result<std::shared_ptr<Target>> device(std::string_view name) override;
  Result<std::unique_ptr<RemoteFile>> remote_file(std::string_view url) override;
  void add_pending(const std::string& name, std::shared_ptr<Target> t) { pending_.push_back({name, std::move(t)}); }
  std::vector<std::string> take_used() { return std::move(used_); }
  void set_self(std::string self) { self_ = std::move(self); }

 private:
  const Devices& devices_;
  std::string self_;
  std::vector<std::pair<std::string, std::shared_ptr<Target>>> pending_;
  std::vector<std::string> used_;
};

// Builds the table of one device spec (targets opened and checked), with
// every segment read-only if `read_only`. `source` names the text in errors.
Result<std::shared_ptr<TableTarget>> build_table(const DeviceSpec& spec, std::string_view source, bool read_only,
                                                 Resolver& resolver);

// A device's table as a table-file section: "[name]" or "[name ro]", then its
// segment lines.
std::string spec_text(const DeviceSpec& spec, bool read_only);

// Device names: letters, digits, '-', '_', '.'.
bool valid_device_name(std::string_view name);

}  // namespace strata::control
