#include "core/device_registry.h"

namespace strata {

std::vector<std::shared_ptr<const Device>> DeviceRegistry::list() const {
  MutexLock l(mu_);
  return devices_;
}

std::shared_ptr<const Device> DeviceRegistry::find(std::string_view name) const {
  MutexLock l(mu_);
  for (const auto& d : devices_)
    if (d->name == name) return d;
  return nullptr;
}

void DeviceRegistry::put(std::shared_ptr<const Device> d) {
  MutexLock l(mu_);
  for (auto& x : devices_)
    if (x->name == d->name) {
      x = std::move(d);
      return;
    }
  devices_.push_back(std::move(d));
}

void DeviceRegistry::erase(std::string_view name) {
  std::shared_ptr<const Device> gone;  // released after the lock
  MutexLock l(mu_);
  for (auto it = devices_.begin(); it != devices_.end(); ++it)
    if ((*it)->name == name) {
      gone = std::move(*it);
      devices_.erase(it);
      return;
    }
}

}  // namespace strata
