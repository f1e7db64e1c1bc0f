#include "qemu-integration/libvirt/domain_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstring>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace faultline {
namespace {

constexpr char kQemuNs[] = "http://libvirt.org/schemas/domain/qemu/1.0";
constexpr char kAddXml[] =
    "  <memoryBacking>\n"
    "    <source type='memfd'/>\n"
    "    <access mode='shared'/>\n"
    "  </memoryBacking>";

struct DocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using Doc = std::unique_ptr<xmlDoc, DocFree>;

absl::StatusOr<Doc> Parse(const std::string& xml) {
  Doc doc(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml", nullptr,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  if (doc == nullptr) return absl::InvalidArgumentError("the domain XML does not parse");
  xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr || std::strcmp(reinterpret_cast<const char*>(root->name), "domain") != 0) {
    return absl::InvalidArgumentError("the XML is not a libvirt <domain>");
  }
  return doc;
}

bool Named(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE &&
         std::strcmp(reinterpret_cast<const char*>(n->name), name) == 0;
}

xmlNode* Child(xmlNode* parent, const char* name) {
  if (parent == nullptr) return nullptr;
  for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
    if (Named(c, name)) return c;
  }
  return nullptr;
}

std::string Attr(xmlNode* n, const char* name) {
  if (n == nullptr) return "";
  xmlChar* v = xmlGetProp(n, reinterpret_cast<const xmlChar*>(name));
  if (v == nullptr) return "";
  std::string s(reinterpret_cast<const char*>(v));
  xmlFree(v);
  return s;
}

const xmlChar* X(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

}  // namespace

std::vector<std::string> PagerGlobals(const std::string& pager_socket, bool switchover_ack) {
  std::vector<std::string> g = {"migration.x-postcopy-ram=on", "migration.x-ignore-shared=on"};
  if (switchover_ack) {
    g.push_back("migration.x-return-path=on");
    g.push_back("migration.x-switchover-ack=on");
  }
  g.push_back("migration.x-postcopy-external-pager=on");
  g.push_back(absl::StrCat("migration.x-postcopy-external-pager-socket=", pager_socket));
  return g;
}

namespace {

// One of the values PagerGlobals adds, with any socket: what an earlier migration left.
bool IsPagerGlobal(const std::string& value) {
  if (absl::StartsWith(value, "migration.x-postcopy-external-pager")) return true;
  for (const std::string& g : PagerGlobals("", /*switchover_ack=*/true)) {
    if (value == g) return true;
  }
  return false;
}

}  // namespace

absl::Status CheckPagerRam(const std::string& domain_xml, bool file_only) {
  absl::StatusOr<Doc> doc = Parse(domain_xml);
  if (!doc.ok()) return doc.status();
  xmlNode* root = xmlDocGetRootElement(doc->get());
  const std::string name = [&] {
    xmlNode* n = Child(root, "name");
    if (n == nullptr) return std::string("?");
    xmlChar* c = xmlNodeGetContent(n);
    std::string s(reinterpret_cast<const char*>(c));
    xmlFree(c);
    return s;
  }();
  xmlNode* backing = Child(root, "memoryBacking");
  // Shared: <memoryBacking><access mode='shared'/>, or every NUMA cell memAccess='shared'.
  bool shared = Attr(Child(backing, "access"), "mode") == "shared";
  xmlNode* numa = Child(Child(root, "cpu"), "numa");
  if (!shared && numa != nullptr) {
    bool all = true, any = false;
    for (xmlNode* c = numa->children; c != nullptr; c = c->next) {
      if (!Named(c, "cell")) continue;
      any = true;
      all = all && Attr(c, "memAccess") == "shared";
    }
    shared = any && all;
  }
  // fd-backed: memfd, file, or hugepages (hugetlbfs files). Without <source> and without
  // <hugepages>, QEMU allocates anonymous memory, which nobody else can read.
  const std::string type = Attr(Child(backing, "source"), "type");
  const bool fd_backed =
      type == "memfd" || type == "file" || Child(backing, "hugepages") != nullptr;
  if (shared && fd_backed && file_only && type == "memfd") {
    return absl::FailedPreconditionError(absl::StrCat(
        "domain '", name,
        "': its RAM is a memfd; QEMU 10.2's x-ignore-shared leaves only shared RAM that is a "
        "named file (memory-backend-file) out of the migration stream, so its pager would get "
        "no RAM to fill. Use <source type='file'/> with <access mode='shared'/> (libvirt's "
        "memory_backing_dir on tmpfs) or hugepages in <memoryBacking>, then restart the "
        "domain"));
  }
  if (shared && fd_backed) return absl::OkStatus();
  std::string what;
  if (!fd_backed) what = type.empty() ? "anonymous" : absl::StrCat("'", type, "'-backed");
  if (!shared) what = absl::StrCat(what, what.empty() ? "" : ", ", "private (not shared)");
  return absl::FailedPreconditionError(absl::StrCat(
      "domain '", name, "': its RAM is ", what,
      "; faultline needs shared, fd-backed guest RAM (QEMU's x-ignore-shared leaves it out "
      "of the migration stream, and the source page server reads it through the fd). Add to "
      "the domain XML (virsh edit), then restart the domain:\n",
      kAddXml));
}

absl::StatusOr<std::string> AddPagerCommandline(const std::string& domain_xml,
                                                const std::string& pager_socket,
                                                bool switchover_ack) {
  if (pager_socket.empty() || pager_socket[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("the pager socket must be an absolute path on the destination host, got '",
                     pager_socket, "'"));
  }
  absl::StatusOr<Doc> doc = Parse(domain_xml);
  if (!doc.ok()) return doc.status();
  xmlNode* root = xmlDocGetRootElement(doc->get());
  xmlNs* ns = xmlSearchNsByHref(doc->get(), root, X(kQemuNs));
  if (ns == nullptr) ns = xmlNewNs(root, X(kQemuNs), X("qemu"));
  if (ns == nullptr) return absl::InternalError("cannot add the qemu XML namespace");
  xmlNode* cmdline = nullptr;
  for (xmlNode* c = root->children; c != nullptr; c = c->next) {
    if (Named(c, "commandline") && c->ns != nullptr &&
        std::strcmp(reinterpret_cast<const char*>(c->ns->href), kQemuNs) == 0) {
      cmdline = c;
    }
  }
  if (cmdline == nullptr) cmdline = xmlNewChild(root, ns, X("commandline"), nullptr);
  // Drop earlier pager arguments ("-global" followed by one of ours), so the XML of a domain
  // migrated through faultline before can be used again.
  for (xmlNode* c = cmdline->children; c != nullptr;) {
    xmlNode* next = c->next;
    while (next != nullptr && next->type != XML_ELEMENT_NODE) next = next->next;
    if (Named(c, "arg") && Attr(c, "value") == "-global" && next != nullptr && Named(next, "arg") &&
        IsPagerGlobal(Attr(next, "value"))) {
      xmlNode* after = next->next;
      xmlUnlinkNode(c);
      xmlFreeNode(c);
      xmlUnlinkNode(next);
      xmlFreeNode(next);
      c = after;
      continue;
    }
    c = c->next;
  }
  for (const std::string& g : PagerGlobals(pager_socket, switchover_ack)) {
    xmlNode* a = xmlNewChild(cmdline, ns, X("arg"), nullptr);
    xmlNewProp(a, X("value"), X("-global"));
    a = xmlNewChild(cmdline, ns, X("arg"), nullptr);
    xmlNewProp(a, X("value"), X(g.c_str()));
  }
  xmlChar* out = nullptr;
  int len = 0;
  xmlDocDumpFormatMemory(doc->get(), &out, &len, 1);
  if (out == nullptr) return absl::InternalError("cannot serialize the domain XML");
  std::string s(reinterpret_cast<const char*>(out), len);
  xmlFree(out);
  return s;
}

}  // namespace faultline
