// The pure half of the hand-off: JSON → HandoffRequest, every field type-checked and every
// rule of handoff.h enforced. No fds, no syscalls; nlohmann::json is used without exceptions
// (anything unexpected it still throws becomes InternalError rather than escaping).
#include <algorithm>
#include <climits>
#include <exception>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "qemu-integration/handoff/handoff.h"

namespace faultline {
namespace {

using json = nlohmann::json;

// What a JSON value is, for "must be X, got Y" messages.
const char* Describe(const json& v) {
  if (v.is_number_float()) return "a fraction or a number beyond 64 bits";
  if (v.is_number_unsigned()) return "an unsigned integer";
  if (v.is_number_integer()) return "a negative integer";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_null()) return "null";
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  return "an unsupported value";
}

absl::Status Invalid(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

const json* Find(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

absl::Status Missing(absl::string_view where, const char* key) {
  return Invalid(where, absl::StrCat("missing \"", key, "\""));
}

absl::Status WrongType(absl::string_view where, const char* key, const char* want,
                       const json& got) {
  return Invalid(where, absl::StrCat("\"", key, "\" must be ", want, ", got ", Describe(got)));
}

absl::Status GetU64(const json& obj, absl::string_view where, const char* key, uint64_t* out) {
  const json* v = Find(obj, key);
  if (v == nullptr) return Missing(where, key);
  if (!v->is_number_unsigned()) return WrongType(where, key, "an unsigned integer", *v);
  *out = v->get<uint64_t>();
  return absl::OkStatus();
}

// A signed integer that fits an int (fd indices; -1 means none).
absl::Status GetInt(const json& obj, absl::string_view where, const char* key, int* out) {
  const json* v = Find(obj, key);
  if (v == nullptr) return Missing(where, key);
  if (!v->is_number_integer()) return WrongType(where, key, "an integer", *v);
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(INT_MAX)) {
      return Invalid(where, absl::StrCat("\"", key, "\" ", u, " is out of range"));
    }
    *out = static_cast<int>(u);
    return absl::OkStatus();
  }
  int64_t s = v->get<int64_t>();
  if (s < INT_MIN) return Invalid(where, absl::StrCat("\"", key, "\" ", s, " is out of range"));
  *out = static_cast<int>(s);
  return absl::OkStatus();
}

absl::Status GetString(const json& obj, absl::string_view where, const char* key,
                       std::string* out) {
  const json* v = Find(obj, key);
  if (v == nullptr) return Missing(where, key);
  if (!v->is_string()) return WrongType(where, key, "a string", *v);
  *out = v->get<std::string>();
  return absl::OkStatus();
}

absl::Status GetBool(const json& obj, absl::string_view where, const char* key, bool* out) {
  const json* v = Find(obj, key);
  if (v == nullptr) return Missing(where, key);
  if (!v->is_boolean()) return WrongType(where, key, "a boolean", *v);
  *out = v->get<bool>();
  return absl::OkStatus();
}

// Names travel back in error messages: no control characters (the parser already guaranteed
// valid UTF-8).
bool PrintableName(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// A migration id: 1..kMaxHandoffMigrationId bytes of ASCII letters, digits and -_.: (safe in
// file names, log lines and error messages).
bool MigrationIdByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == ':';
}

absl::Status CheckMigrationId(absl::string_view where, const std::string& id) {
  if (id.empty()) return Invalid(where, "\"migration\" is empty (omit it or give an id)");
  if (id.size() > kMaxHandoffMigrationId) {
    return Invalid(where, absl::StrCat("\"migration\" is ", id.size(), " bytes, more than ",
                                       kMaxHandoffMigrationId));
  }
  for (unsigned char c : id) {
    if (!MigrationIdByte(c)) {
      return Invalid(where,
                     absl::StrCat("\"migration\" contains byte 0x", absl::Hex(c, absl::kZeroPad2),
                                  "; only letters, digits, '-', '_', '.' and ':' are allowed"));
    }
  }
  return absl::OkStatus();
}

bool IsPowerOfTwo(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

absl::Status CheckPageSize(absl::string_view where, uint64_t page_size) {
  if (!IsPowerOfTwo(page_size) || page_size < 4096 || page_size > kMaxHandoffPageSize) {
    return Invalid(
        where, absl::StrCat("page_size ", page_size, " is not a power of two in [4096, 1 GiB]"));
  }
  return absl::OkStatus();
}

// host_addr, length (> 0) multiples of page_size; nothing wraps.
absl::Status CheckGeometry(absl::string_view where, uint64_t host_addr, uint64_t length,
                           uint64_t page_size, uint64_t offset, bool offset_aligned) {
  if (length == 0) return Invalid(where, "length is 0");
  if (length % page_size != 0) {
    return Invalid(where,
                   absl::StrCat("length ", length, " is not a multiple of page_size ", page_size));
  }
  if (host_addr % page_size != 0) {
    return Invalid(where, absl::StrCat("host_addr 0x", absl::Hex(host_addr),
                                       " is not aligned to page_size ", page_size));
  }
  if (host_addr > UINT64_MAX - length) {
    return Invalid(where, "host_addr + length overflows 64 bits");
  }
  if (offset_aligned && offset % page_size != 0) {
    return Invalid(where,
                   absl::StrCat("offset ", offset, " is not a multiple of page_size ", page_size));
  }
  if (offset > UINT64_MAX - length) return Invalid(where, "offset + length overflows 64 bits");
  return absl::OkStatus();
}

// No two regions share an address in the VMM's address space.
absl::Status CheckNoOverlap(absl::string_view what, const std::vector<HandoffRegion>& regions) {
  std::vector<const HandoffRegion*> sorted;
  sorted.reserve(regions.size());
  for (const HandoffRegion& r : regions) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(), [](const HandoffRegion* a, const HandoffRegion* b) {
    return a->host_addr < b->host_addr;
  });
  for (size_t i = 1; i < sorted.size(); ++i) {
    const HandoffRegion& a = *sorted[i - 1];
    const HandoffRegion& b = *sorted[i];
    if (b.host_addr < a.host_addr + a.length) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": regions \"", a.name, "\" [0x", absl::Hex(a.host_addr), ", 0x",
          absl::Hex(a.host_addr + a.length), ") and \"", b.name, "\" [0x", absl::Hex(b.host_addr),
          ", 0x", absl::Hex(b.host_addr + b.length), ") overlap"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseRegion(const json& r, size_t i, size_t fd_count, HandoffRegion* out) {
  std::string where = absl::StrCat("hello: regions[", i, "]");
  if (!r.is_object()) return Invalid(where, absl::StrCat("must be an object, got ", Describe(r)));
  if (absl::Status s = GetString(r, where, "name", &out->name); !s.ok()) return s;
  if (out->name.empty()) return Invalid(where, "name is empty");
  if (out->name.size() > kMaxHandoffRegionName) {
    return Invalid(where, absl::StrCat("name is ", out->name.size(), " bytes, more than ",
                                       kMaxHandoffRegionName));
  }
  if (!PrintableName(out->name)) return Invalid(where, "name contains control characters");
  where = absl::StrCat(where, " (\"", out->name, "\")");

  uint64_t page_size = 0;
  if (absl::Status s = GetU64(r, where, "host_addr", &out->host_addr); !s.ok()) return s;
  if (absl::Status s = GetU64(r, where, "length", &out->length); !s.ok()) return s;
  if (absl::Status s = GetU64(r, where, "page_size", &page_size); !s.ok()) return s;
  std::string kind;
  if (absl::Status s = GetString(r, where, "kind", &kind); !s.ok()) return s;
  if (absl::Status s = GetInt(r, where, "fd", &out->fd_index); !s.ok()) return s;
  if (absl::Status s = GetU64(r, where, "offset", &out->offset); !s.ok()) return s;

  if (absl::Status s = CheckPageSize(where, page_size); !s.ok()) return s;
  out->page_size = static_cast<uint32_t>(page_size);
  if (absl::Status s = CheckGeometry(where, out->host_addr, out->length, page_size, out->offset,
                                     /*offset_aligned=*/true);
      !s.ok()) {
    return s;
  }
  // The wire carries MemoryKindName's names exactly (no alias: the format does not change).
  const std::optional<MemoryKind> k = MemoryKindFromName(kind);
  if (!k.has_value()) {
    std::string shown = kind.substr(0, 32);
    if (!PrintableName(shown)) shown = "(unprintable)";
    return Invalid(where, absl::StrCat("unknown kind \"", shown,
                                       "\" (want anon, memfd, hugetlb or guest_memfd)"));
  }
  out->kind = *k;
  if (!MemoryKindHasFd(out->kind)) {
    if (out->fd_index != -1) {
      return Invalid(where, absl::StrCat("kind ", MemoryKindName(out->kind),
                                         " has no fd: \"fd\" must be -1, got ", out->fd_index));
    }
  } else {
    if (out->fd_index == -1) {
      return Invalid(where,
                     absl::StrCat("kind ", MemoryKindName(out->kind), " needs an fd, got -1"));
    }
    if (out->fd_index < 0 || static_cast<size_t>(out->fd_index) >= fd_count) {
      return Invalid(where, absl::StrCat("fd index ", out->fd_index, " is out of range (", fd_count,
                                         " fds attached)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<HandoffRequest> ParseHello(absl::string_view text, size_t fd_count) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello is not valid JSON (", text.size(), " bytes)"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("hello must be a JSON object, got ", Describe(j)));
  }
  constexpr absl::string_view kWhere = "hello";
  HandoffRequest req;
  req.format = HandoffFormat::kFaultline;
  std::string type;
  if (absl::Status s = GetString(j, kWhere, "type", &type); !s.ok()) return s;
  if (type != "hello") {
    std::string shown = type.substr(0, 32);
    if (!PrintableName(shown)) shown = "(unprintable)";
    return absl::InvalidArgumentError(
        absl::StrCat("expected a hello message first, got type \"", shown, "\""));
  }
  // The version is checked before the rest, so a peer of another version hears about that.
  uint64_t version = 0;
  if (absl::Status s = GetU64(j, kWhere, "version", &version); !s.ok()) return s;
  if (version < kHandoffVersion || version > kHandoffVersionMax) {
    return absl::FailedPreconditionError(HandoffVersionMismatch(version));
  }
  req.version = static_cast<uint32_t>(version);
  // Version 2: the VMM may hand over before the source's memory is final, and says when
  // faultline may place pages ("listen": after a {"type":"listen"} message; "now": at once).
  if (req.version >= 2 && Find(j, "start") != nullptr) {
    std::string start;
    if (absl::Status s = GetString(j, kWhere, "start", &start); !s.ok()) return s;
    if (start != "listen" && start != "now") {
      return Invalid(kWhere, "\"start\" must be \"listen\" or \"now\"");
    }
    req.start_on_listen = start == "listen";
  }
  // Version 2: the VMM will say "running" when its guest runs here (WaitRunning()).
  if (req.version >= 2 && Find(j, "notify_running") != nullptr) {
    if (absl::Status s = GetBool(j, kWhere, "notify_running", &req.notify_running); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = GetString(j, kWhere, "vmm", &req.vmm); !s.ok()) return s;
  if (req.vmm.empty() || req.vmm.size() > 256 || !PrintableName(req.vmm)) {
    return Invalid(kWhere, "\"vmm\" must be 1..256 printable bytes");
  }
  if (absl::Status s = GetU64(j, kWhere, "uffd_features", &req.uffd_features); !s.ok()) return s;
  if (absl::Status s = GetBool(j, kWhere, "registered", &req.registered); !s.ok()) return s;
  if (Find(j, "resume") != nullptr) {
    if (absl::Status s = GetBool(j, kWhere, "resume", &req.resume); !s.ok()) return s;
  }
  if (req.resume && req.start_on_listen) {
    return Invalid(kWhere,
                   "\"resume\" with \"start\":\"listen\": a resume happens during "
                   "post-copy, whose source memory is final already (\"start\":\"now\")");
  }
  if (Find(j, "migration") != nullptr) {
    if (absl::Status s = GetString(j, kWhere, "migration", &req.migration); !s.ok()) return s;
    if (absl::Status s = CheckMigrationId(kWhere, req.migration); !s.ok()) return s;
  }
  if (absl::Status s = GetInt(j, kWhere, "uffd_fd", &req.uffd_index); !s.ok()) return s;
  if (req.uffd_index < 0 || static_cast<size_t>(req.uffd_index) >= fd_count) {
    return Invalid(kWhere, absl::StrCat("uffd_fd index ", req.uffd_index, " is out of range (",
                                        fd_count, " fds attached)"));
  }

  if (fd_count > kMaxHandoffRegions + 1) {
    return Invalid(kWhere, absl::StrCat(fd_count, " fds attached; at most ", kMaxHandoffRegions + 1,
                                        " can be claimed (one per region, and the uffd)"));
  }
  const json* regions = Find(j, "regions");
  if (regions == nullptr) return Missing(kWhere, "regions");
  if (!regions->is_array()) return WrongType(kWhere, "regions", "an array", *regions);
  if (regions->empty() || regions->size() > kMaxHandoffRegions) {
    return Invalid(kWhere,
                   absl::StrCat("has ", regions->size(), " regions, want 1..", kMaxHandoffRegions));
  }
  std::vector<bool> claimed(fd_count, false);
  claimed[req.uffd_index] = true;
  std::set<std::string> names;
  req.regions.resize(regions->size());
  for (size_t i = 0; i < regions->size(); ++i) {
    HandoffRegion& r = req.regions[i];
    if (absl::Status s = ParseRegion((*regions)[i], i, fd_count, &r); !s.ok()) return s;
    if (!names.insert(r.name).second) {
      return Invalid(kWhere, absl::StrCat("two regions are named \"", r.name, "\""));
    }
    if (r.fd_index >= 0) {
      if (r.fd_index == req.uffd_index) {
        return Invalid(kWhere, absl::StrCat("region \"", r.name, "\" uses fd index ", r.fd_index,
                                            ", which is the uffd"));
      }
      claimed[r.fd_index] = true;  // regions may share one memory fd (e.g. RAM split at 4G)
    }
  }
  if (absl::Status s = CheckNoOverlap(kWhere, req.regions); !s.ok()) return s;
  for (size_t i = 0; i < fd_count; ++i) {
    if (!claimed[i]) {
      return Invalid(kWhere, absl::StrCat("attached fd #", i, " of ", fd_count,
                                          " is claimed by neither a region nor uffd_fd"));
    }
  }
  return req;
}

absl::StatusOr<HandoffRequest> ParseFirecracker(absl::string_view text) {
  constexpr absl::string_view kWhat = "Firecracker hand-off";
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, " is not valid JSON (", text.size(), " bytes)"));
  }
  if (!j.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, " must be a JSON array, got ", Describe(j)));
  }
  if (j.empty() || j.size() > kMaxHandoffRegions) {
    return Invalid(kWhat, absl::StrCat("has ", j.size(), " regions, want 1..", kMaxHandoffRegions));
  }
  HandoffRequest req;
  req.format = HandoffFormat::kFirecracker;
  req.version = 0;
  req.vmm = "firecracker";
  req.registered = true;  // Firecracker registers guest memory before it sends
  req.uffd_index = 0;
  req.regions.resize(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const json& m = j[i];
    HandoffRegion& r = req.regions[i];
    std::string where = absl::StrCat(kWhat, ": [", i, "]");
    if (!m.is_object()) {
      return Invalid(where, absl::StrCat("must be an object, got ", Describe(m)));
    }
    if (absl::Status s = GetU64(m, where, "base_host_virt_addr", &r.host_addr); !s.ok()) return s;
    if (absl::Status s = GetU64(m, where, "size", &r.length); !s.ok()) return s;
    if (absl::Status s = GetU64(m, where, "offset", &r.offset); !s.ok()) return s;
    // Firecracker sends "page_size" (bytes) and, deprecated, "page_size_kib" -- which has
    // always carried bytes too. Older releases send only the latter.
    uint64_t page_size = 0;
    const bool has_bytes = Find(m, "page_size") != nullptr;
    const bool has_kib = Find(m, "page_size_kib") != nullptr;
    if (!has_bytes && !has_kib) return Missing(where, "page_size");
    if (has_bytes) {
      if (absl::Status s = GetU64(m, where, "page_size", &page_size); !s.ok()) return s;
    }
    if (has_kib) {
      uint64_t raw = 0;
      if (absl::Status s = GetU64(m, where, "page_size_kib", &raw); !s.ok()) return s;
      uint64_t normalized = raw >= 4096 ? raw : raw * 1024;
      if (!has_bytes) {
        page_size = normalized;
      } else if (raw != 0 && normalized != page_size) {
        return Invalid(
            where, absl::StrCat("page_size ", page_size, " and page_size_kib ", raw, " disagree"));
      }
    }
    if (absl::Status s = CheckPageSize(where, page_size); !s.ok()) return s;
    r.page_size = static_cast<uint32_t>(page_size);
    // The offset is into Firecracker's snapshot file, which faultline does not map: passed
    // through, only checked not to wrap.
    if (absl::Status s = CheckGeometry(where, r.host_addr, r.length, page_size, r.offset,
                                       /*offset_aligned=*/false);
        !s.ok()) {
      return s;
    }
    r.name = absl::StrCat("fc-", i);
    r.kind = MemoryKind::kAnonymous;
    r.fd_index = -1;
  }
  if (absl::Status s = CheckNoOverlap(kWhat, req.regions); !s.ok()) return s;
  return req;
}

absl::StatusOr<uint32_t> ParseAttach(absl::string_view text, size_t fd_count) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("attach must be a JSON object (", text.size(), " bytes)"));
  }
  constexpr absl::string_view kWhere = "attach";
  std::string type;
  if (absl::Status s = GetString(j, kWhere, "type", &type); !s.ok()) return s;
  if (type != "attach") return Invalid(kWhere, "\"type\" must be \"attach\"");
  uint64_t version = 0;
  if (absl::Status s = GetU64(j, kWhere, "version", &version); !s.ok()) return s;
  if (version > kHandoffVersionMax) {
    return absl::FailedPreconditionError(HandoffVersionMismatch(version));
  }
  if (version < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("attach of version ", version,
                     ": version 1 has no attach (a version 1 VMM sends its hello first); "
                     "faultline speaks versions ",
                     kHandoffVersion, " to ", kHandoffVersionMax));
  }
  if (Find(j, "vmm") != nullptr) {
    std::string vmm;
    if (absl::Status s = GetString(j, kWhere, "vmm", &vmm); !s.ok()) return s;
    if (vmm.empty() || vmm.size() > 256 || !PrintableName(vmm)) {
      return Invalid(kWhere, "\"vmm\" must be 1..256 printable bytes");
    }
  }
  if (fd_count != 0) {
    return Invalid(kWhere, absl::StrCat("carries ", fd_count, " fds; the fds go with the hello"));
  }
  return static_cast<uint32_t>(version);
}

}  // namespace

absl::StatusOr<uint32_t> ParseFaultlineAttach(absl::string_view json, size_t fd_count) {
  try {
    return ParseAttach(json, fd_count);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("attach: unexpected JSON error: ", e.what()));
  }
}

std::string HandoffVersionMismatch(uint64_t version) {
  return absl::StrCat("hand-off protocol version mismatch: the VMM speaks version ", version,
                      ", faultline speaks versions ", kHandoffVersion, " to ", kHandoffVersionMax);
}

const char* HandoffFormatName(HandoffFormat f) {
  switch (f) {
    case HandoffFormat::kFaultline: return "faultline";
    case HandoffFormat::kFirecracker: return "firecracker";
  }
  return "unknown";
}

absl::StatusOr<HandoffRequest> ParseFaultlineHello(absl::string_view json, size_t fd_count) {
  try {
    return ParseHello(json, fd_count);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("hello: unexpected JSON error: ", e.what()));
  }
}

absl::StatusOr<HandoffRequest> ParseFirecrackerMessage(absl::string_view json) {
  try {
    return ParseFirecracker(json);
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("Firecracker hand-off: unexpected JSON error: ", e.what()));
  }
}

}  // namespace faultline
