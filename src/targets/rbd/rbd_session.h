// RbdSession: a connection to a Ceph cluster and one open RBD image, for the
// rbd target (rbd.h). It owns the librados cluster handle, the pool's io
// context and the librbd image, and closes them in that order's reverse.
//
// Everything here blocks (monitor and OSD round trips) and runs when the
// table loads, on the thread that loads it, never on a queue thread; each
// call is bounded by the `timeout` the table gives (client_mount_timeout,
// rados_mon_op_timeout, rados_osd_op_timeout). After open(), image() may be
// used from any thread: librbd's image handle is thread-safe for aio.
//
// Every failure becomes one Error whose message says what went wrong in the
// operator's terms (cluster unreachable, no such pool, no such image or
// snapshot, permission denied, the image is locked by another client).
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/result.h"

namespace strata {

// What a table line names: `POOL/IMAGE[@SNAP]` and the options.
struct RbdSpec {
  std::string pool, image, snap;
  std::string id;       // client name without "client." (empty: librados' default, admin)
  std::string conf;     // ceph.conf (empty: CEPH_CONF or the default places)
  std::string keyring;  // empty: the keyring the conf names
  std::string ns;       // RADOS namespace
  bool exclusive = true;
  bool read_only = false;
  std::chrono::seconds timeout{30};

  // "POOL/IMAGE" or "POOL/NS/IMAGE@SNAP", for messages.
  std::string name() const;
};

// Parses "POOL/IMAGE[@SNAP]".
Result<RbdSpec> parse_rbd_spec(std::string_view s);

class RbdSession {
 public:
  // Connects, opens the pool and the image (read-only at the snapshot, if
  // any). Checks nothing about sizes or locks.
  static Result<std::unique_ptr<RbdSession>> open(const RbdSpec& spec);
  ~RbdSession();
  RbdSession(const RbdSession&) = delete;
  RbdSession& operator=(const RbdSession&) = delete;

  rbd_image_t image() const { return image_; }
  uint64_t size() const { return size_; }
  uint64_t features() const { return features_; }
  uint64_t object_size() const { return object_size_; }
  // What names these bytes in the cluster: the pool's id, the image's id
  // (a new image of the same name has another) and the snapshot's id (0 at
  // the head; a snapshot made again under the same name has another).
  int64_t pool_id() const { return pool_id_; }
  const std::string& image_id() const { return image_id_; }
  uint64_t snap_id() const { return snap_id_; }
  // "client.4123 127.0.0.1:0/3385893045": this client, as lockers name it.
  const std::string& self() const { return self_; }

  // Takes the image's exclusive lock and keeps it (librbd never hands it to
  // another client on request). A holder that does not answer a ping within
  // a few seconds (killed, or cut off) is blocklisted and its lock broken, as
  // `rbd lock rm` does; a live holder makes this fail with EBUSY and a
  // message naming it.
  Result<> lock_exclusive();

 private:
  RbdSession() = default;
  struct Holder {
    std::string client;  // "client.4123"
    std::string addr;    // "127.0.0.1:0/3385893045"
    uint64_t gid = 0;
  };
  // The current holder of the image's exclusive lock, if any.
  Result<std::optional<Holder>> lock_holder();
  // True when the holder answers a notify on the image header in time.
  Result<bool> holder_alive(const Holder& h);
  std::string describe_holder(const Holder& h);
  // Blocklists a dead holder and breaks its lock.
  Result<> break_lock(const Holder& h);
  Error image_error(std::string_view what, int r) const;

  RbdSpec spec_;
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
  rbd_image_t image_ = nullptr;
  uint64_t size_ = 0, features_ = 0, object_size_ = 0;
  std::string header_oid_;
  std::string self_;
  int64_t pool_id_ = -1;
  std::string image_id_;
  uint64_t snap_id_ = 0;
};

}  // namespace strata
