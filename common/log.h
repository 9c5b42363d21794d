/*
 * Structured logging: one logfmt line per event on stderr,
 *   ts=2026-11-30T15:00:00.123Z level=info comp=broker msg="site joined" site=a
 * Values of keys that name secrets (token, secret, password, key material, see
 * mer_log_key_is_secret) are always written as [redacted], so a careless call
 * cannot leak them; callers that log a token's public part use
 * mer_redact_token().
 */
#ifndef MERIDIAN_LOG_H
#define MERIDIAN_LOG_H

#include <stddef.h>
#include <stdio.h>

enum mer_log_level {
	MER_LOG_DEBUG = 0,
	MER_LOG_INFO = 1,
	MER_LOG_WARN = 2,
	MER_LOG_ERROR = 3
};

/* Only events at or above the level are written. Default: info. */
void mer_log_set_level(enum mer_log_level level);
enum mer_log_level mer_log_get_level(void);
/* "debug", "info", "warn", "error" -> level; MER_EINVAL otherwise. */
int mer_log_level_parse(const char *s, enum mer_log_level *out);
/* Where lines go (default stderr); NULL restores stderr. For tests. */
void mer_log_set_output(FILE *f);
/* The comp= field of every line ("broker", "agent"); NULL for none. The
 * string must outlive all logging. */
void mer_log_set_component(const char *name);

/*
 * Writes one event. fmt is a space-separated list of key=value pairs whose
 * values may be printf conversions (%s %d %u %ld %lu %lld %llu %zu %zd %x
 * %g %f %.3f ...): "site=%s gpus=%d". Each value is quoted and escaped as
 * logfmt requires; a NULL %s prints as "(null)". fmt may be NULL.
 */
void mer_log(enum mer_log_level level, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define mer_debug(...) mer_log(MER_LOG_DEBUG, __VA_ARGS__)
#define mer_info(...) mer_log(MER_LOG_INFO, __VA_ARGS__)
#define mer_warn(...) mer_log(MER_LOG_WARN, __VA_ARGS__)
#define mer_error(...) mer_log(MER_LOG_ERROR, __VA_ARGS__)

/* True for keys whose values are always redacted: token, secret, password,
 * passwd, authorization, private_key, key_material, and any key ending in
 * _token, _secret or _password. */
int mer_log_key_is_secret(const char *key, size_t len);

/*
 * The loggable form of a join or API token "<id>.<secret>": "<id>.[redacted]"
 * (or "[redacted]" when the token has no id part). Always NUL-terminates out
 * when n > 0.
 */
void mer_redact_token(const char *token, char *out, size_t n);

#endif
