#include "qemu-integration/libvirt/domain_xml.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace faultline {
namespace {

using ::testing::HasSubstr;

std::string Domain(const std::string& inner) {
  return absl::StrCat("<domain type='kvm'><name>vm1</name><memory unit='MiB'>256</memory>", inner,
                      "<devices/></domain>");
}

int Count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(CheckPagerRamTest, AcceptsSharedFdBackedRam) {
  EXPECT_TRUE(CheckPagerRam(Domain("<memoryBacking><source type='memfd'/>"
                                   "<access mode='shared'/></memoryBacking>"))
                  .ok());
  EXPECT_TRUE(CheckPagerRam(Domain("<memoryBacking><source type='file'/>"
                                   "<access mode='shared'/></memoryBacking>"))
                  .ok());
  EXPECT_TRUE(CheckPagerRam(Domain("<memoryBacking><hugepages/>"
                                   "<access mode='shared'/></memoryBacking>"))
                  .ok());
  // Shared per NUMA cell instead of globally.
  EXPECT_TRUE(CheckPagerRam(Domain("<memoryBacking><source type='memfd'/></memoryBacking>"
                                   "<cpu><numa><cell id='0' memory='128' unit='MiB' "
                                   "memAccess='shared'/><cell id='1' memory='128' unit='MiB' "
                                   "memAccess='shared'/></numa></cpu>"))
                  .ok());
}

TEST(CheckPagerRamTest, RefusesAnonymousOrPrivateRamAndSaysWhatToAdd) {
  absl::Status s = CheckPagerRam(Domain(""));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("domain 'vm1'"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("anonymous"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("<source type='memfd'/>"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("<access mode='shared'/>"));

  s = CheckPagerRam(Domain("<memoryBacking><source type='memfd'/></memoryBacking>"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("private (not shared)"));
  s =
      CheckPagerRam(Domain("<memoryBacking><source type='anonymous'/>"
                           "<access mode='shared'/></memoryBacking>"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("'anonymous'-backed"));
  // One private NUMA cell is enough to refuse.
  s =
      CheckPagerRam(Domain("<memoryBacking><source type='memfd'/></memoryBacking>"
                           "<cpu><numa><cell id='0' memory='128' memAccess='shared'/>"
                           "<cell id='1' memory='128'/></numa></cpu>"));
  EXPECT_FALSE(s.ok());
}

// QEMU 10.2's x-ignore-shared skips only named files: a memfd would be migrated in the stream
// and the pager get nothing, so it is refused there, with the XML to use.
TEST(CheckPagerRamTest, FileOnlyRefusesAMemfdButTakesAFileOrHugepages) {
  const std::string shared = "<access mode='shared'/>";
  absl::Status s = CheckPagerRam(
      Domain("<memoryBacking><source type='memfd'/>" + shared + "</memoryBacking>"), true);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("<source type='file'/>"));
  EXPECT_TRUE(
      CheckPagerRam(Domain("<memoryBacking><source type='memfd'/>" + shared + "</memoryBacking>"))
          .ok());
  EXPECT_TRUE(
      CheckPagerRam(Domain("<memoryBacking><source type='file'/>" + shared + "</memoryBacking>"),
                    true)
          .ok());
  EXPECT_TRUE(
      CheckPagerRam(Domain("<memoryBacking><hugepages/>" + shared + "</memoryBacking>"), true)
          .ok());
}

TEST(CheckPagerRamTest, RefusesWhatIsNotADomain) {
  EXPECT_EQ(CheckPagerRam("<domain").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(CheckPagerRam("<network/>").message()), HasSubstr("not a libvirt"));
}

TEST(AddPagerCommandlineTest, AddsTheGlobalsInTheQemuNamespace) {
  absl::StatusOr<std::string> x = AddPagerCommandline(Domain(""), "/run/faultline.sock");
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_THAT(*x, HasSubstr("xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\""));
  EXPECT_THAT(*x, HasSubstr("<qemu:commandline>"));
  for (const std::string& g : PagerGlobals("/run/faultline.sock")) {
    EXPECT_THAT(*x, HasSubstr(absl::StrCat("<qemu:arg value=\"", g, "\"/>")));
  }
  EXPECT_EQ(Count(*x, "<qemu:arg value=\"-global\"/>"), 4);
  EXPECT_THAT(*x, HasSubstr("<name>vm1</name>"));  // the rest is kept
}

TEST(AddPagerCommandlineTest, KeepsOtherArgumentsAndReplacesEarlierPagerOnes) {
  const std::string in =
      "<domain type='kvm' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'>"
      "<name>vm1</name><q:commandline><q:arg value='-L'/><q:arg value='/usr/share/qemu'/>"
      "</q:commandline></domain>";
  absl::StatusOr<std::string> once = AddPagerCommandline(in, "/run/a.sock");
  ASSERT_TRUE(once.ok()) << once.status();
  absl::StatusOr<std::string> twice = AddPagerCommandline(*once, "/run/b.sock");
  ASSERT_TRUE(twice.ok()) << twice.status();
  EXPECT_THAT(*twice, HasSubstr("<q:arg value=\"-L\"/>"));
  EXPECT_THAT(*twice, HasSubstr("/usr/share/qemu"));
  EXPECT_EQ(Count(*twice, "<q:commandline>"), 1);
  EXPECT_EQ(Count(*twice, "value=\"-global\""), 4);
  EXPECT_THAT(*twice, HasSubstr("x-postcopy-external-pager-socket=/run/b.sock"));
  EXPECT_FALSE(absl::StrContains(*twice, "/run/a.sock"));
}

// QEMU 10.2's series gates the switchover on the pager's ack: its destination needs
// switchover-ack (and return-path, which that needs) too; 7.2 does not know them. A domain
// migrated with them once and then by a 7.2 pair must lose them again.
TEST(AddPagerCommandlineTest, AddsSwitchoverAckOnlyWhenAskedAndDropsItAgain) {
  absl::StatusOr<std::string> x =
      AddPagerCommandline(Domain(""), "/run/faultline.sock", /*switchover_ack=*/true);
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_THAT(*x, HasSubstr("<qemu:arg value=\"migration.x-switchover-ack=on\"/>"));
  EXPECT_THAT(*x, HasSubstr("<qemu:arg value=\"migration.x-return-path=on\"/>"));
  EXPECT_EQ(Count(*x, "<qemu:arg value=\"-global\"/>"), 6);
  absl::StatusOr<std::string> again = AddPagerCommandline(*x, "/run/faultline.sock");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(absl::StrContains(*again, "switchover-ack"));
  EXPECT_FALSE(absl::StrContains(*again, "return-path"));
  EXPECT_EQ(Count(*again, "<qemu:arg value=\"-global\"/>"), 4);
}

TEST(AddPagerCommandlineTest, RefusesARelativeSocketPath) {
  EXPECT_EQ(AddPagerCommandline(Domain(""), "faultline.sock").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AddPagerCommandline(Domain(""), "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace faultline
