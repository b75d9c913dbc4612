// A file on an NFS server opened by URL as a RemoteFile (targets/remote_file.h):
// a shared cow layer read by many hosts. Its data path is an NfsTarget over the
// file; the header and bitmap are read at load through libnfs's synchronous
// calls, on a mount of its own that also keeps this host's lease on the file.
#pragma once

#include <memory>
#include <string_view>

#include "core/result.h"
#include "targets/remote_file.h"

namespace strata {

// nfs://server/export/dir/file (NFSv3), opened read-only.
Result<std::unique_ptr<RemoteFile>> open_nfs_remote_file(std::string_view url);

// A classified message for a libnfs error at load (nfs_load.cc).
Error load_error(std::string_view what, std::string_view msg);

}  // namespace strata
