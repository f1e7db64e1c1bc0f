// The two things faultline needs from a libvirt domain's XML, without talking to libvirt.
//
//  * CheckPagerRam: the guest's RAM must be shared and fd-backed (memfd, a file, or hugetlbfs),
//    because QEMU's x-ignore-shared leaves exactly those blocks out of the migration stream and
//    faultline's page server on the source reads them through the fd. Anonymous or private RAM
//    is refused with the XML to add.
//  * AddPagerCommandline: the destination XML for a migration through the pager. libvirt 9.0
//    sets only the migration capabilities it knows, on the destination QEMU it starts itself,
//    and gives no window to send a monitor command before `migrate-incoming`; so the
//    destination gets them as `-global migration.*` properties in <qemu:commandline>
//    (x-postcopy-ram, x-ignore-shared, x-postcopy-external-pager, and the pager's socket;
//    with switchover_ack — QEMU 10.2 and its series, whose pager gates the switchover through
//    switchover-ack — also x-return-path and x-switchover-ack, which QEMU 7.2 does not know).
//    Existing <qemu:commandline> arguments are kept; earlier pager arguments are replaced.
#ifndef FAULTLINE_QEMU_INTEGRATION_LIBVIRT_DOMAIN_XML_H_
#define FAULTLINE_QEMU_INTEGRATION_LIBVIRT_DOMAIN_XML_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace faultline {

// The -global values AddPagerCommandline adds, in order (each after a "-global" argument).
std::vector<std::string> PagerGlobals(const std::string& pager_socket, bool switchover_ack = false);

// file_only (QEMU 10.2 and its series): x-ignore-shared there skips only named files, so a
// memfd is refused too.
absl::Status CheckPagerRam(const std::string& domain_xml, bool file_only = false);

absl::StatusOr<std::string> AddPagerCommandline(const std::string& domain_xml,
                                                const std::string& pager_socket,
                                                bool switchover_ack = false);

}  // namespace faultline

#endif  // FAULTLINE_QEMU_INTEGRATION_LIBVIRT_DOMAIN_XML_H_
