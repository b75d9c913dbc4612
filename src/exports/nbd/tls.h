// TLS for the NBD export (GnuTLS), driven by the connection's own io_uring
// I/O: GnuTLS never touches the socket. Its push function appends ciphertext
// to out(), which the connection sends; its pull function reads ciphertext
// the connection received into in(), and says EAGAIN when that is empty, so
// the connection receives more and calls again. The handshake and the data
// path therefore never block a queue thread.
//
// TlsConfig holds the credentials, loaded once at start-up and shared
// read-only by every connection. A TlsSession belongs to one connection.
#pragma once

#include <gnutls/gnutls.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "core/result.h"

namespace strata::nbd {

enum class TlsMode { kOff, kOn, kRequire };

// Checks the text of a PSK file (psktool's `username:hexkey` lines): every
// non-empty line a non-empty username, a colon, and a key of an even number
// of hex digits, at least one key. Returns the number of keys, or an error
// naming the line (`name` is the file's name in it).
Result<std::size_t> check_psk_text(std::string_view text, std::string_view name);

class TlsConfig {
 public:
  // cert_dir holds ca-cert.pem, server-cert.pem, server-key.pem (the layout
  // nbdkit and qemu use); psk_file is psktool's `username:hexkey` format.
  static Result<std::shared_ptr<TlsConfig>> load(TlsMode mode, const std::string& cert_dir,
                                                 const std::string& psk_file, bool verify_peer);
  ~TlsConfig();
  TlsConfig(const TlsConfig&) = delete;
  TlsConfig& operator=(const TlsConfig&) = delete;

  TlsMode mode() const { return mode_; }

 private:
  TlsConfig() = default;
  friend class TlsSession;
  TlsMode mode_ = TlsMode::kOff;
  bool verify_peer_ = false;
  gnutls_certificate_credentials_t x509_ = nullptr;
  gnutls_psk_server_credentials_t psk_ = nullptr;
  gnutls_priority_t priority_ = nullptr;
};

class TlsSession {
 public:
  static Result<std::unique_ptr<TlsSession>> create(const TlsConfig& cfg);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Ciphertext received from the socket, not yet consumed by GnuTLS.
  void feed(const std::byte* data, std::size_t n);
  // Ciphertext GnuTLS produced, to be sent; the caller clears it once sent.
  std::vector<std::byte>& out() { return out_; }

  // One step of the handshake: ok(true) when done, ok(false) when it needs
  // out() sent and/or more ciphertext fed (want_read()), an error otherwise.
  Result<bool> handshake();
  bool want_read() const;

  // Plaintext in: >0 bytes, 0 at a clean close, -EAGAIN when more ciphertext
  // is needed, another negative errno on failure.
  ssize_t recv(std::byte* buf, std::size_t n);
  bool pending() const;
  // Plaintext out (encrypted into out()).
  Result<> send(const std::byte* buf, std::size_t n);
  void cork();
  Result<> uncork();
  // Queues a close_notify into out().
  void bye();

  // "TLS1.3 PSK user alice" or "TLS1.3 X.509 CN=client", for logs.
  std::string describe() const;

 private:
  TlsSession() = default;
  static ssize_t push(gnutls_transport_ptr_t p, const void* data, size_t n);
  static ssize_t pull(gnutls_transport_ptr_t p, void* data, size_t n);

  gnutls_session_t s_ = nullptr;
  bool verify_peer_ = false;
  std::vector<std::byte> in_;
  std::size_t in_pos_ = 0;
  std::vector<std::byte> out_;
};

}  // namespace strata::nbd
