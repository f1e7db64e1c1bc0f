#include "tests/testing/http_get.h"

#include <unistd.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/unique_fd.h"
#include "transport/socket.h"

namespace faultline {

std::string HttpGet(int port, const std::string& path) {
  absl::StatusOr<UniqueFd> fd = ConnectTcp(absl::StrCat("127.0.0.1:", port), absl::Seconds(5));
  if (!fd.ok()) return "";
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: x\r\n\r\n");
  if (!WriteAll(fd->get(), req.data(), req.size()).ok()) return "";
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd->get(), buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  return out;
}

std::string HttpBody(const std::string& response) {
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

}  // namespace faultline
