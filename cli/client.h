/*
 * meridianctl's HTTP client for the broker's REST API (docs/api.yaml):
 * one libcurl handle, the bearer token in a fixed buffer that is wiped on
 * close, an optional CA file for https, JSON answers. It does not know the
 * API's routes; the commands in cli/ctl.c do.
 */
#ifndef MERIDIAN_CLI_CLIENT_H
#define MERIDIAN_CLI_CLIENT_H

#include <stddef.h>
#include <jansson.h>

#define MER_CTL_TOKEN_MAX 512
#define MER_CTL_MAX_ANSWER (64u << 20) /* bytes of one answer */

struct mer_ctl_client {
	char base[512];		       /* "https://broker:8443", no '/' */
	char token[MER_CTL_TOKEN_MAX]; /* "" when none; never printed */
	char ca_file[512];	       /* "" for the system store */
	long timeout_ms;	       /* per request */
	void *curl;		       /* CURL * */
};

struct mer_ctl_answer {
	long status; /* HTTP status */
	char *body;  /* NUL-terminated; NULL when empty */
	size_t len;
	json_t *json; /* the body parsed, or NULL when not JSON */
};

/*
 * Prepares a client for base (http:// or https://; a trailing '/' is
 * dropped). token and ca_file may be NULL. MER_EINVAL (err says why) for
 * a URL without a scheme or values too long for their buffers.
 */
int mer_ctl_client_init(struct mer_ctl_client *c, const char *base,
			const char *token, const char *ca_file, long timeout_ms,
			char *err, size_t errlen);
/* Wipes the token and frees the handle; accepts a zeroed client. */
void mer_ctl_client_close(struct mer_ctl_client *c);

/*
 * One request: method and path ("/v1/jobs"; parts taken from users must be
 * escaped with mer_ctl_escape), an optional JSON body and Idempotency-Key.
 * Returns 0 when the broker answered (any status, in a); otherwise
 * MER_EUNREACHABLE (connection refused, DNS), MER_ETIMEDOUT, MER_ECRYPTO
 * (TLS: certificate not trusted, handshake), MER_ETOOBIG (answer over
 * MER_CTL_MAX_ANSWER) or MER_ENOMEM, with one line in err.
 */
int mer_ctl_request(struct mer_ctl_client *c, const char *method,
		    const char *path, const char *body, size_t body_len,
		    const char *idem_key, struct mer_ctl_answer *a, char *err,
		    size_t errlen);
void mer_ctl_answer_clear(struct mer_ctl_answer *a);

/* URL-escapes s for a path segment or query value into out; MER_ETOOBIG
 * when it does not fit. */
int mer_ctl_escape(const char *s, char *out, size_t n);

/* The error an answer carries, for one line on stderr:
 * "no job j-123 (404 not_found)". Falls back to the status text when the
 * body is not the API's error object. */
void mer_ctl_answer_error(const struct mer_ctl_answer *a, char *out, size_t n);

#endif
