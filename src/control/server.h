// Control server: a Unix socket (mode 0600) speaking JSON lines, served by one
// thread of its own (it may block; it is not an I/O thread). A peer whose uid
// is neither root nor the server's owner is refused (SO_PEERCRED).
#pragma once

#include <atomic>
#include <string>
#include <thread>

#include "control/commands.h"
#include "core/result.h"

namespace strata::control {

class Server {
 public:
  explicit Server(Daemon& d) : d_(d) {}
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  Result<> start(const std::string& path);
  void stop();

 private:
  void loop();
  void serve_client(int fd);

  Daemon& d_;
  std::string path_;
  int fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::thread thread_;
};

}  // namespace strata::control
