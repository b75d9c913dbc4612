// Export: what the daemon and control see of every export (the NBD server,
// each FUSE mount): the daemon holds them through this interface, and a new
// export (ublk, say) implements it and is started in daemon/serve.cc; control
// needs no change.
//
// Exports serve the devices of the server's DeviceRegistry
// (core/device_registry.h): a device appears to NBD clients when control puts
// it there; a FUSE mount shows the devices registered when it was mounted.
// What an export must say is who uses a device, so that removing it can be
// refused, or its users ended.
//
// Threads: every member from the control side (not a queue thread).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "core/target.h"

namespace strata {

class Export {
 public:
  virtual ~Export() = default;

  // "nbd", "fuse".
  virtual std::string_view kind() const = 0;
  // Where clients reach it: URIs, a mountpoint.
  virtual std::vector<std::string> describe() const = 0;

  // Who uses the device whose top target is `t`, as a phrase after
  // "device 'NAME' " ("has 2 NBD client(s) connected", "is shown by the
  // FUSE export at /mnt"); count 0: nobody. can_end: end_users_of() can end
  // them (else the export must be stopped first).
  struct Users {
    std::size_t count = 0;
    bool can_end = false;
    std::string what;
  };
  virtual Users users_of(const Target* t) const = 0;
  // The device is going away: its users stop after the requests they have
  // sent (their replies are sent).
  virtual void end_users_of(const Target* t) = 0;

  // Stops serving once the requests in flight are answered. false: it could
  // not be taken down entirely (a FUSE mount a loop device still holds) and
  // must be kept alive until the process exits.
  virtual bool stop() = 0;
};

}  // namespace strata
