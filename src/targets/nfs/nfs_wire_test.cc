// nfs_wire against libnfs's own XDR code: calls encoded here are decoded by
// libnfs's zdr routines (the ones its RPC server side uses), and replies
// encoded by libnfs are decoded here; every truncation of a reply is refused.
#include "targets/nfs/nfs_wire.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <nfsc/libnfs-zdr.h>
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>

#include <cstring>
#include <vector>

namespace strata::nfswire {
namespace {

const std::vector<uint8_t> kFh = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27};

uint32_t be32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return ntohl(v);
}

// A whole record: header, then (WRITE) data and padding.
std::vector<std::byte> record(uint32_t xid, int version, Proc proc, uint64_t off, uint32_t count, int stable,
                              const std::vector<std::byte>& data = {}) {
  std::vector<std::byte> b(kMaxHeader);
  size_t n = encode_call(b.data(), xid, version, Cred{1234, 5678}, kFh, proc, off, count, stable);
  EXPECT_LE(n, kMaxHeader);
  b.resize(n);
  if (proc == Proc::kWrite) {
    b.insert(b.end(), data.begin(), data.end());
    b.resize(b.size() + pad_of(static_cast<uint32_t>(data.size())), std::byte{0});
  }
  return b;
}

struct Decoded {
  rpc_msg msg{};
  ZDR zdr{};
  std::vector<std::byte> buf;
};

// Decodes the call header with libnfs; leaves the ZDR at the arguments.
void decode_call(std::vector<std::byte> rec, Decoded* d) {
  ASSERT_GE(rec.size(), 4u);
  uint32_t marker = be32(rec.data());
  EXPECT_TRUE(marker & 0x80000000u) << "last-fragment bit";
  EXPECT_EQ(marker & 0x7fffffffu, rec.size() - 4) << "record length";
  d->buf.assign(rec.begin() + 4, rec.end());
  zdrmem_create(&d->zdr, reinterpret_cast<caddr_t>(d->buf.data()), static_cast<uint32_t>(d->buf.size()), ZDR_DECODE);
  ASSERT_TRUE(zdr_callmsg(nullptr, &d->zdr, &d->msg));
}

TEST(NfsWire, Nfs3ReadCallDecodesWithLibnfs) {
  Decoded d;
  decode_call(record(0x10002, 3, Proc::kRead, 0x123456789aULL, 65536, 0), &d);
  EXPECT_EQ(d.msg.xid, 0x10002u);
  EXPECT_EQ(d.msg.direction, CALL);
  EXPECT_EQ(d.msg.body.cbody.rpcvers, 2u);
  EXPECT_EQ(d.msg.body.cbody.prog, uint32_t{NFS_PROGRAM});
  EXPECT_EQ(d.msg.body.cbody.vers, 3u);
  EXPECT_EQ(d.msg.body.cbody.proc, uint32_t{NFS3_READ});
  ASSERT_EQ(d.msg.body.cbody.cred.oa_flavor, uint32_t{AUTH_UNIX});
  // AUTH_SYS body: stamp, "strata", uid, gid, no gids.
  const auto* cred = reinterpret_cast<const std::byte*>(d.msg.body.cbody.cred.oa_base);
  ASSERT_EQ(d.msg.body.cbody.cred.oa_length, 4u + 4 + 8 + 4 + 4 + 4);
  EXPECT_EQ(be32(cred + 4), 6u);
  EXPECT_EQ(std::memcmp(cred + 8, "strata", 6), 0);
  EXPECT_EQ(be32(cred + 16), 1234u);
  EXPECT_EQ(be32(cred + 20), 5678u);
  EXPECT_EQ(be32(cred + 24), 0u);
  READ3args a{};
  ASSERT_TRUE(zdr_READ3args(&d.zdr, &a));
  EXPECT_EQ(a.offset, 0x123456789aULL);
  EXPECT_EQ(a.count, 65536u);
  ASSERT_EQ(a.file.data.data_len, kFh.size());
  EXPECT_EQ(std::memcmp(a.file.data.data_val, kFh.data(), kFh.size()), 0);
  EXPECT_EQ(zdr_getpos(&d.zdr), d.buf.size()) << "nothing after the arguments";
  zdr_destroy(&d.zdr);
}

TEST(NfsWire, Nfs3WriteCallCarriesDataAndPadding) {
  for (uint32_t n : {1u, 3u, 4u, 4097u, 65536u}) {
    std::vector<std::byte> data(n);
    for (uint32_t i = 0; i < n; ++i) data[i] = std::byte(i * 7 + 1);
    Decoded d;
    decode_call(record(77, 3, Proc::kWrite, 8192, n, 2, data), &d);
    EXPECT_EQ(d.msg.body.cbody.proc, uint32_t{NFS3_WRITE});
    WRITE3args a{};
    ASSERT_TRUE(zdr_WRITE3args(&d.zdr, &a));
    EXPECT_EQ(a.offset, 8192u);
    EXPECT_EQ(a.count, n);
    EXPECT_EQ(a.stable, FILE_SYNC);
    ASSERT_EQ(a.data.data_len, n);
    EXPECT_EQ(std::memcmp(a.data.data_val, data.data(), n), 0);
    EXPECT_EQ(zdr_getpos(&d.zdr), d.buf.size()) << n;
    zdr_destroy(&d.zdr);
  }
}

TEST(NfsWire, Nfs3CommitCall) {
  Decoded d;
  decode_call(record(5, 3, Proc::kCommit, 0, 0, 0), &d);
  EXPECT_EQ(d.msg.body.cbody.proc, uint32_t{NFS3_COMMIT});
  COMMIT3args a{};
  ASSERT_TRUE(zdr_COMMIT3args(&d.zdr, &a));
  EXPECT_EQ(a.offset, 0u);
  EXPECT_EQ(a.count, 0u);
  EXPECT_EQ(zdr_getpos(&d.zdr), d.buf.size());
  zdr_destroy(&d.zdr);
}

TEST(NfsWire, Nfs4CompoundCallsDecodeWithLibnfs) {
  std::vector<std::byte> data(10, std::byte{0x5a});
  struct Case {
    Proc proc;
    nfs_opnum4 op;
  };
  for (Case c : {Case{Proc::kRead, OP_READ}, Case{Proc::kWrite, OP_WRITE}, Case{Proc::kCommit, OP_COMMIT}}) {
    Decoded d;
    decode_call(record(9, 4, c.proc, 4096, c.proc == Proc::kWrite ? 10 : 512, 1, data), &d);
    EXPECT_EQ(d.msg.body.cbody.vers, 4u);
    EXPECT_EQ(d.msg.body.cbody.proc, 1u);  // COMPOUND
    COMPOUND4args a{};
    ASSERT_TRUE(zdr_COMPOUND4args(&d.zdr, &a));
    EXPECT_EQ(a.minorversion, 0u);
    ASSERT_EQ(a.argarray.argarray_len, 2u);
    // libnfs 4.0 lays the array out 4-byte aligned: copy it out (UBSan).
    nfs_argop4 ops[2];
    std::memcpy(static_cast<void*>(ops), a.argarray.argarray_val, sizeof ops);
    EXPECT_EQ(ops[0].argop, OP_PUTFH);
    const auto& fh = ops[0].nfs_argop4_u.opputfh.object;
    ASSERT_EQ(fh.nfs_fh4_len, kFh.size());
    EXPECT_EQ(std::memcmp(fh.nfs_fh4_val, kFh.data(), kFh.size()), 0);
    const nfs_argop4& op = ops[1];
    EXPECT_EQ(op.argop, c.op);
    if (c.proc == Proc::kRead) {
      EXPECT_EQ(op.nfs_argop4_u.opread.offset, 4096u);
      EXPECT_EQ(op.nfs_argop4_u.opread.count, 512u);
      EXPECT_EQ(op.nfs_argop4_u.opread.stateid.seqid, 0u);
    } else if (c.proc == Proc::kWrite) {
      EXPECT_EQ(op.nfs_argop4_u.opwrite.offset, 4096u);
      EXPECT_EQ(op.nfs_argop4_u.opwrite.stable, DATA_SYNC4);
      ASSERT_EQ(op.nfs_argop4_u.opwrite.data.data_len, 10u);
      EXPECT_EQ(std::memcmp(op.nfs_argop4_u.opwrite.data.data_val, data.data(), 10), 0);
    } else {
      EXPECT_EQ(op.nfs_argop4_u.opcommit.offset, 4096u);
      EXPECT_EQ(op.nfs_argop4_u.opcommit.count, 512u);
    }
    EXPECT_EQ(zdr_getpos(&d.zdr), d.buf.size());
    zdr_destroy(&d.zdr);
  }
}

// A reply body (no record marker) encoded by libnfs: the accepted-reply
// header, then `proc` applied to `res`.
template <typename Res>
std::vector<std::byte> libnfs_reply(uint32_t xid, bool_t (*proc)(ZDR*, Res*), Res* res) {
  std::vector<std::byte> b(1 << 20);
  ZDR z;
  zdrmem_create(&z, reinterpret_cast<caddr_t>(b.data()), static_cast<uint32_t>(b.size()), ZDR_ENCODE);
  rpc_msg m{};
  m.xid = xid;
  m.direction = REPLY;
  m.body.rbody.stat = MSG_ACCEPTED;
  m.body.rbody.reply.areply.verf = _null_auth;
  m.body.rbody.reply.areply.stat = SUCCESS;
  m.body.rbody.reply.areply.reply_data.results.where = reinterpret_cast<caddr_t>(res);
  m.body.rbody.reply.areply.reply_data.results.proc = reinterpret_cast<zdrproc_t>(proc);
  EXPECT_TRUE(zdr_replymsg(nullptr, &z, &m));
  b.resize(zdr_getpos(&z));
  zdr_destroy(&z);
  return b;
}

// Decodes `body`, and checks that every shorter prefix is refused.
Reply decode_all(const std::vector<std::byte>& body, int version, Proc proc) {
  Reply r;
  std::string why;
  EXPECT_TRUE(decode_reply(body, version, proc, &r, &why)) << why;
  for (size_t n = 0; n < body.size(); ++n) {
    Reply t;
    std::vector<std::byte> cut(body.begin(), body.begin() + static_cast<long>(n));  // its own allocation: ASan sees overreads
    EXPECT_FALSE(decode_reply(cut, version, proc, &t, &why)) << "prefix of " << n << " bytes accepted";
  }
  return r;
}

fattr3 some_attrs() {
  fattr3 a{};
  a.type = NF3REG;
  a.size = 1 << 30;
  a.fileid = 42;
  return a;
}

TEST(NfsWire, Nfs3ReadReplyFromLibnfs) {
  std::vector<char> data(5000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 13);
  READ3res res{};
  res.status = NFS3_OK;
  res.READ3res_u.resok.file_attributes.attributes_follow = 1;
  res.READ3res_u.resok.file_attributes.post_op_attr_u.attributes = some_attrs();
  res.READ3res_u.resok.count = 5000;
  res.READ3res_u.resok.eof = 1;
  res.READ3res_u.resok.data.data_len = 5000;
  res.READ3res_u.resok.data.data_val = data.data();
  auto body = libnfs_reply(0xabc0001, zdr_READ3res, &res);
  uint32_t xid = 0;
  ASSERT_TRUE(peek_xid(body, &xid));
  EXPECT_EQ(xid, 0xabc0001u);
  Reply r = decode_all(body, 3, Proc::kRead);
  EXPECT_EQ(r.rpc_errno, 0);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.count, 5000u);
  EXPECT_TRUE(r.eof);
  ASSERT_NE(r.data, nullptr);
  EXPECT_EQ(std::memcmp(r.data, data.data(), 5000), 0);
}

TEST(NfsWire, Nfs3WriteAndCommitRepliesFromLibnfs) {
  WRITE3res w{};
  w.status = NFS3_OK;
  w.WRITE3res_u.resok.file_wcc.before.attributes_follow = 1;
  w.WRITE3res_u.resok.file_wcc.after.attributes_follow = 1;
  w.WRITE3res_u.resok.file_wcc.after.post_op_attr_u.attributes = some_attrs();
  w.WRITE3res_u.resok.count = 4096;
  w.WRITE3res_u.resok.committed = DATA_SYNC;
  std::memcpy(w.WRITE3res_u.resok.verf, "VERIFIER", 8);
  Reply r = decode_all(libnfs_reply(1, zdr_WRITE3res, &w), 3, Proc::kWrite);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.count, 4096u);
  EXPECT_EQ(r.committed, 1);
  uint64_t v;
  std::memcpy(&v, "VERIFIER", 8);
  EXPECT_EQ(r.verf, v);

  COMMIT3res c{};
  c.status = NFS3_OK;
  std::memcpy(c.COMMIT3res_u.resok.verf, "VERIFIER", 8);
  r = decode_all(libnfs_reply(2, zdr_COMMIT3res, &c), 3, Proc::kCommit);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.verf, v);

  // A failed WRITE: status and its wcc_data, no verifier.
  WRITE3res f{};
  f.status = NFS3ERR_NOSPC;
  f.WRITE3res_u.resfail.file_wcc.after.attributes_follow = 1;
  f.WRITE3res_u.resfail.file_wcc.after.post_op_attr_u.attributes = some_attrs();
  r = decode_all(libnfs_reply(3, zdr_WRITE3res, &f), 3, Proc::kWrite);
  EXPECT_EQ(r.status, NFS3ERR_NOSPC);
}

TEST(NfsWire, Nfs4RepliesFromLibnfs) {
  std::vector<char> data(100, 'x');
  nfs_resop4 ops[2]{};
  ops[0].resop = OP_PUTFH;
  ops[0].nfs_resop4_u.opputfh.status = NFS4_OK;
  ops[1].resop = OP_READ;
  ops[1].nfs_resop4_u.opread.status = NFS4_OK;
  ops[1].nfs_resop4_u.opread.READ4res_u.resok4.eof = 0;
  ops[1].nfs_resop4_u.opread.READ4res_u.resok4.data.data_len = 100;
  ops[1].nfs_resop4_u.opread.READ4res_u.resok4.data.data_val = data.data();
  COMPOUND4res res{};
  res.status = NFS4_OK;
  res.resarray.resarray_len = 2;
  res.resarray.resarray_val = ops;
  const auto body = libnfs_reply(4, zdr_COMPOUND4res, &res);  // r.data points into it
  Reply r = decode_all(body, 4, Proc::kRead);
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.count, 100u);
  EXPECT_FALSE(r.eof);
  EXPECT_EQ(std::memcmp(r.data, data.data(), 100), 0);

  ops[1] = {};
  ops[1].resop = OP_WRITE;
  ops[1].nfs_resop4_u.opwrite.status = NFS4_OK;
  ops[1].nfs_resop4_u.opwrite.WRITE4res_u.resok4.count = 100;
  ops[1].nfs_resop4_u.opwrite.WRITE4res_u.resok4.committed = UNSTABLE4;
  std::memcpy(ops[1].nfs_resop4_u.opwrite.WRITE4res_u.resok4.writeverf, "ABCDEFGH", 8);
  r = decode_all(libnfs_reply(5, zdr_COMPOUND4res, &res), 4, Proc::kWrite);
  EXPECT_EQ(r.count, 100u);
  EXPECT_EQ(r.committed, 0);
  uint64_t v;
  std::memcpy(&v, "ABCDEFGH", 8);
  EXPECT_EQ(r.verf, v);

  // PUTFH fails: one result, its status.
  ops[0].nfs_resop4_u.opputfh.status = NFS4ERR_STALE;
  res.status = NFS4ERR_STALE;
  res.resarray.resarray_len = 1;
  r = decode_all(libnfs_reply(6, zdr_COMPOUND4res, &res), 4, Proc::kCommit);
  EXPECT_EQ(r.status, NFS4ERR_STALE);

  // A reply for another operation than the call's is garbage.
  ops[0].nfs_resop4_u.opputfh.status = NFS4_OK;
  res.status = NFS4_OK;
  res.resarray.resarray_len = 2;
  Reply t;
  std::string why;
  EXPECT_FALSE(decode_reply(libnfs_reply(7, zdr_COMPOUND4res, &res), 4, Proc::kRead, &t, &why));
}

TEST(NfsWire, RpcRejectionsAreErrorsNotGarbage) {
  // MSG_DENIED, AUTH_ERROR (AUTH_TOOWEAK), written by hand: libnfs's
  // encoder only writes accepted replies.
  std::vector<std::byte> b(20);
  uint32_t words[5] = {htonl(8), htonl(1), htonl(1), htonl(1), htonl(5)};
  std::memcpy(b.data(), words, sizeof words);
  Reply r;
  std::string why;
  ASSERT_TRUE(decode_reply(b, 3, Proc::kWrite, &r, &why)) << why;
  EXPECT_EQ(r.rpc_errno, EACCES);
  EXPECT_NE(r.rpc_why.find("credentials"), std::string::npos) << r.rpc_why;

  // Accepted, but GARBAGE_ARGS.
  std::vector<std::byte> g(24);
  uint32_t gw[6] = {htonl(9), htonl(1), htonl(0), htonl(0), htonl(0), htonl(4)};
  std::memcpy(g.data(), gw, sizeof gw);
  r = {};
  ASSERT_TRUE(decode_reply(g, 3, Proc::kRead, &r, &why)) << why;
  EXPECT_EQ(r.rpc_errno, EIO);
  EXPECT_NE(r.rpc_why.find("garbage arguments"), std::string::npos) << r.rpc_why;

  // A CALL where a reply should be.
  gw[1] = htonl(0);
  std::memcpy(g.data(), gw, sizeof gw);
  EXPECT_FALSE(decode_reply(g, 3, Proc::kRead, &r, &why));
}

TEST(NfsWire, ReadReplyWithLengthPastTheRecordIsRefused) {
  std::vector<char> data(16, 'a');
  READ3res res{};
  res.status = NFS3_OK;
  res.READ3res_u.resok.count = 16;
  res.READ3res_u.resok.data.data_len = 16;
  res.READ3res_u.resok.data.data_val = data.data();
  auto body = libnfs_reply(1, zdr_READ3res, &res);
  // The data length word sits 16 + 4 bytes before the end: make it huge.
  uint32_t huge = htonl(0x7ffffff0u);
  std::memcpy(body.data() + body.size() - 20, &huge, 4);
  Reply r;
  std::string why;
  EXPECT_FALSE(decode_reply(body, 3, Proc::kRead, &r, &why));
}

}  // namespace
}  // namespace strata::nfswire
