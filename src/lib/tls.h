/* tls: OpenSSL 3 contexts for kale's servers and clients, and the self-signed
 * certificate made on first start. No mail knowledge. */
#ifndef KALE_TLS_H
#define KALE_TLS_H

#include <stddef.h>
#include <openssl/ssl.h>

/* Server context from the PEM files cert (chain, leaf first) and key.
 * If BOTH files are absent, first generates a self-signed pair (EC P-256,
 * CN and SAN DNS = cn, valid 10 years): parent folders made 0755, key
 * written 0600, cert 0644, one "tls.selfsigned" log event. If exactly one
 * is absent that is an error. TLS 1.2 minimum, no compression, no
 * renegotiation, SSL_MODE_RELEASE_BUFFERS, server session cache off
 * (stateless tickets stay on). cn NULL or empty means "localhost".
 * Returns the context, or NULL with a malloc'd *error_r. */
SSL_CTX *tls_server_ctx(const char *cert, const char *key, const char *cn, char **error_r);

/* Client context: TLS 1.2 minimum, no compression, no renegotiation, the
 * system's default verify paths loaded. The verify mode is left to the
 * caller (OpenSSL's default: SSL_VERIFY_NONE).
 * Returns the context, or NULL with a malloc'd *error_r. */
SSL_CTX *tls_client_ctx(char **error_r);

/* Drains OpenSSL's per-thread error queue into buf as "a; b; c" (errors
 * that do not fit are dropped); returns buf ("" when empty). */
const char *tls_error_string(char *buf, size_t cap);

#endif
