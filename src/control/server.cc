#include "control/server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/core.h>

#include <chrono>

#include "core/log.h"
#include "core/socket.h"

namespace strata::control {

Server::~Server() { stop(); }

Result<> Server::start(const std::string& path) {
  auto l = listen_unix(path, 16, 0600);
  if (!l) return fail(l.error().code, "control socket " + l.error().message);
  int fd = *l;
  if (::pipe2(stop_pipe_, O_CLOEXEC) < 0) {
    ::close(fd);
    return posix_error("pipe", errno);
  }
  fd_ = fd;
  path_ = path;
  thread_ = std::thread([this] { loop(); });
  return {};
}

void Server::stop() {
  if (!thread_.joinable()) return;
  char c = 0;
  ssize_t w = ::write(stop_pipe_[1], &c, 1);
  (void)w;
  thread_.join();
  ::close(fd_);
  ::unlink(path_.c_str());
  ::close(stop_pipe_[0]);
  ::close(stop_pipe_[1]);
}

void Server::loop() {
  for (;;) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LOG_ERROR("control: poll: {}", std::strerror(errno));
      return;
    }
    if (p[1].revents) return;
    if (!(p[0].revents & POLLIN)) continue;
    int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || (cred.uid != 0 && cred.uid != ::getuid())) {
      LOG_WARN("control: refused a client with uid {}", cred.uid);
      ::close(c);
      continue;
    }
    serve_client(c);
    ::close(c);
  }
}

void Server::serve_client(int fd) {
  // One client at a time; a client that stalls is dropped after 5 s.
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string buf;
  char chunk[4096];
  for (;;) {
    auto nl = buf.find('\n');
    if (nl == std::string::npos) {
      if (buf.size() > (1 << 20)) return;
      ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n <= 0) return;
      buf.append(chunk, n);
      continue;
    }
    std::string line = buf.substr(0, nl);
    buf.erase(0, nl + 1);
    // Long requests (a sync, a merge) stream progress lines, at most ten a
    // second.
    LineWriter out(fd, std::chrono::milliseconds(100));
    auto progress = [&out](const nlohmann::json& p) {
      out.progress_lazy([&p] { return nlohmann::json{{"progress", p}}.dump() + "\n"; });
    };
    if (!out.reply(dispatch(d_, line, progress).dump() + "\n")) return;
  }
}

// ---------------------------------------------------------------- LineWriter

bool LineWriter::send_pending(bool block) {
  while (!broken_ && sent_ < pending_.size()) {
    ssize_t n = ::send(fd_, pending_.data() + sent_, pending_.size() - sent_,
                       MSG_NOSIGNAL | (block ? 0 : MSG_DONTWAIT));
    if (n > 0) {
      sent_ += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && !block && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return true;  // the rest waits for the next line
    } else {
      broken_ = true;  // gone, or stalled past the send timeout
    }
  }
  if (sent_ == pending_.size()) {
    pending_.clear();
    sent_ = 0;
  }
  return !broken_;
}

bool LineWriter::due() {
  auto now = std::chrono::steady_clock::now();
  if (broken_ || now - last_ < interval_) return false;
  last_ = now;
  return true;
}

void LineWriter::queue_progress(const std::string& line) {
  if (sent_ > kMaxPending) {  // a client reading in trickles: drop what it has
    pending_.erase(0, sent_);
    sent_ = 0;
  }
  if (pending_.size() - sent_ + line.size() > kMaxPending) {
    ++dropped_;
    return;
  }
  pending_ += line;
  send_pending(false);
}

bool LineWriter::reply(const std::string& line) {
  std::lock_guard lock(mu_);
  pending_ += line;
  return send_pending(true);
}

}  // namespace strata::control
