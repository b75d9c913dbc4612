#include "control/server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/core.h>

#include <chrono>

#include "core/log.h"
#include "core/socket.h"

namespace strata::control {

struct Server::Client {
  uint64_t id = 0;
  int fd = -1;
  std::string in;
  std::string out;
  bool busy = false;       // a request is being served
  bool more = false;       // complete requests left over from its last turn
  bool close_after = false;  // close once `out` is sent
  bool eof = false;        // the client has shut its side
  std::shared_ptr<Job> follow;
  bool follow_owns = false;   // the followed job was started by this request
  bool follow_job_reply = false;  // the reply is the job's JSON (job_wait)
  std::chrono::steady_clock::time_point last_progress{};
  std::string last_line;  // the last progress line sent
};

Server::Server(Daemon& d) : d_(d) {}

Server::~Server() { stop(); }

Result<> Server::start(const std::string& path) {
  auto l = listen_unix(path, 128, 0600);
  if (!l) return fail(l.error().code, "control socket " + l.error().message);
  auto r = start_fd(*l);
  if (r) path_ = path;
  return r;
}

Result<> Server::start_fd(int fd) {
  fd_ = fd;
  int fl = ::fcntl(fd_, F_GETFL);
  ::fcntl(fd_, F_SETFL, fl | O_NONBLOCK);
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    ::close(fd_);
    return posix_error("eventfd", errno);
  }
  thread_ = std::thread([this] { loop(); });
  worker_ = std::thread([this] { worker(); });
  return {};
}

void Server::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  wake();
  cv_.notify_all();
  thread_.join();
  worker_.join();
  for (auto& [id, c] : clients_) ::close(c->fd);
  clients_.clear();
  ::close(fd_);
  if (!path_.empty()) ::unlink(path_.c_str());
  ::close(wake_fd_);
}

void Server::wake() {
  uint64_t one = 1;
  ssize_t w = ::write(wake_fd_, &one, sizeof one);
  (void)w;
}

void Server::run_on_worker(std::function<void()> fn) {
  {
    MutexLock l(mu_);
    work_.push_back({0, nullptr, std::move(fn)});
  }
  cv_.notify_one();
}

void Server::worker() {
  for (;;) {
    Work w;
    {
      // Locked by hand, not by a std::unique_lock, so the analysis sees mu_ held.
      mu_.lock();
      // Idle for a second: free the tables reloads retired that no client
      // can read from any more (LiveTarget::reap), between changes.
      bool idle = !cv_.wait_for(mu_, std::chrono::seconds(1), [&]() NO_THREAD_SAFETY_ANALYSIS {
        return stopping_.load() || !work_.empty();
      });
      if (stopping_.load()) {
        mu_.unlock();
        return;
      }
      if (idle) {
        mu_.unlock();
        reap_tables(d_);
        continue;
      }
      w = std::move(work_.front());
      work_.pop_front();
      mu_.unlock();
    }
    if (w.fn) {
      w.fn();
      continue;
    }
    nlohmann::json reply = dispatch(d_, w.request);
    // A refused change is worth a line (what the operator's tools asked);
    // log_line() escapes what the client wrote.
    if (!reply.value("ok", false))
      LOG_INFO("control: {} refused: {}", w.request.value("method", std::string()), reply.value("error", std::string()));
    {
      MutexLock l(mu_);
      done_.push_back({w.client, std::move(reply)});
    }
    wake();
  }
}

void Server::loop() {
  std::vector<pollfd> p;
  std::vector<uint64_t> ids;
  for (;;) {
    p.clear();
    ids.clear();
    p.push_back({fd_, static_cast<short>(clients_.size() <= kMaxClients ? POLLIN : 0), 0});
    p.push_back({wake_fd_, POLLIN, 0});
    bool following = false;
    bool pending = false;  // a client has requests left over from its last turn
    for (auto& [id, c] : clients_) {
      if (c->more) {
        c->more = next_request(*c);
        pending = pending || c->more;
      }
      short ev = 0;
      // Lines that wait for the request being served stay in the socket.
      if (!c->eof && !c->close_after && c->in.size() <= kMaxLine) ev |= POLLIN;
      if (!c->out.empty()) ev |= POLLOUT;
      if (c->follow) following = true;
      p.push_back({c->fd, ev, 0});
      ids.push_back(id);
    }
    int n = ::poll(p.data(), p.size(), pending ? 0 : following ? 100 : 1000);
    if (stopping_.load()) return;
    if (n < 0 && errno != EINTR) {
      LOG_ERROR("control: poll: {}", std::strerror(errno));
      return;
    }
    if (n > 0 && (p[1].revents & POLLIN)) {
      uint64_t v;
      ssize_t r = ::read(wake_fd_, &v, sizeof v);
      (void)r;
    }
    if (n > 0 && (p[0].revents & POLLIN)) accept_clients();
    for (std::size_t i = 0; n > 0 && i < ids.size(); ++i) {
      auto it = clients_.find(ids[i]);
      if (it == clients_.end()) continue;
      Client& c = *it->second;
      short re = p[i + 2].revents;
      if (re & (POLLIN | POLLHUP | POLLERR)) read_client(c);  // serves a turn of its requests
      if (re & POLLOUT) send_out(c);
    }
    // Replies of the worker.
    std::vector<std::pair<uint64_t, nlohmann::json>> done;
    {
      MutexLock l(mu_);
      done.swap(done_);
    }
    for (auto& [id, reply] : done) {
      auto it = clients_.find(id);
      if (it == clients_.end()) continue;
      it->second->busy = false;
      queue_line(*it->second, reply_line(reply));
      it->second->more = next_request(*it->second);
    }
    tick_followers();
    // Drop the clients that are done or gone.
    for (auto it = clients_.begin(); it != clients_.end();) {
      Client& c = *it->second;
      bool gone = c.fd < 0 || (c.close_after && c.out.empty()) || (c.eof && !c.busy && c.out.empty() && c.in.find('\n') == std::string::npos);
      if (gone) {
        if (c.follow && c.follow_owns && c.follow->state() == Job::State::kRunning) {
          LOG_INFO("control: the client following job {} went away: cancelling it", c.follow->id());
          c.follow->cancel();
        }
        if (c.fd >= 0) ::close(c.fd);
        it = clients_.erase(it);
      } else {
        ++it;
      }
    }
  }
}

void Server::accept_clients() {
  for (;;) {
    int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || (cred.uid != 0 && cred.uid != ::getuid())) {
      LOG_WARN("control: refused a client with uid {}", cred.uid);
      ::close(fd);
      continue;
    }
    if (clients_.size() >= kMaxClients) {
      std::string msg = nlohmann::json{{"ok", false},
                                       {"error", fmt::format("too many control clients ({} at most); try again",
                                                             kMaxClients)}}
                            .dump() +
                        "\n";
      ssize_t w = ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      (void)w;
      ::close(fd);
      continue;
    }
    auto c = std::make_unique<Client>();
    c->id = next_client_++;
    c->fd = fd;
    clients_[c->id] = std::move(c);
  }
}

void Server::read_client(Client& c) {
  char chunk[16384];
  for (;;) {
    ssize_t n = ::recv(c.fd, chunk, sizeof chunk, 0);
    if (n > 0) {
      c.in.append(chunk, static_cast<std::size_t>(n));
      if (c.in.size() > kMaxLine + sizeof chunk) break;  // enough for now
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    c.eof = true;  // closed (or reset)
    if (n < 0) {
      ::close(c.fd);
      c.fd = -1;
      c.out.clear();
      c.in.clear();
      return;
    }
    break;
  }
  c.more = next_request(c);
}

bool Server::next_request(Client& c) {
  // A loop, not a recursion through the replies: a client that pipelines
  // thousands of requests must not grow the stack (a finding of the
  // sanitizer run: a stack overflow). At most kRequestsPerTurn (4) of one
  // client's requests per turn of the loop, so that one client's pipeline
  // cannot delay the others; the loop comes back at once for the rest.
  for (int served = 0; c.fd >= 0 && !c.busy && !c.close_after; ++served) {
    const auto nl = c.in.find('\n');
    // A line over the limit (whole, or not ended yet): refused, then closed.
    if (nl == std::string::npos ? c.in.size() > kMaxLine : nl > kMaxLine) {
      queue_line(c, nlohmann::json{{"ok", false},
                                   {"error", fmt::format("request line longer than {} bytes", kMaxLine)}}
                            .dump() +
                        "\n");
      c.close_after = true;
      c.in.clear();
      return false;
    }
    if (nl == std::string::npos) return false;
    if (served == kRequestsPerTurn) return true;
    std::string line = c.in.substr(0, nl);
    c.in.erase(0, nl + 1);
    handle(c, line);
  }
  return false;
}

void Server::handle(Client& c, const std::string& line) {
  auto reply = [&](const nlohmann::json& j) { queue_line(c, reply_line(escape_reply(j))); };
  nlohmann::json req = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded()) return reply({{"ok", false}, {"error", "request is not valid JSON"}});
  if (!req.is_object() || !req.contains("method") || !req["method"].is_string())
    return reply({{"ok", false}, {"error", "request must be a JSON object with a string \"method\""}});
  const std::string method = req["method"];
  switch (classify(method)) {
    case Kind::kRead:
      return reply(dispatch(d_, req));
    case Kind::kJob: {
      auto j = start_job(d_, req);
      if (!j) return reply({{"ok", false}, {"error", j.error().message}});
      const nlohmann::json& params = req.contains("params") ? req["params"] : nlohmann::json::object();
      if (params.is_object() && params.value("detach", false))
        return reply({{"ok", true}, {"result", {{"job", (*j)->id()}}}});
      c.busy = true;
      c.follow = *j;
      c.follow_owns = true;
      c.follow_job_reply = false;
      return;
    }
    case Kind::kWait: {
      auto j = find_job(d_, req);
      if (!j) return reply({{"ok", false}, {"error", j.error().message}});
      c.busy = true;
      c.follow = *j;
      c.follow_owns = false;
      c.follow_job_reply = true;
      return;
    }
    case Kind::kChange: {
      c.busy = true;
      {
        MutexLock l(mu_);
        work_.push_back({c.id, std::move(req), nullptr});
      }
      cv_.notify_one();
      return;
    }
  }
}

void Server::tick_followers() {
  auto now = std::chrono::steady_clock::now();
  for (auto& [id, cp] : clients_) {
    Client& c = *cp;
    if (!c.follow) continue;
    auto st = c.follow->state();
    if (st != Job::State::kRunning) {
      // The job's last progress before its reply, so that a follower sees
      // where it ended (100% when done) even of a job shorter than a tick.
      if (nlohmann::json last = c.follow->detail(); last.is_object() && last.contains("copied_bytes")) {
        last["job"] = c.follow->id();
        std::string line = reply_line(nlohmann::json{{"progress", last}});
        if (line != c.last_line) queue_line(c, line);
      }
      nlohmann::json j = c.follow->to_json();
      nlohmann::json r;
      if (c.follow_job_reply)
        r = {{"ok", true}, {"result", j}};
      else if (st == Job::State::kDone)
        r = {{"ok", true}, {"result", j.value("result", nlohmann::json::object())}};
      else
        r = {{"ok", false}, {"error", j.value("error", std::string())}, {"job", j}};
      c.follow.reset();
      c.busy = false;
      queue_line(c, reply_line(escape_reply(std::move(r))));
      c.more = next_request(c);
      continue;
    }
    // Progress at most ten times a second, and only to a client that keeps
    // up: lines for one that does not read are skipped, not queued.
    if (now - c.last_progress < std::chrono::milliseconds(100) || !c.out.empty()) continue;
    // A line even before the job reports: a client killed while following
    // shows up as a failed send (and cancels the job it started).
    nlohmann::json detail = c.follow->detail();
    if (detail.is_null()) detail = nlohmann::json::object();
    detail["job"] = c.follow->id();
    std::string line = reply_line(nlohmann::json{{"progress", detail}});
    // The same line again only as a keep-alive, once a second.
    if (line == c.last_line && now - c.last_progress < std::chrono::seconds(1)) continue;
    c.last_progress = now;
    c.last_line = line;
    queue_line(c, line);
  }
}

void Server::queue_line(Client& c, const std::string& line) {
  if (c.fd < 0) return;
  c.out += line;
  send_out(c);
}

void Server::send_out(Client& c) {
  while (c.fd >= 0 && !c.out.empty()) {
    ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    ::close(c.fd);  // gone
    c.fd = -1;
    c.out.clear();
    c.in.clear();
    return;
  }
  if (c.out.size() > kMaxOutput) {
    LOG_WARN("control: dropping client {}: it does not read its replies ({} bytes waiting)", c.id, c.out.size());
    ::close(c.fd);
    c.fd = -1;
    c.out.clear();
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
  MutexLock lock(mu_);
  pending_ += line;
  return send_pending(true);
}

}  // namespace strata::control
