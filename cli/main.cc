// faultline: post-copy live-migration engine. `main` only dispatches: each subcommand lives in
// cli/cmd_<name>.cc with the flags it alone takes; shared flags and helpers in cli/common.cc.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "cli/common.h"

namespace {

constexpr char kUsage[] =
    "faultline — post-copy live-migration engine (destination side + source page server)\n"
    "\n"
    "Usage:\n"
    "  faultline local  [--kind=memfd|anon|hugetlb|guest_memfd|all] [--size=1G]\n"
    "                   [--guest=seq,random,hot] [--stats_json=FILE]\n"
    "      A self-contained migration on this machine: a source page server (child process)\n"
    "      serves memory filled with a known pattern over loopback TCP; the destination engine\n"
    "      catches userfaultfd faults of a thread guest reading the memory while it arrives,\n"
    "      pulls the rest in the background, then compares every page with the source.\n"
    "  faultline source --listen=HOST:PORT --region=ram=/dev/shm/vm-ram [--token=HEX]\n"
    "      Serve a frozen VM's memory (files or memfds, mapped read-only) to one destination.\n"
    "  faultline dest   --connect=HOST:PORT --token=HEX [--kind=memfd] [--guest=...]\n"
    "      Create destination memory matching the source's regions, run the thread guest on\n"
    "      it while post-copy fills it, verify every page by CRC32C against the source.\n"
    "  faultline serve  --handoff=/run/faultline.sock --connect=HOST:PORT --token=HEX\n"
    "                   [--state_dir=/run/faultline]\n"
    "      Wait for one VMM to hand over its userfaultfd and guest memory (faultline's\n"
    "      hand-off or Firecracker's), then serve its faults from the source page server.\n"
    "  faultline serve  --daemon [--control=/run/faultline/control.sock]\n"
    "                   [--metrics_listen=HOST:PORT] [--allow_uids=...] [--allow_gids=...]\n"
    "      The host daemon: any number of migrations at once, each registered with\n"
    "      `faultline expect`; Prometheus metrics; one JSON line per event on stdout.\n"
    "  faultline expect --id=ID --connect=HOST:PORT --token=HEX [--tls_*] [--bulk_channels=N]\n"
    "      Register a migration with the daemon; prints the hand-off socket of its own.\n"
    "  faultline status [--id=ID] [--json]     how each migration is doing\n"
    "  faultline cancel --id=ID | forget --id=ID\n"
    "      Restart: the page-state map is kept in STATE_DIR/<hash of token>.state; if this\n"
    "      process dies mid-migration, start `serve` again with the same flags and let the\n"
    "      VMM hand over the same uffd again: the new engine adopts the file automatically\n"
    "      and continues (no page lost, none placed twice); the file is removed at the end.\n"
    "  faultline demo   [--size=1G] [--vcpus=1|2] [--dest_ram=memfd|anon|guest_memfd]\n"
    "      The main job: a real KVM guest (reference VMM, /dev/kvm) dirties its memory on a\n"
    "      source VMM, is paused, and resumes at once on a destination VMM whose empty RAM\n"
    "      faultline fills by post-copy over loopback; then every page is verified. Without\n"
    "      /dev/kvm it says why and runs `local` with the thread guest instead (tools/demo.sh\n"
    "      runs a QEMU guest under TCG there).\n"
    "  faultline migrate --domain=NAME --dest_uri=URI [--source_uri=qemu:///system]\n"
    "                   [--migrate_uri=tcp://HOST:PORT] [--handoff=/run/faultline.sock]\n"
    "                   [--pager=true|false] [--stats_json=FILE]\n"
    "      Live-migrate a libvirt domain with post-copy through libvirt's API. With the pager\n"
    "      (default) the domain's QEMU must carry faultline's x-postcopy-external-pager series,\n"
    "      its RAM must be shared memfd/file memory, and on the destination `faultline serve\n"
    "      --handoff=SOCKET` must be waiting, connected to `faultline source` serving the\n"
    "      source QEMU's RAM (qemu-integration/libvirt/README.md). Prints libvirt's events\n"
    "      and job statistics; --pager=false runs QEMU's own post-copy for comparison.\n"
    "\n"
    "Background stream (dest, serve, local): --bulk_channels=N connections (each its own thread\n"
    "  on both sides), --bulk_batch_kib per request, --bulk_window requests in flight each.\n"
    "\n"
    "TLS (source, dest, serve, demo; default: plain TCP):\n"
    "  source --tls_cert=PEM --tls_key=PEM      serve TLS 1.3 only\n"
    "  dest   --tls_ca=PEM                      connect with TLS, verify the source's certificate\n"
    "         [--tls_server_name=NAME]          and its name (default: the host/IP of --connect)\n"
    "  source --tls_ca=PEM + dest --tls_cert=PEM --tls_key=PEM   mutual TLS: destinations need a\n"
    "                                           certificate signed by the source's CA\n"
    "  The token handshake runs inside TLS unchanged. Making certificates: README.md, \"TLS\".\n"
    "\n"
    "RDMA (source, dest, serve): --transport=rdma on both sides [--rdma_device=NAME]. Pages move\n"
    "  by one-sided RDMA READ; HELLO/WELCOME, VERIFY and DONE stay on the TCP (or TLS) control\n"
    "  connection. Without an RDMA device it says so and lists the devices found.\n"
    "\n"
    "Requires userfaultfd (root, or vm.unprivileged_userfaultfd=1). hugetlb needs reserved\n"
    "2 MiB pages: echo N > /proc/sys/vm/nr_hugepages.\n";

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  // Accept --stats-json as well as --stats_json: dashes in a flag's name become underscores.
  std::vector<std::string> normalized(argv, argv + argc);
  std::vector<char*> raw;
  for (std::string& a : normalized) {
    if (a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      for (size_t i = 2; i < end; ++i) {
        if (a[i] == '-') a[i] = '_';
      }
    }
    raw.push_back(a.data());
  }
  std::vector<char*> args = absl::ParseCommandLine(static_cast<int>(raw.size()), raw.data());
  if (args.size() < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string cmd = args[1];
  if (cmd == "local") return faultline::RunLocal();
  if (cmd == "source") return faultline::RunSource();
  if (cmd == "dest") return faultline::RunDest();
  if (cmd == "serve") return faultline::RunServe();
  if (cmd == "demo") return faultline::RunDemo();
  if (cmd == "migrate") return faultline::RunMigrate();
  if (cmd == "expect") return faultline::RunExpect();
  if (cmd == "status") return faultline::RunStatus();
  if (cmd == "cancel" || cmd == "forget") return faultline::RunCancelOrForget(cmd);
  std::fprintf(stderr, "faultline: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
  return 2;
}
