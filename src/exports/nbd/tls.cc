#include "exports/nbd/tls.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>

#include <fmt/core.h>

#include "core/log.h"

namespace strata::nbd {
namespace {

Failure tls_error(std::string_view what, int r) {
  return fail(EPROTO, fmt::format("{}: {}", what, gnutls_strerror(r)));
}

// TLS 1.2 and 1.3 only; PSK key exchanges when a PSK file is configured.
constexpr const char* kPriority = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";
constexpr const char* kPriorityPsk = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:+ECDHE-PSK:+DHE-PSK:+PSK";

}  // namespace

Result<std::size_t> check_psk_text(std::string_view text, std::string_view name) {
  std::size_t keys = 0, lineno = 0;
  while (!text.empty()) {
    ++lineno;
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    auto bad = [&](std::string_view why) {
      return fail(EINVAL, fmt::format("--tls-psk {}: line {}: {} (expected username:hexkey, as psktool writes)",
                                      log_escape(name), lineno, why));
    };
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return bad("no ':' between the username and the key");
    if (colon == 0) return bad("empty username");
    std::string_view key = line.substr(colon + 1);
    if (key.empty()) return bad("empty key");
    if (!std::all_of(key.begin(), key.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); }))
      return bad("the key is not hexadecimal");
    if (key.size() % 2) return bad("the key has an odd number of hex digits");
    ++keys;
  }
  if (keys == 0) return fail(EINVAL, fmt::format("--tls-psk {}: no key in it (expected username:hexkey lines, as "
                                                 "psktool writes)",
                                                 log_escape(name)));
  return keys;
}

Result<std::shared_ptr<TlsConfig>> TlsConfig::load(TlsMode mode, const std::string& cert_dir,
                                                   const std::string& psk_file, bool verify_peer) {
  std::shared_ptr<TlsConfig> c(new TlsConfig());
  c->mode_ = mode;
  c->verify_peer_ = verify_peer;
  if (mode == TlsMode::kOff) return c;
  if (cert_dir.empty() && psk_file.empty())
    return fail(EINVAL, "--tls=on/require needs --tls-certificates DIR or --tls-psk FILE");
  if (!cert_dir.empty()) {
    int r = gnutls_certificate_allocate_credentials(&c->x509_);
    if (r < 0) return tls_error("gnutls_certificate_allocate_credentials", r);
    std::string ca = cert_dir + "/ca-cert.pem", cert = cert_dir + "/server-cert.pem",
                key = cert_dir + "/server-key.pem";
    struct stat st;
    for (const auto& f : {cert, key})
      if (::stat(f.c_str(), &st) < 0) return posix_error(fmt::format("--tls-certificates: {}", f), errno);
    r = gnutls_certificate_set_x509_key_file(c->x509_, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM);
    if (r < 0) return tls_error(fmt::format("--tls-certificates: {} / {}", cert, key), r);
    if (::stat(ca.c_str(), &st) == 0) {
      r = gnutls_certificate_set_x509_trust_file(c->x509_, ca.c_str(), GNUTLS_X509_FMT_PEM);
      if (r < 0) return tls_error(fmt::format("--tls-certificates: {}", ca), r);
      // GnuTLS returns how many certificates it loaded: 0 for an empty or
      // unparsable file, which would otherwise refuse every client cert.
      if (r == 0) return fail(EINVAL, fmt::format("--tls-certificates: {}: no PEM certificate in it", ca));
    } else if (verify_peer) {
      return fail(EINVAL, fmt::format("--tls-verify-peer needs {}", ca));
    }
  } else if (verify_peer) {
    return fail(EINVAL, "--tls-verify-peer needs --tls-certificates (client certificates are checked against its CA)");
  }
  if (!psk_file.empty()) {
    struct stat st;
    if (::stat(psk_file.c_str(), &st) < 0) return posix_error(fmt::format("--tls-psk {}", psk_file), errno);
    if (!S_ISREG(st.st_mode)) return fail(EINVAL, fmt::format("--tls-psk {}: not a regular file", psk_file));
    if (st.st_size > (1 << 20)) return fail(EINVAL, fmt::format("--tls-psk {}: larger than 1 MiB", psk_file));
    {
      std::ifstream in(psk_file, std::ios::binary);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in && !in.eof()) return posix_error(fmt::format("--tls-psk {}", psk_file), errno ? errno : EIO);
      TRY(check_psk_text(text, psk_file));
    }
    if (st.st_mode & S_IROTH)
      LOG_WARN("--tls-psk {}: the key file is readable by every user (mode {:o}): chmod o-r it", psk_file,
               st.st_mode & 07777);
    int r = gnutls_psk_allocate_server_credentials(&c->psk_);
    if (r < 0) return tls_error("gnutls_psk_allocate_server_credentials", r);
    r = gnutls_psk_set_server_credentials_file(c->psk_, psk_file.c_str());
    if (r < 0) return tls_error(fmt::format("--tls-psk {}", psk_file), r);
  }
  const char* err_pos = nullptr;
  int r = gnutls_priority_init(&c->priority_, c->psk_ ? kPriorityPsk : kPriority, &err_pos);
  if (r < 0) return tls_error("gnutls_priority_init", r);
  return c;
}

TlsConfig::~TlsConfig() {
  if (priority_) gnutls_priority_deinit(priority_);
  if (x509_) gnutls_certificate_free_credentials(x509_);
  if (psk_) gnutls_psk_free_server_credentials(psk_);
}

Result<std::unique_ptr<TlsSession>> TlsSession::create(const TlsConfig& cfg) {
  std::unique_ptr<TlsSession> t(new TlsSession());
  int r = gnutls_init(&t->s_, GNUTLS_SERVER | GNUTLS_NONBLOCK);
  if (r < 0) return tls_error("gnutls_init", r);
  r = gnutls_priority_set(t->s_, cfg.priority_);
  if (r < 0) return tls_error("gnutls_priority_set", r);
  if (cfg.x509_) {
    r = gnutls_credentials_set(t->s_, GNUTLS_CRD_CERTIFICATE, cfg.x509_);
    if (r < 0) return tls_error("gnutls_credentials_set", r);
    gnutls_certificate_server_set_request(t->s_, cfg.verify_peer_ ? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_IGNORE);
  }
  if (cfg.psk_) {
    r = gnutls_credentials_set(t->s_, GNUTLS_CRD_PSK, cfg.psk_);
    if (r < 0) return tls_error("gnutls_credentials_set", r);
  }
  t->verify_peer_ = cfg.verify_peer_;
  gnutls_transport_set_ptr(t->s_, t.get());
  gnutls_transport_set_push_function(t->s_, &TlsSession::push);
  gnutls_transport_set_pull_function(t->s_, &TlsSession::pull);
  t->out_.reserve(64 * 1024);
  return t;
}

TlsSession::~TlsSession() {
  if (s_) gnutls_deinit(s_);
}

ssize_t TlsSession::push(gnutls_transport_ptr_t p, const void* data, size_t n) {
  auto* t = static_cast<TlsSession*>(p);
  auto* d = static_cast<const std::byte*>(data);
  t->out_.insert(t->out_.end(), d, d + n);
  return static_cast<ssize_t>(n);
}

ssize_t TlsSession::pull(gnutls_transport_ptr_t p, void* data, size_t n) {
  auto* t = static_cast<TlsSession*>(p);
  std::size_t avail = t->in_.size() - t->in_pos_;
  if (avail == 0) {
    gnutls_transport_set_errno(t->s_, EAGAIN);
    return -1;
  }
  std::size_t k = std::min(n, avail);
  std::memcpy(data, t->in_.data() + t->in_pos_, k);
  t->in_pos_ += k;
  if (t->in_pos_ == t->in_.size()) {
    t->in_.clear();
    t->in_pos_ = 0;
  }
  return static_cast<ssize_t>(k);
}

void TlsSession::feed(const std::byte* data, std::size_t n) {
  if (in_pos_ > 0 && in_pos_ == in_.size()) {
    in_.clear();
    in_pos_ = 0;
  }
  in_.insert(in_.end(), data, data + n);
}

Result<bool> TlsSession::handshake() {
  int r = gnutls_handshake(s_);
  if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) return false;
  if (r < 0) {
    // GnuTLS sends no alert on its own: queue one (push never blocks) so the
    // client learns why, instead of seeing the connection just drop.
    (void)gnutls_alert_send_appropriate(s_, r);
    return tls_error("TLS handshake", r);
  }
  if (verify_peer_) {
    unsigned status = 0;
    r = gnutls_certificate_verify_peers2(s_, &status);
    if (r < 0) return tls_error("client certificate", r);
    if (status != 0) {
      gnutls_datum_t txt{};
      std::string why = "rejected";
      if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &txt, 0) == 0) {
        why = std::string(reinterpret_cast<const char*>(txt.data), txt.size);
        gnutls_free(txt.data);
      }
      (void)gnutls_alert_send(s_, GNUTLS_AL_FATAL, GNUTLS_A_BAD_CERTIFICATE);
      return fail(EACCES, "client certificate: " + why);
    }
  }
  return true;
}

bool TlsSession::want_read() const { return gnutls_record_get_direction(s_) == 0; }

ssize_t TlsSession::recv(std::byte* buf, std::size_t n) {
  ssize_t r = gnutls_record_recv(s_, buf, n);
  if (r >= 0) return r;
  if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) return -EAGAIN;
  if (r == GNUTLS_E_PREMATURE_TERMINATION) return 0;
  return -EPROTO;
}

bool TlsSession::pending() const { return gnutls_record_check_pending(s_) > 0; }

Result<> TlsSession::send(const std::byte* buf, std::size_t n) {
  while (n > 0) {
    ssize_t r = gnutls_record_send(s_, buf, n);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) continue;  // push never blocks
    if (r < 0) return tls_error("TLS send", static_cast<int>(r));
    buf += r;
    n -= r;
  }
  return {};
}

void TlsSession::cork() { gnutls_record_cork(s_); }

Result<> TlsSession::uncork() {
  for (;;) {
    int r = gnutls_record_uncork(s_, GNUTLS_RECORD_WAIT);
    if (r >= 0) return {};
    if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED) return tls_error("TLS send", r);
  }
}

void TlsSession::bye() { (void)gnutls_bye(s_, GNUTLS_SHUT_WR); }

std::string TlsSession::describe() const {
  const char* ver = gnutls_protocol_get_name(gnutls_protocol_get_version(s_));
  std::string s = ver ? ver : "TLS";
  if (gnutls_auth_get_type(s_) == GNUTLS_CRD_PSK) {
    const char* user = gnutls_psk_server_get_username(s_);
    s += fmt::format(" PSK user {}", user ? user : "?");
  } else {
    s += " X.509";
  }
  return s;
}

}  // namespace strata::nbd
