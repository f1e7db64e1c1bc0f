#include "qemu-integration/vmm/vcpu_state.h"

#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/crc32c.h"
#include "qemu-integration/vmm/kvm_vm.h"

namespace faultline {
namespace {

constexpr char kMagic[8] = {'F', 'L', 'T', 'V', 'C', 'P', 'U', '\0'};
constexpr size_t kHeaderSize = sizeof(kMagic) + 4 + 4;

enum Tag : uint32_t {
  kTagRegs = 1,
  kTagSregs = 2,
  kTagFpu = 3,
  kTagMsrs = 4,
  kTagEvents = 5,
  kTagLapic = 6,
};

template <typename T>
void Put(std::string* out, const T& v) {
  static_assert(std::is_trivially_copyable<T>::value, "POD only");
  out->append(reinterpret_cast<const char*>(&v), sizeof(v));
}

template <typename T>
void PutSection(std::string* out, uint32_t tag, const T& v) {
  Put(out, tag);
  Put(out, static_cast<uint32_t>(sizeof(T)));
  Put(out, v);
}

// Bounds-checked reads from a byte string.
class Reader {
 public:
  explicit Reader(absl::string_view b) : b_(b) {}
  size_t left() const { return b_.size() - pos_; }
  template <typename T>
  bool Get(T* v) {
    if (left() < sizeof(T)) return false;
    memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool Take(size_t n, absl::string_view* out) {
    if (left() < n) return false;
    *out = b_.substr(pos_, n);
    pos_ += n;
    return true;
  }

 private:
  absl::string_view b_;
  size_t pos_ = 0;
};

absl::Status Bad(const std::string& why) {
  return absl::InvalidArgumentError("bad serialized vCPU state: " + why);
}

template <typename T>
absl::Status FixedSection(const char* name, absl::string_view body, T* out) {
  if (body.size() != sizeof(T)) {
    return Bad(absl::StrFormat("%s section is %u bytes, want %u", name, body.size(), sizeof(T)));
  }
  memcpy(out, body.data(), sizeof(T));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VcpuState> VcpuState::Save(const KvmVm& vm, const KvmVcpu& vcpu) {
  VcpuState s;
  absl::Status st = vcpu.GetRegs(&s.regs);
  if (st.ok()) st = vcpu.GetSregs(&s.sregs);
  if (st.ok()) st = vcpu.GetFpu(&s.fpu);
  if (st.ok()) st = vcpu.GetMsrs(vm.migratable_msrs(), &s.msrs);
  if (st.ok()) st = vcpu.GetVcpuEvents(&s.events);
  if (st.ok() && vm.has_irqchip()) {
    s.lapic.emplace();
    st = vcpu.GetLapic(&*s.lapic);
  }
  if (!st.ok()) return st;
  return s;
}

absl::Status VcpuState::Restore(KvmVcpu& vcpu) const {
  // Special registers (CR0/CR4/EFER, segments) first: they decide how the rest is taken.
  absl::Status st = vcpu.SetSregs(sregs);
  if (st.ok()) st = vcpu.SetRegs(regs);
  if (st.ok()) st = vcpu.SetFpu(fpu);
  if (st.ok()) st = vcpu.SetMsrs(msrs);
  if (st.ok() && lapic.has_value()) st = vcpu.SetLapic(*lapic);
  if (st.ok()) {
    struct kvm_vcpu_events e = events;
    e.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    st = vcpu.SetVcpuEvents(e);
  }
  return st;
}

const struct kvm_msr_entry* VcpuState::FindMsr(uint32_t index) const {
  for (const struct kvm_msr_entry& m : msrs) {
    if (m.index == index) return &m;
  }
  return nullptr;
}

std::string VcpuState::Serialize() const {
  std::string body;
  PutSection(&body, kTagRegs, regs);
  PutSection(&body, kTagSregs, sregs);
  PutSection(&body, kTagFpu, fpu);
  Put(&body, uint32_t{kTagMsrs});
  Put(&body, static_cast<uint32_t>(8 + msrs.size() * 16));
  Put(&body, static_cast<uint32_t>(msrs.size()));
  Put(&body, uint32_t{0});
  for (const struct kvm_msr_entry& m : msrs) {
    Put(&body, m.index);
    Put(&body, uint32_t{0});
    Put(&body, static_cast<uint64_t>(m.data));
  }
  PutSection(&body, kTagEvents, events);
  if (lapic.has_value()) PutSection(&body, kTagLapic, *lapic);

  std::string out(kMagic, sizeof(kMagic));
  Put(&out, kVersion);
  Put(&out, static_cast<uint32_t>(body.size()));
  out += body;
  Put(&out, Crc32c(out.data(), out.size()));
  return out;
}

absl::StatusOr<VcpuState> VcpuState::Deserialize(absl::string_view bytes) {
  if (bytes.size() < kHeaderSize + 4) {
    return Bad(absl::StrCat("only ", bytes.size(), " bytes"));
  }
  if (memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) return Bad("no FLTVCPU magic");
  Reader hdr(bytes.substr(sizeof(kMagic)));
  uint32_t version = 0, body_len = 0;
  hdr.Get(&version);
  hdr.Get(&body_len);
  if (version != kVersion) {
    return Bad(absl::StrCat("version ", version, ", this build reads ", kVersion));
  }
  if (uint64_t{body_len} + kHeaderSize + 4 != bytes.size()) {
    return Bad(absl::StrCat("body length ", body_len, " disagrees with the ", bytes.size(),
                            " bytes given (truncated or padded)"));
  }
  uint32_t crc;
  memcpy(&crc, bytes.data() + bytes.size() - 4, 4);
  if (Crc32c(bytes.data(), bytes.size() - 4) != crc) return Bad("checksum mismatch");

  VcpuState s;
  uint32_t seen = 0;
  Reader r(bytes.substr(kHeaderSize, body_len));
  while (r.left() > 0) {
    uint32_t tag = 0, len = 0;
    absl::string_view sec;
    if (!r.Get(&tag) || !r.Get(&len) || !r.Take(len, &sec)) return Bad("truncated section");
    if (tag < kTagRegs || tag > kTagLapic) return Bad(absl::StrCat("unknown section tag ", tag));
    if (seen & (1u << tag)) return Bad(absl::StrCat("section ", tag, " appears twice"));
    seen |= 1u << tag;
    absl::Status st;
    switch (tag) {
      case kTagRegs: st = FixedSection("regs", sec, &s.regs); break;
      case kTagSregs: st = FixedSection("sregs", sec, &s.sregs); break;
      case kTagFpu: st = FixedSection("fpu", sec, &s.fpu); break;
      case kTagEvents: st = FixedSection("events", sec, &s.events); break;
      case kTagLapic:
        s.lapic.emplace();
        st = FixedSection("lapic", sec, &*s.lapic);
        break;
      case kTagMsrs: {
        Reader m(sec);
        uint32_t count = 0, zero = 0;
        if (!m.Get(&count) || !m.Get(&zero)) return Bad("truncated MSR section");
        if (count > kMaxMsrs) return Bad(absl::StrCat(count, " MSRs (at most ", kMaxMsrs, ")"));
        if (sec.size() != 8 + uint64_t{count} * 16) {
          return Bad(absl::StrCat("MSR section of ", sec.size(), " bytes for ", count, " MSRs"));
        }
        s.msrs.resize(count);
        for (struct kvm_msr_entry& e : s.msrs) {
          uint32_t pad = 0;
          uint64_t value = 0;
          m.Get(&e.index);
          m.Get(&pad);
          m.Get(&value);
          e.reserved = 0;
          e.data = value;
        }
        break;
      }
    }
    if (!st.ok()) return st;
  }
  for (uint32_t tag : {kTagRegs, kTagSregs, kTagFpu, kTagMsrs, kTagEvents}) {
    if (!(seen & (1u << tag))) return Bad(absl::StrCat("section ", tag, " missing"));
  }
  return s;
}

std::string SerializeVcpuStates(const std::vector<VcpuState>& states) {
  std::string out;
  Put(&out, static_cast<uint32_t>(states.size()));
  for (const VcpuState& s : states) {
    std::string one = s.Serialize();
    Put(&out, static_cast<uint32_t>(one.size()));
    out += one;
  }
  return out;
}

absl::StatusOr<std::vector<VcpuState>> DeserializeVcpuStates(absl::string_view bytes) {
  Reader r(bytes);
  uint32_t count = 0;
  if (!r.Get(&count)) return Bad("no vCPU count");
  if (count == 0 || count > 1024) return Bad(absl::StrCat("vCPU count ", count));
  std::vector<VcpuState> out;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t len = 0;
    absl::string_view one;
    if (!r.Get(&len) || !r.Take(len, &one)) {
      return Bad(absl::StrCat("vCPU ", i, " of ", count, " truncated"));
    }
    absl::StatusOr<VcpuState> s = VcpuState::Deserialize(one);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("vCPU ", i, ": ", s.status().message()));
    }
    out.push_back(std::move(*s));
  }
  if (r.left() != 0) return Bad(absl::StrCat(r.left(), " trailing bytes"));
  return out;
}

}  // namespace faultline
