#include "qemu-integration/libvirt/migrate_compat.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

using ::testing::HasSubstr;

TEST(MigrateCompat, VersionString) {
  EXPECT_EQ(LibvirtVersionString(9000000), "9.0.0");
  EXPECT_EQ(LibvirtVersionString(10010002), "10.10.2");
}

TEST(MigrateCompat, Libvirt90RefusesQemu11WithTheCauseAndTheRemedy) {
  const absl::Status s = CheckMigrateCompat(9000000, {11, 1, 1});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("libvirt 9.0.0"));
  EXPECT_THAT(s.message(), HasSubstr("'detach'"));
  EXPECT_THAT(s.message(), HasSubstr("QEMU 11.0 removed"));
  EXPECT_THAT(s.message(), HasSubstr("QEMU 11.1.1"));
  EXPECT_THAT(s.message(), HasSubstr("build_qemu.sh --version=10.2"));
  // 9.0.x point releases too, and any QEMU from 11.0 on.
  EXPECT_FALSE(CheckMigrateCompat(9000005, {11, 0, 0}).ok());
  EXPECT_FALSE(CheckMigrateCompat(8000000, {12, 0, 0}).ok());
}

TEST(MigrateCompat, OlderQemuOrNewerLibvirtPass) {
  EXPECT_TRUE(CheckMigrateCompat(9000000, {10, 2, 2}).ok());
  EXPECT_TRUE(CheckMigrateCompat(9000000, {7, 2, 22}).ok());
  // Not seen here: not refused up front (DetachHint explains it if it fails the same way).
  EXPECT_TRUE(CheckMigrateCompat(9001000, {11, 1, 1}).ok());
}

TEST(MigrateCompat, DetachHintOnlyForThatError) {
  const std::string e =
      "internal error: unable to execute QEMU command 'migrate': Parameter 'detach' is "
      "unexpected";
  EXPECT_THAT(DetachHint(e, 10000000), HasSubstr("libvirt 10.0.0 passes the argument 'detach'"));
  EXPECT_THAT(DetachHint(e, 10000000), HasSubstr("build_qemu.sh --version=10.2"));
  EXPECT_EQ(DetachHint("Unable to write to socket: Bad file descriptor", 9000000), "");
}

}  // namespace
}  // namespace faultline
