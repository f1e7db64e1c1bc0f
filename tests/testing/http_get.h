// A plain HTTP/1.0 GET on loopback, for tests that scrape the daemon's /metrics or ask
// Prometheus' API. Not a client: no redirects, no chunking, no keep-alive.
#ifndef FAULTLINE_TESTS_TESTING_HTTP_GET_H_
#define FAULTLINE_TESTS_TESTING_HTTP_GET_H_

#include <string>

namespace faultline {

// The whole response (status line, headers and body) of GET `path` on 127.0.0.1:`port`;
// "" when the connection fails.
std::string HttpGet(int port, const std::string& path);

// The body of a response HttpGet returned; "" when it has none.
std::string HttpBody(const std::string& response);

}  // namespace faultline

#endif  // FAULTLINE_TESTS_TESTING_HTTP_GET_H_
