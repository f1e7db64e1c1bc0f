#include "qemu-integration/vmm/serial_console.h"

#include <string>

#include "gtest/gtest.h"

namespace faultline {
namespace {

void Feed(SerialConsole& c, int cpu, const std::string& s, std::vector<ConsoleLine>* out) {
  c.Feed(cpu, reinterpret_cast<const uint8_t*>(s.data()), s.size(), out);
}

TEST(SerialConsoleTest, SplitsLinesPerCpu) {
  SerialConsole c;
  std::vector<ConsoleLine> done;
  Feed(c, 0, "FLT cpu=0 ph", &done);
  Feed(c, 1, "FLT cpu=1 ph", &done);
  Feed(c, 0, "ase=seq\r\nFLT", &done);
  Feed(c, 1, "ase=hot\n", &done);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].cpu, 0);
  EXPECT_EQ(done[0].text, "FLT cpu=0 phase=seq");
  EXPECT_EQ(done[1].cpu, 1);
  EXPECT_EQ(done[1].text, "FLT cpu=1 phase=hot");
  EXPECT_EQ(c.Pending(0), "FLT");
  EXPECT_EQ(c.Pending(1), "");
  ASSERT_NE(c.Find("FLT cpu=1"), nullptr);
  EXPECT_EQ(c.Find("FLT cpu=1")->text, "FLT cpu=1 phase=hot");
  EXPECT_EQ(c.Find("FLT done"), nullptr);
}

TEST(SerialConsoleTest, CutsOverlongLines) {
  SerialConsole c;
  std::vector<ConsoleLine> done;
  Feed(c, 0, std::string(SerialConsole::kMaxLine + 10, 'x') + "\n", &done);
  ASSERT_EQ(done.size(), 2u);
  EXPECT_EQ(done[0].text.size(), SerialConsole::kMaxLine);
  EXPECT_EQ(done[1].text, std::string(10, 'x'));
}

}  // namespace
}  // namespace faultline
