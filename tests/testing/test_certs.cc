#include "tests/testing/test_certs.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"

namespace faultline {

struct TestCa::Key {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  ~Key() {
    X509_free(cert);
    EVP_PKEY_free(key);
  }
};

namespace {

std::string OpenSslErrors() {
  std::string out;
  char buf[256];
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out;
}

absl::Status Fail(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", OpenSslErrors()));
}

absl::Status AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) return Fail(absl::StrCat("extension ", value));
  const int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  return ok ? absl::OkStatus() : Fail("X509_add_ext");
}

// A certificate for `key` named `cn`, signed by `issuer_key` (self-signed when issuer is null).
absl::StatusOr<X509*> MakeCert(EVP_PKEY* key, const std::string& cn, X509* issuer,
                               EVP_PKEY* issuer_key, long serial, bool ca, const std::string& san,
                               TestCa::Validity v) {
  X509* x = X509_new();
  if (!x) return Fail("X509_new");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), absl::ToInt64Seconds(v.not_before));
  X509_gmtime_adj(X509_getm_notAfter(x), absl::ToInt64Seconds(v.not_after));
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("faultline test"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
  X509* signer = issuer ? issuer : x;
  absl::Status s = AddExt(x, signer, NID_subject_key_identifier, "hash");
  if (s.ok()) s = AddExt(x, signer, NID_authority_key_identifier, "keyid:always");
  if (s.ok() && ca) s = AddExt(x, signer, NID_basic_constraints, "critical,CA:TRUE");
  if (s.ok() && ca) s = AddExt(x, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  if (s.ok() && !ca) s = AddExt(x, signer, NID_basic_constraints, "CA:FALSE");
  if (s.ok() && !ca) s = AddExt(x, signer, NID_ext_key_usage, "serverAuth,clientAuth");
  if (s.ok() && !san.empty()) s = AddExt(x, signer, NID_subject_alt_name, san);
  if (s.ok() && X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) == 0) {
    s = Fail("X509_sign");
  }
  if (!s.ok()) {
    X509_free(x);
    return s;
  }
  return x;
}

absl::Status WritePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  chmod(path.c_str(), 0600);
  const int ok = cert ? PEM_write_X509(f, cert)
                      : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  return ok ? absl::OkStatus() : Fail(absl::StrCat("writing ", path));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TestCa>> TestCa::Create(const std::string& name, Validity validity) {
  std::unique_ptr<TestCa> ca(new TestCa());
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/tls-", name, "-XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) return absl::InternalError(absl::StrCat("mkdtemp ", templ));
  ca->dir_ = buf.data();
  ca->key_ = std::make_unique<Key>();
  ca->key_->key = EVP_EC_gen("P-256");
  if (!ca->key_->key) return Fail("EVP_EC_gen");
  absl::StatusOr<X509*> cert =
      MakeCert(ca->key_->key, name + " CA", nullptr, nullptr, ca->serial_++, true, "", validity);
  if (!cert.ok()) return cert.status();
  ca->key_->cert = *cert;
  ca->ca_cert_ = ca->dir_ + "/ca.crt";
  if (absl::Status s = WritePem(ca->ca_cert_, ca->key_->cert, nullptr); !s.ok()) return s;
  return ca;
}

TestCa::~TestCa() {
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

absl::StatusOr<TlsFiles> TestCa::Issue(const std::string& name, const std::string& san,
                                       Validity validity) {
  Key leaf;
  leaf.key = EVP_EC_gen("P-256");
  if (!leaf.key) return Fail("EVP_EC_gen");
  absl::StatusOr<X509*> cert =
      MakeCert(leaf.key, name, key_->cert, key_->key, serial_++, false, san, validity);
  if (!cert.ok()) return cert.status();
  leaf.cert = *cert;
  TlsFiles f;
  f.cert = absl::StrCat(dir_, "/", name, ".crt");
  f.key = absl::StrCat(dir_, "/", name, ".key");
  f.ca = ca_cert_;
  if (absl::Status s = WritePem(f.cert, leaf.cert, nullptr); !s.ok()) return s;
  if (absl::Status s = WritePem(f.key, nullptr, leaf.key); !s.ok()) return s;
  return f;
}

}  // namespace faultline
