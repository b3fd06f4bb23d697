#include "ipc/protocol.h"

namespace dipc::ipc {

namespace {
void put_perm(Encoder& e, const Perm& p) {
  e.i32(p.key);
  e.u32(p.uid);
  e.u32(p.gid);
  e.u32(p.cuid);
  e.u32(p.cgid);
  e.u16(p.mode);
  e.u16(p.seq);
}
void get_perm(Decoder& d, Perm& p) {
  p.key = d.i32();
  p.uid = d.u32();
  p.gid = d.u32();
  p.cuid = d.u32();
  p.cgid = d.u32();
  p.mode = d.u16();
  p.seq = d.u16();
}
void put_u16s(Encoder& e, const std::vector<uint16_t>& v) {
  e.u32(static_cast<uint32_t>(v.size()));
  for (uint16_t x : v) e.u16(x);
}
void get_u16s(Decoder& d, std::vector<uint16_t>& v) {
  uint32_t n = d.count(kMaxSems, 2);
  v.resize(n);
  for (auto& x : v) x = d.u16();
}
}  // namespace

void HelloReq::encode(Encoder& e) const { e.u32(version); }
bool HelloReq::decode(Decoder& d) {
  version = d.u32();
  return d.ok();
}
void HelloResp::encode(Encoder& e) const {
  e.u32(version);
  e.u16(node);
}
bool HelloResp::decode(Decoder& d) {
  version = d.u32();
  node = d.u16();
  return d.ok();
}

void GetReq::encode(Encoder& e) const {
  e.i32(key);
  e.i32(nsems);
  e.i32(flg);
  e.u64(size);
}
bool GetReq::decode(Decoder& d) {
  key = d.i32();
  nsems = d.i32();
  flg = d.i32();
  size = d.u64();
  return d.ok();
}

void ShmAtReq::encode(Encoder& e) const {
  e.i32(id);
  e.i32(flg);
}
bool ShmAtReq::decode(Decoder& d) {
  id = d.i32();
  flg = d.i32();
  return d.ok();
}
void ShmAtResp::encode(Encoder& e) const {
  e.u64(size);
  e.u64(mapped);
  e.u64(block);
  e.u64(huge_page);
}
bool ShmAtResp::decode(Decoder& d) {
  size = d.u64();
  mapped = d.u64();
  block = d.u64();
  huge_page = d.u64();
  return d.ok();
}
void ShmAttachReq::encode(Encoder& e) const {
  e.i32(id);
  e.u64(addr);
  e.u64(len);
  e.i32(flg);
  e.u64(view_ino);
  e.u64(utok);
}
bool ShmAttachReq::decode(Decoder& d) {
  id = d.i32();
  addr = d.u64();
  len = d.u64();
  flg = d.i32();
  view_ino = d.u64();
  utok = d.u64();
  return d.ok();
}
void ShmDtResp::encode(Encoder& e) const { e.u8(removed); }
bool ShmDtResp::decode(Decoder& d) {
  removed = d.u8();
  return d.ok();
}
void ShmCtlReq::encode(Encoder& e) const {
  e.i32(id);
  e.i32(cmd);
  e.u32(uid);
  e.u32(gid);
  e.u16(mode);
}
bool ShmCtlReq::decode(Decoder& d) {
  id = d.i32();
  cmd = d.i32();
  uid = d.u32();
  gid = d.u32();
  mode = d.u16();
  return d.ok();
}
void ShmCtlResp::encode(Encoder& e) const {
  put_perm(e, stat.perm);
  e.u64(stat.segsz);
  e.i64(stat.atime);
  e.i64(stat.dtime);
  e.i64(stat.ctime);
  e.i32(stat.cpid);
  e.i32(stat.lpid);
  e.u64(stat.nattch);
}
bool ShmCtlResp::decode(Decoder& d) {
  get_perm(d, stat.perm);
  stat.segsz = d.u64();
  stat.atime = d.i64();
  stat.dtime = d.i64();
  stat.ctime = d.i64();
  stat.cpid = d.i32();
  stat.lpid = d.i32();
  stat.nattch = d.u64();
  return d.ok();
}
void ShmDestroyMsg::encode(Encoder& e) const { e.i32(id); }
bool ShmDestroyMsg::decode(Decoder& d) {
  id = d.i32();
  return d.ok();
}
void IdResp::encode(Encoder& e) const { e.i32(id); }
bool IdResp::decode(Decoder& d) {
  id = d.i32();
  return d.ok();
}

void SemOpReq::encode(Encoder& e) const {
  e.i32(id);
  e.u32(static_cast<uint32_t>(sops.size()));
  for (const auto& s : sops) {
    e.u16(s.num);
    e.u16(static_cast<uint16_t>(s.op));
    e.u16(static_cast<uint16_t>(s.flg));
  }
}
bool SemOpReq::decode(Decoder& d) {
  id = d.i32();
  uint32_t n = d.count(kMaxSops, 6);
  sops.resize(n);
  for (auto& s : sops) {
    s.num = d.u16();
    s.op = static_cast<int16_t>(d.u16());
    s.flg = static_cast<int16_t>(d.u16());
  }
  return d.ok();
}

void SemCtlReq::encode(Encoder& e) const {
  e.i32(id);
  e.i32(semnum);
  e.i32(cmd);
  e.i32(val);
  put_u16s(e, vals);
  e.u32(uid);
  e.u32(gid);
  e.u16(mode);
}
bool SemCtlReq::decode(Decoder& d) {
  id = d.i32();
  semnum = d.i32();
  cmd = d.i32();
  val = d.i32();
  get_u16s(d, vals);
  uid = d.u32();
  gid = d.u32();
  mode = d.u16();
  return d.ok();
}
void SemCtlResp::encode(Encoder& e) const {
  e.i32(ret);
  put_u16s(e, vals);
  put_perm(e, stat.perm);
  e.i64(stat.otime);
  e.i64(stat.ctime);
  e.u32(stat.nsems);
}
bool SemCtlResp::decode(Decoder& d) {
  ret = d.i32();
  get_u16s(d, vals);
  get_perm(d, stat.perm);
  stat.otime = d.i64();
  stat.ctime = d.i64();
  stat.nsems = d.u32();
  return d.ok();
}

void MsgSndReq::encode(Encoder& e) const {
  e.i32(id);
  e.i64(mtype);
  e.bytes(text);
  e.i32(flg);
}
bool MsgSndReq::decode(Decoder& d) {
  id = d.i32();
  mtype = d.i64();
  ByteView t = d.bytes(kMaxMsgText);
  text.assign(t.begin(), t.end());
  flg = d.i32();
  return d.ok();
}
void MsgRcvReq::encode(Encoder& e) const {
  e.i32(id);
  e.u64(maxsize);
  e.i64(msgtyp);
  e.i32(flg);
}
bool MsgRcvReq::decode(Decoder& d) {
  id = d.i32();
  maxsize = d.u64();
  msgtyp = d.i64();
  flg = d.i32();
  return d.ok();
}
void MsgRcvResp::encode(Encoder& e) const {
  e.i64(mtype);
  e.bytes(text);
}
bool MsgRcvResp::decode(Decoder& d) {
  mtype = d.i64();
  ByteView t = d.bytes(kMaxMsgText);
  text.assign(t.begin(), t.end());
  return d.ok();
}

void MsgCtlReq::encode(Encoder& e) const {
  e.i32(id);
  e.i32(cmd);
  e.u32(uid);
  e.u32(gid);
  e.u16(mode);
  e.u64(qbytes);
}
bool MsgCtlReq::decode(Decoder& d) {
  id = d.i32();
  cmd = d.i32();
  uid = d.u32();
  gid = d.u32();
  mode = d.u16();
  qbytes = d.u64();
  return d.ok();
}
void MsgCtlResp::encode(Encoder& e) const {
  put_perm(e, stat.perm);
  e.i64(stat.stime);
  e.i64(stat.rtime);
  e.i64(stat.ctime);
  e.u64(stat.cbytes);
  e.u64(stat.qnum);
  e.u64(stat.qbytes);
  e.i32(stat.lspid);
  e.i32(stat.lrpid);
}
bool MsgCtlResp::decode(Decoder& d) {
  get_perm(d, stat.perm);
  stat.stime = d.i64();
  stat.rtime = d.i64();
  stat.ctime = d.i64();
  stat.cbytes = d.u64();
  stat.qnum = d.u64();
  stat.qbytes = d.u64();
  stat.lspid = d.i32();
  stat.lrpid = d.i32();
  return d.ok();
}

void AdminEnableReq::encode(Encoder& e) const { e.boolean(enabled); }
bool AdminEnableReq::decode(Decoder& d) {
  enabled = d.boolean();
  return d.ok();
}
void AdminStatusResp::encode(Encoder& e) const {
  e.str(text);
  e.u32(peers_total);
  e.u32(peers_up);
  e.boolean(enabled);
}
bool AdminStatusResp::decode(Decoder& d) {
  text = d.str(1u << 20);
  peers_total = d.u32();
  peers_up = d.u32();
  enabled = d.boolean();
  return d.ok();
}

void ObjListResp::encode(Encoder& e) const {
  e.u32(static_cast<uint32_t>(entries.size()));
  for (const ObjEntry& o : entries) {
    e.u8(static_cast<uint8_t>(o.type));
    e.i32(o.id);
    e.i32(o.key);
    e.u32(o.uid);
    e.u32(o.gid);
    e.u32(o.cuid);
    e.u32(o.cgid);
    e.u16(o.mode);
    e.u16(o.home);
    e.u64(o.a);
    e.u64(o.b);
  }
  put_u16s(e, unreachable);
}
bool ObjListResp::decode(Decoder& d) {
  constexpr size_t kEntrySize = 1 + 4 * 6 + 2 * 2 + 8 * 2;
  uint32_t n = d.count(kMaxObjEntries, kEntrySize);
  entries.clear();
  entries.resize(n);
  for (ObjEntry& o : entries) {
    uint8_t t = d.u8();
    if (t < 1 || t > 3) d.fail();
    if (!d.ok()) return false;
    o.type = static_cast<ObjType>(t);
    o.id = d.i32();
    o.key = d.i32();
    o.uid = d.u32();
    o.gid = d.u32();
    o.cuid = d.u32();
    o.cgid = d.u32();
    o.mode = d.u16();
    o.home = d.u16();
    o.a = d.u64();
    o.b = d.u64();
  }
  uint32_t m = d.count(kMaxNodes, 2);
  unreachable.resize(m);
  for (auto& x : unreachable) x = d.u16();
  return d.ok();
}

void HomeHeader::encode(Encoder& e) const {
  e.u32(creds.uid);
  e.u32(creds.gid);
  e.u32(static_cast<uint32_t>(creds.groups.size()));
  for (uint32_t g : creds.groups) e.u32(g);
  e.i32(creds.pid);
  e.u16(creds.node);
  e.u8(static_cast<uint8_t>((creds.cap_ipc_owner ? 1 : 0) | (creds.cap_sys_admin ? 2 : 0) |
                            (creds.cap_sys_resource ? 4 : 0) | (creds.cap_ipc_lock ? 8 : 0)));
  e.u64(token);
}
bool HomeHeader::decode(Decoder& d) {
  creds.uid = d.u32();
  creds.gid = d.u32();
  uint32_t n = d.count(65536, 4);
  creds.groups.resize(n);
  for (auto& g : creds.groups) g = d.u32();
  creds.pid = d.i32();
  creds.node = d.u16();
  uint8_t caps = d.u8();
  if (caps > 15) d.fail();
  creds.cap_ipc_owner = caps & 1;
  creds.cap_sys_admin = caps & 2;
  creds.cap_sys_resource = caps & 4;
  creds.cap_ipc_lock = caps & 8;
  token = d.u64();
  return d.ok();
}

void KeyReq::encode(Encoder& e) const {
  e.u8(static_cast<uint8_t>(type));
  e.i32(key);
  e.i32(flg);
  e.i32(id);
}
bool KeyReq::decode(Decoder& d) {
  uint8_t t = d.u8();
  if (t < 1 || t > 3) d.fail();
  type = static_cast<ObjType>(t);
  key = d.i32();
  flg = d.i32();
  id = d.i32();
  return d.ok();
}
void KeyResp::encode(Encoder& e) const {
  e.u8(static_cast<uint8_t>(verdict));
  e.i32(id);
}
bool KeyResp::decode(Decoder& d) {
  uint8_t v = d.u8();
  if (v < 1 || v > 2) d.fail();
  verdict = static_cast<KeyVerdict>(v);
  id = d.i32();
  return d.ok();
}

void OpenReq::encode(Encoder& e) const {
  e.u8(static_cast<uint8_t>(type));
  e.i32(id);
  e.i32(nsems);
  e.i32(flg);
  e.u64(size);
}
bool OpenReq::decode(Decoder& d) {
  uint8_t t = d.u8();
  if (t < 1 || t > 3) d.fail();
  type = static_cast<ObjType>(t);
  id = d.i32();
  nsems = d.i32();
  flg = d.i32();
  size = d.u64();
  return d.ok();
}

void ProcExitMsg::encode(Encoder& e) const { e.i32(pid); }
bool ProcExitMsg::decode(Decoder& d) {
  pid = d.i32();
  return d.ok();
}
void IpcInfoReq::encode(Encoder& e) const { e.u8(static_cast<uint8_t>(type)); }
bool IpcInfoReq::decode(Decoder& d) {
  uint8_t t = d.u8();
  if (t < 1 || t > 3) d.fail();
  type = static_cast<ObjType>(t);
  return d.ok();
}

void IpcInfoResp::encode(Encoder& e) const {
  e.i32(max_index);
  e.u32(count);
  e.u64(a);
  e.u64(b);
  e.u64(ns_ino);
  e.u32(static_cast<uint32_t>(hidden.size()));
  for (int32_t k : hidden) e.i32(k);
  e.u64(hidden_a);
  e.u64(hidden_b);
}
bool IpcInfoResp::decode(Decoder& d) {
  max_index = d.i32();
  count = d.u32();
  a = d.u64();
  b = d.u64();
  ns_ino = d.u64();
  uint32_t n = d.count(kMaxObjEntries, 4);
  hidden.clear();
  hidden.resize(n);
  for (auto& k : hidden) k = d.i32();
  hidden_a = d.u64();
  hidden_b = d.u64();
  return d.ok();
}

void SemKernelResp::encode(Encoder& e) const {
  e.i32(kid);
  e.u64(ns_ino);
  e.i32(daemon_pid);
}
bool SemKernelResp::decode(Decoder& d) {
  kid = d.i32();
  ns_ino = d.u64();
  daemon_pid = d.i32();
  return d.ok();
}

void IpcStatReq::encode(Encoder& e) const {
  e.u8(static_cast<uint8_t>(type));
  e.i32(index);
  e.boolean(any);
}
bool IpcStatReq::decode(Decoder& d) {
  uint8_t t = d.u8();
  if (t < 1 || t > 3) d.fail();
  type = static_cast<ObjType>(t);
  index = d.i32();
  any = d.boolean();
  return d.ok() && index >= 0;
}

void HomeCancelMsg::encode(Encoder& e) const { e.u64(token); }
bool HomeCancelMsg::decode(Decoder& d) {
  token = d.u64();
  return d.ok();
}

}  // namespace dipc::ipc
